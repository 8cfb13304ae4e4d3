"""The SQL side, end to end against a real MySQL-protocol server (the lead's MariaDB stand-in whose
mo_ctl answers like MatrixOne): the checkpoint before a backup, the check after a restore; and the
Snapshot consistency refused on a cluster without the VolumeSnapshot API."""

from __future__ import annotations

from typing import Any

import pytest
from mo_e2e import Env

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


def sql_ref(server: Any) -> dict[str, Any]:
    return {"host": server.host, "port": server.port, "user": server.user, "database": server.database,
            "passwordSecretRef": {"name": "sql", "key": "password"}}


def test_checkpoint_before_backup_and_sql_check_after_restore(env: Env, mysql_server: Any) -> None:
    data = env.stand_in(objects=10)
    env.s3_storage()
    env.secret("sql", {"password": mysql_server.password})
    before = len(mysql_server.calls())
    # Stop with sql: a cold copy after a forced checkpoint (with sql alone the default is Online).
    env.create("MOBackup", "b", {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS,
                                            "sql": sql_ref(mysql_server)}, "storageRef": {"name": "s3"},
                                 "consistency": "Stop"})
    st = env.wait_phase("MOBackup", "b", "Completed", "Failed")["status"]
    assert st["phase"] == "Completed", st
    assert st["checkpoint"]["ok"] is True and st["moVersion"], st
    assert ("dn", "checkpoint") in mysql_server.calls()[before:]
    assert env.repository().load_summary(st["backupID"]).mo_version == st["moVersion"]
    env.change(data, seed=9)
    env.create("MORestore", "r", {"backupName": "b", "overwrite": True,
                                  "target": {"pvc": {"claimName": "mo-data"}, "workload": STS},
                                  "sqlCheck": {**sql_ref(mysql_server), "timeoutSeconds": 30}})
    r = env.wait_phase("MORestore", "r", "Completed", "Failed")["status"]
    assert r["phase"] == "Completed", r
    assert "databases:" in r["sqlCheck"] and "mo_catalog" in r["sqlCheck"], r["sqlCheck"]
    assert mysql_server.password not in str(r) and mysql_server.password not in env.op.log_path.read_text()


def test_unreachable_sql_fails_the_restore_check_with_a_reason(env: Env, mysql_server: Any) -> None:
    env.stand_in(objects=5)
    env.s3_storage()
    env.secret("sql", {"password": mysql_server.password})
    env.create("MOBackup", "b", {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS},
                                 "storageRef": {"name": "s3"}})
    assert env.wait_phase("MOBackup", "b", "Completed", "Failed")["status"]["phase"] == "Completed"
    env.create("MORestore", "r", {"backupName": "b", "overwrite": True,
                                  "target": {"pvc": {"claimName": "mo-data"}, "workload": STS},
                                  "sqlCheck": {**sql_ref(mysql_server), "port": 9, "timeoutSeconds": 5}})
    r = env.wait_phase("MORestore", "r", "Completed", "Failed", timeout=60)["status"]
    assert r["phase"] == "Failed" and r["reason"] == "SQLCheckFailed" and "did not answer" in r["message"], r
    env.wait_replicas_running()  # the data is restored and MatrixOne started; only the check failed


def test_snapshot_refused_without_volumesnapshot_api(env: Env) -> None:
    env.stand_in(objects=5)
    env.s3_storage()
    env.create("MOBackup", "snap", {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS},
                                    "storageRef": {"name": "s3"}, "consistency": "Snapshot"})
    st = env.wait_phase("MOBackup", "snap", "Completed", "Failed")["status"]
    assert st["phase"] == "Failed" and st["reason"] == "SnapshotUnsupported", st
    assert "snapshot.storage.k8s.io" in st["message"] and not st.get("jobName")
    assert env.replicas()[0] == 1  # refused before anything was stopped
