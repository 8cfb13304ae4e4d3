"""Faults on the real cluster (issue 11): the S3 server (a MinIO of this test's own, so no other
test loses its storage) killed mid-upload and mid-download. The run fails with a reason that names
the endpoint, the repository lists nothing half-written, the restore target is left as it was,
MatrixOne is started again, and the same run retried after MinIO is back succeeds."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mo_e2e import Env

from cluster import paths, procs
from cluster.s3 import S3Server, start_minio
from mobackup.sample import snapshot_tree

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


@dataclass
class Minio:
    """A MinIO that can be killed and started again on the same port, data and credentials."""

    state: Path
    s3: S3Server

    def kill(self) -> None:
        os.kill(self.s3.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.pid_alive(self.s3.pid):
            assert time.monotonic() < deadline, "MinIO did not die"
            time.sleep(0.05)

    def start_again(self) -> None:
        port = self.s3.endpoint.rsplit(":", 1)[1]
        server = procs.start_server(
            "minio", [str(paths.binary("minio")), "server", str(self.s3.data_dir), "--address", f"127.0.0.1:{port}",
                      "--quiet"], self.state / "minio.log",
            env={"MINIO_ROOT_USER": self.s3.access_key, "MINIO_ROOT_PASSWORD": self.s3.secret_key,
                 "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "MINIO_REGION": self.s3.region},
            pid_file=self.state / "minio.pid")
        self.s3.server = server
        import urllib.request

        procs.wait_until(lambda: urllib.request.urlopen(f"{self.s3.endpoint}/minio/health/ready",
                                                        timeout=1).status == 200, 60, "MinIO readiness", server)

    def stop(self) -> None:
        if procs.pid_alive(self.s3.pid):
            self.s3.stop()


@pytest.fixture
def minio(tmp_path: Path) -> Any:
    m = Minio(tmp_path / "own-minio", start_minio(tmp_path / "own-minio", bucket="faults"))
    yield m
    m.stop()


def storage(env: Env, m: Minio) -> None:
    env.secret("own-creds", {"AWS_ACCESS_KEY_ID": m.s3.access_key, "AWS_SECRET_ACCESS_KEY": m.s3.secret_key})
    env.create("MOBackupStorage", "s3", {"s3": {
        "endpoint": m.s3.endpoint, "bucket": m.s3.bucket, "prefix": env.ns, "region": m.s3.region, "pathStyle": True,
        "credentialsSecretRef": {"name": "own-creds"}}, "checkIntervalSeconds": 10})
    env.wait_phase("MOBackupStorage", "s3", "Available", timeout=90)


def listed(m: Minio, ns: str) -> list[str]:
    from mobackup.engine.repository import RepositoryOptions, open_repository

    repo = open_repository(RepositoryOptions(
        url=f"s3://{m.s3.bucket}/{ns}", s3_endpoint=m.s3.endpoint, s3_region=m.s3.region, s3_path_style=True,
        s3_access_key_id=m.s3.access_key, s3_secret_access_key=m.s3.secret_key))
    problems: list[str] = []
    ids = [s.id for s in repo.list_backups(problems)]
    assert problems == []
    return ids


def failed_on_s3(env: Env, kind: str, name: str, m: Minio) -> dict[str, Any]:
    st = env.wait_phase(kind, name, "Completed", "Failed", timeout=300)["status"]
    assert st["phase"] == "Failed", st
    assert st["reason"] == "StorageUnreachableError", st
    assert m.s3.endpoint.split("//")[1] in st["message"], st  # names the endpoint
    assert "?delete" not in st["message"], st  # not the lock release that failed afterwards
    assert m.s3.secret_key not in st["message"]
    return st


def test_minio_killed_mid_upload_then_retry(env: Env, minio: Minio) -> None:
    env.stand_in(objects=60)
    storage(env, minio)
    spec = {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS}, "storageRef": {"name": "s3"},
            "bandwidthLimit": "512Ki", "job": {"backoffLimit": 0}}
    env.create("MOBackup", "b1", spec)
    env.wait("MOBackup", "b1", lambda o: ((o.get("status") or {}).get("progress") or {}).get("bytesDone", 0) > 0,
             60, "upload under way")
    minio.kill()
    st = failed_on_s3(env, "MOBackup", "b1", minio)
    print("mid-upload failure:", st["reason"], st["message"][:300])
    env.wait_replicas_running()  # MatrixOne started again
    minio.start_again()
    assert listed(minio, env.ns) == []  # nothing half-written is listed
    env.wait_phase("MOBackupStorage", "s3", "Available", timeout=60)
    env.create("MOBackup", "b2", {**spec, "bandwidthLimit": None})
    st = env.wait_phase("MOBackup", "b2", "Completed", "Failed", timeout=180)["status"]
    assert st["phase"] == "Completed", st
    assert listed(minio, env.ns) == [st["backupID"]]
    env.wait_replicas_running()


def test_minio_gone_mid_download_leaves_target_untouched(env: Env, minio: Minio) -> None:
    data = env.stand_in(objects=150)
    storage(env, minio)
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
    # Kill MinIO once the agent has written its first files into the staging directory beside the
    # target: the download is under way.
    deadline = time.monotonic() + 120
    while not any(f.is_file() for d in data.parent.glob(".mobackup-staging-*") for f in d.rglob("*")):
        assert time.monotonic() < deadline, "the restore never started writing"
        time.sleep(0.005)
    minio.kill()
    st = failed_on_s3(env, "MORestore", "r1", minio)
    print("mid-download failure:", st["reason"], st["message"][:300])
    env.wait_replicas_running()
    assert snapshot_tree(data, include_transient=True) == before  # the target is as it was
    assert not [p for p in data.parent.iterdir() if p.name.startswith(".mobackup-")]  # no staging left
    minio.start_again()
    env.wait_phase("MOBackupStorage", "s3", "Available", timeout=60)
    env.create("MORestore", "r2", restore)
    st = env.wait_phase("MORestore", "r2", "Completed", "Failed", timeout=180)["status"]
    assert st["phase"] == "Completed", st
    assert st["backupID"] == bst["backupID"]
    env.wait_replicas_running()
