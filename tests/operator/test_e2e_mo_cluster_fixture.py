"""The fixtures of mo_cluster_e2e: the real mo-service as StatefulSet `mo` with its table data in the
suite's MinIO under `<bucket>/<folder>/data` (nothing in `mo-data/shared` on the PVC, the keys only in
its config files), and the MatrixOneCluster object describing it, read back through the API."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from mo_cluster_e2e import MO_API, S3MatrixOne, get_cluster, matrixone_cluster, s3_keys, set_cluster_replicas
from mo_e2e import Env

from mo_server import checksums, create_db

pytestmark = pytest.mark.cluster


def test_s3_matrixone_and_its_matrixone_cluster_object(env: Env, s3_mo: Callable[..., S3MatrixOne],
                                                        mo_cluster_crd: None) -> None:
    mo = s3_mo(folder="cluster-a")
    assert mo.data_prefix == "cluster-a/data" and mo.bucket == f"mo-{env.ns}"
    create_db(mo, "db1", 1000)
    mo.checkpoint()
    assert checksums(mo, ["db1"])["db1"][0] == 1000
    data = s3_keys(env.s3, mo.bucket, mo.data_prefix)
    assert any("/ckp/" in k for k in data) and len(data) > 2, data
    assert not (mo.host / "mo-data" / "shared").exists(), "table data must be in S3, not on the PVC"
    sts = env.api.get(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets/mo")
    assert env.s3.secret_key not in json.dumps(sts), "the keys must reach mo-service only through its config"
    assert env.s3.secret_key in (mo.host / "etc" / "launch" / "cn.toml").read_text()

    created = matrixone_cluster(env, "mo", mo.bucket, mo.folder, "mo-s3")
    assert created["status"]["phase"] == "Ready"
    obj = get_cluster(env, "mo")
    s3 = obj["spec"]["logService"]["sharedStorage"]["s3"]
    assert s3 == {"path": f"{mo.bucket}/cluster-a", "type": "minio", "endpoint": env.s3.endpoint,
                  "region": env.s3.region, "secretRef": {"name": "mo-s3"}}, s3
    st = obj["status"]
    assert (st["host"], st["port"], st["credentialRef"]) == ("127.0.0.1", 6001, {"name": "mo-credential"}), st
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True", st
    assert env.exists_secret("mo-s3") and env.exists_secret("mo-credential")
    listed = env.api.get(f"{MO_API}/namespaces/{env.ns}/matrixoneclusters")["items"]
    assert [o["metadata"]["name"] for o in listed] == ["mo"]

    stopped = set_cluster_replicas(env, "mo", 0)
    spec = stopped["spec"]
    assert (spec["logService"]["replicas"], spec["tn"]["replicas"], spec["cnGroups"][0]["replicas"]) == (0, 0, 0)
    assert stopped["status"]["phase"] == "NotReady" and stopped["status"]["host"] == "127.0.0.1"
    assert spec["logService"]["sharedStorage"]["s3"]["path"] == f"{mo.bucket}/cluster-a"
    assert set_cluster_replicas(env, "mo", 1)["status"]["phase"] == "Ready"
