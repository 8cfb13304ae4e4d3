"""A real S3 server for the tests: MinIO in single-drive mode on a loopback port."""

from __future__ import annotations

import secrets
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import paths, procs

DEFAULT_REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str          # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    bucket: str
    region: str
    data_dir: Path
    server: procs.Server

    @property
    def pid(self) -> int:
        return self.server.pid

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing, as MinIO on an IP needs)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def env(self) -> dict[str, str]:
        """The environment a mobackup process needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "MOBACKUP_S3_PATH_STYLE": "1",
        }

    def stop(self) -> None:
        self.server.stop()


def start_minio(state_dir: Path, bucket: str = "mobackup-test", port: int | None = None,
                access_key: str | None = None, secret_key: str | None = None,
                region: str = DEFAULT_REGION) -> S3Server:
    """Start MinIO with random root credentials (passed by env, never argv), wait until it
    answers, create the bucket. Raises paths.MissingComponent if MinIO cannot be built."""
    paths.ensure_built("minio")
    data_dir = state_dir / "minio-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or paths.free_port()
    access_key = access_key or "mobk" + secrets.token_hex(6)
    secret_key = secret_key or secrets.token_urlsafe(24)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "MINIO_ROOT_USER": access_key, "MINIO_ROOT_PASSWORD": secret_key,
        "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "MINIO_REGION": region,
        "MINIO_API_REQUESTS_DEADLINE": "2m",
    }
    server = procs.start_server(
        "minio", [str(paths.binary("minio")), "server", str(data_dir), "--address", f"127.0.0.1:{port}",
                  "--quiet"],
        state_dir / "minio.log", env=env, pid_file=state_dir / "minio.pid",
    )
    s3 = S3Server(endpoint, access_key, secret_key, bucket, region, data_dir, server)
    try:
        procs.wait_until(
            lambda: urllib.request.urlopen(f"{endpoint}/minio/health/ready", timeout=1).status == 200,
            60, "MinIO readiness", server,
        )
        client = s3.client()
        client.create_bucket(Bucket=bucket)
        client.head_bucket(Bucket=bucket)
    except BaseException:
        server.stop()
        raise
    return s3
