"""Smoke test of the real S3 server the suite runs (SeaweedFS, started by the s3_server fixture)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.s3


def test_s3_put_get_list_delete(s3_server) -> None:
    client = s3_server.client()
    body = os.urandom(3 * 1024 * 1024 + 17)
    client.put_object(Bucket=s3_server.bucket, Key="smoke/a.bin", Body=body)
    got = client.get_object(Bucket=s3_server.bucket, Key="smoke/a.bin")["Body"].read()
    assert got == body
    ranged = client.get_object(Bucket=s3_server.bucket, Key="smoke/a.bin", Range="bytes=10-19")
    assert ranged["Body"].read() == body[10:20]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_server.bucket, Prefix="smoke/")["Contents"]]
    assert keys == ["smoke/a.bin"]
    client.delete_object(Bucket=s3_server.bucket, Key="smoke/a.bin")
    assert client.list_objects_v2(Bucket=s3_server.bucket, Prefix="smoke/")["KeyCount"] == 0


def test_s3_rejects_wrong_credentials(s3_server) -> None:
    import boto3
    from botocore.exceptions import ClientError

    bad = boto3.client(
        "s3", endpoint_url=s3_server.endpoint, region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key, aws_secret_access_key="wrong-" + s3_server.secret_key,
    )
    with pytest.raises(ClientError) as e:
        bad.head_bucket(Bucket=s3_server.bucket)
    assert e.value.response["Error"]["Code"] in ("403", "SignatureDoesNotMatch", "AccessDenied")
