"""Faults on the real cluster (issue 11): the S3 server (a SeaweedFS of this test's own, so no other
test loses its storage) killed mid-upload and mid-download. The run fails with a reason that names
the endpoint, the repository lists nothing half-written, the restore target is left as it was,
MatrixOne is started again, and the same run retried after the server is back succeeds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mo_e2e import Env, wait_for_blobs

from cluster import procs
from cluster.s3 import S3Server, start_s3
from mobackup.engine.repository import RepositoryOptions
from mobackup.sample import snapshot_tree

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server of this test's own, which it can kill and start again on the same ports and data."""
    server = start_s3(tmp_path / "own-s3", bucket="faults")
    yield server
    if procs.pid_alive(server.pid):
        server.stop()


def storage(env: Env, m: S3Server) -> None:
    env.secret("own-creds", {"AWS_ACCESS_KEY_ID": m.access_key, "AWS_SECRET_ACCESS_KEY": m.secret_key})
    env.create("MOBackupStorage", "s3", {"s3": {
        "endpoint": m.endpoint, "bucket": m.bucket, "prefix": env.ns, "region": m.region, "pathStyle": True,
        "credentialsSecretRef": {"name": "own-creds"}}, "checkIntervalSeconds": 10})
    env.wait_phase("MOBackupStorage", "s3", "Available", timeout=90)


def listed(m: S3Server, ns: str) -> list[str]:
    from mobackup.engine.repository import RepositoryOptions, open_repository

    repo = open_repository(RepositoryOptions(
        url=f"s3://{m.bucket}/{ns}", s3_endpoint=m.endpoint, s3_region=m.region, s3_path_style=True,
        s3_access_key_id=m.access_key, s3_secret_access_key=m.secret_key))
    problems: list[str] = []
    ids = [s.id for s in repo.list_backups(problems)]
    assert problems == []
    return ids


def failed_on_s3(env: Env, kind: str, name: str, m: S3Server) -> dict[str, Any]:
    st = env.wait_phase(kind, name, "Completed", "Failed", timeout=300)["status"]
    assert st["phase"] == "Failed", st
    assert st["reason"] == "StorageUnreachableError", st
    assert m.endpoint.split("//")[1] in st["message"], st  # names the endpoint
    assert "?delete" not in st["message"], st  # not the lock release that failed afterwards
    assert m.secret_key not in st["message"]
    return st


def test_s3_server_killed_mid_upload_then_retry(env: Env, own_s3: S3Server) -> None:
    env.stand_in(objects=60)
    storage(env, own_s3)
    spec = {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS}, "storageRef": {"name": "s3"},
            "bandwidthLimit": "512Ki", "job": {"backoffLimit": 0}}
    env.create("MOBackup", "b1", spec)
    wait_for_blobs(RepositoryOptions(  # the upload is under way
        url=f"s3://{own_s3.bucket}/{env.ns}", s3_endpoint=own_s3.endpoint, s3_region=own_s3.region,
        s3_path_style=True, s3_access_key_id=own_s3.access_key, s3_secret_access_key=own_s3.secret_key))
    own_s3.kill()
    st = failed_on_s3(env, "MOBackup", "b1", own_s3)
    print("mid-upload failure:", st["reason"], st["message"][:300])
    env.wait_replicas_running()  # MatrixOne started again
    own_s3.start_again()
    assert listed(own_s3, env.ns) == []  # nothing half-written is listed
    env.wait_phase("MOBackupStorage", "s3", "Available", timeout=60)
    env.create("MOBackup", "b2", {**spec, "bandwidthLimit": None})
    st = env.wait_phase("MOBackup", "b2", "Completed", "Failed", timeout=180)["status"]
    assert st["phase"] == "Completed", st
    assert listed(own_s3, env.ns) == [st["backupID"]]
    env.wait_replicas_running()


def test_s3_server_gone_mid_download_leaves_target_untouched(env: Env, own_s3: S3Server) -> None:
    data = env.stand_in(objects=150)
    storage(env, own_s3)
    env.create("MOBackup", "b", {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS},
                                 "storageRef": {"name": "s3"}})
    bst = env.wait_phase("MOBackup", "b", "Completed", "Failed")["status"]
    assert bst["phase"] == "Completed", bst
    env.wait_replicas_running()
    env.change(data, seed=2)
    before = snapshot_tree(data, include_transient=True)
    restore = {"backupName": "b", "overwrite": True, "job": {"backoffLimit": 0},
               "target": {"pvc": {"claimName": "mo-data"}, "workload": STS}}
    env.create("MORestore", "r1", {**restore, "parallelism": 1})
    # Kill the S3 server once the agent has written its first files into the staging directory beside the
    # target: the download is under way.
    deadline = time.monotonic() + 120
    while not any(f.is_file() for d in data.parent.glob(".mobackup-staging-*") for f in d.rglob("*")):
        assert time.monotonic() < deadline, "the restore never started writing"
        time.sleep(0.005)
    own_s3.kill()
    st = failed_on_s3(env, "MORestore", "r1", own_s3)
    print("mid-download failure:", st["reason"], st["message"][:300])
    env.wait_replicas_running()
    assert snapshot_tree(data, include_transient=True) == before  # the target is as it was
    assert not [p for p in data.parent.iterdir() if p.name.startswith(".mobackup-")]  # no staging left
    own_s3.start_again()
    env.wait_phase("MOBackupStorage", "s3", "Available", timeout=60)
    env.create("MORestore", "r2", restore)
    st = env.wait_phase("MORestore", "r2", "Completed", "Failed", timeout=180)["status"]
    assert st["phase"] == "Completed", st
    assert st["backupID"] == bst["backupID"]
    env.wait_replicas_running()
