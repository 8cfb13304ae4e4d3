"""Bad input, end to end: rejected by the CRD schema, or Failed with a clear reason and an Event."""

from __future__ import annotations

import time
from typing import Any

import pytest
from mo_e2e import Env

from cluster.kube_api import ApiError
from mobackup.sample import snapshot_tree

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


def backup_spec(**extra: Any) -> dict[str, Any]:
    return {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS}, "storageRef": {"name": "s3"}, **extra}


def failed(env: Env, kind: str, name: str) -> dict[str, Any]:
    st = env.wait_phase(kind, name, "Failed", "Completed")["status"]
    assert st["phase"] == "Failed", st
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds["Failed"] == "True" and conds["Ready"] == "False"
    deadline = time.monotonic() + 10  # the Event is posted right after the status patch
    while not [e for e in env.events(name) if e["type"] == "Warning" and e["reason"] == st["reason"]]:
        assert time.monotonic() < deadline, f"no Warning Event for {st['reason']}"
        time.sleep(0.2)
    return st


@pytest.mark.parametrize("spec,message", [
    (backup_spec(type="Differential"), "Unsupported value"),
    ({"source": {"pvc": {"claimName": "mo-data"}}, "storageRef": {"name": "s3"}}, "needs source.workload"),
    (backup_spec(baseBackupID="abc"), "only meaningful for type Incremental"),
    (backup_spec(source={"pvc": {"claimName": "mo-data", "path": "../../etc"}, "workload": STS}), "path"),
    (backup_spec(bandwidthLimit="fast"), "bandwidthLimit"),
    ({"storageRef": {"name": "s3"}}, "source"),
])
def test_schema_rejects(env: Env, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError) as err:
        env.create("MOBackup", "bad", spec)
    assert err.value.status == 422 and message in str(err.value), str(err.value)


def test_schema_rejects_other_kinds_and_immutable_fields(env: Env) -> None:
    with pytest.raises(ApiError, match="exactly one of s3 or pvc"):
        env.create("MOBackupStorage", "both", {"pvc": {"claimName": "x"}, "s3": {"bucket": "bkt"}})
    with pytest.raises(ApiError, match="exactly one of backupName or backupID"):
        env.create("MORestore", "r", {"target": {"pvc": {"claimName": "x"}}})
    with pytest.raises(ApiError, match="Unsupported value"):
        env.create("MOBackupSchedule", "s", {"fullSchedule": "@daily", "concurrencyPolicy": "Sometimes",
                                             "template": {"spec": backup_spec()}})
    env.create("MOBackup", "ok", backup_spec(consistency="None", storageRef={"name": "absent"}))
    with pytest.raises(ApiError, match="storageRef is immutable"):
        env.api.merge_patch(env.path("MOBackup", "ok"), {"spec": {"storageRef": {"name": "other"}}})
    env.api.merge_patch(env.path("MOBackup", "ok"), {"spec": {"deletionPolicy": "Delete"}})  # allowed


def test_invalid_cron_fails_the_schedule(env: Env) -> None:
    env.create("MOBackupSchedule", "bad-cron", {"fullSchedule": "0 25 * * *", "template": {"spec": backup_spec()}})
    s = env.wait("MOBackupSchedule", "bad-cron", lambda o: (o.get("status") or {}).get("reason") == "InvalidSpec")
    assert "hour: 25 is outside 0-23" in s["status"]["message"]


def test_missing_secret(env: Env) -> None:
    env.cluster.make_pvc(env.ns, "mo-data")
    env.s3_storage(secret="no-such-secret", wait="Unavailable")
    st = env.get("MOBackupStorage", "s3")["status"]
    assert st["reason"] == "SecretNotFound" and "no-such-secret" in st["message"]
    env.create("MOBackup", "b", backup_spec(consistency="None"))
    st = failed(env, "MOBackup", "b")
    assert st["reason"] == "SecretNotFound" and f"Secret {env.ns}/no-such-secret not found" in st["message"]
    assert not st.get("jobName")


def test_unreachable_storage(env: Env) -> None:
    env.cluster.make_pvc(env.ns, "mo-data")
    env.s3_storage(endpoint="http://127.0.0.1:9", wait="Unavailable")  # discard port: nothing listens
    st = env.get("MOBackupStorage", "s3")["status"]
    assert st["reason"] == "Unreachable" and "127.0.0.1:9" in st["message"] and st["lastChecked"]
    env.create("MOBackup", "b", backup_spec(consistency="None"))
    st = failed(env, "MOBackup", "b")
    assert st["reason"] == "StorageUnavailable" and "unavailable" in st["message"]
    assert f'mobackup_storage_available{{namespace="{env.ns}",storage="s3"}} 0' in env.op.metrics()


def test_base_of_another_source(env: Env) -> None:
    env.stand_in()
    env.cluster.make_pvc(env.ns, "other-data")
    (env.cluster.pv_root / env.ns / "other-data" / "mo-data").mkdir(parents=True)
    (env.cluster.pv_root / env.ns / "other-data" / "mo-data" / "x").write_text("x")
    env.s3_storage()
    env.create("MOBackup", "full", backup_spec())
    full = env.wait_phase("MOBackup", "full", "Completed", "Failed")["status"]
    assert full["phase"] == "Completed", full
    other = {"source": {"pvc": {"claimName": "other-data"}}, "storageRef": {"name": "s3"}, "consistency": "None",
             "type": "Incremental"}
    # By resource name: refused by the operator before any Job.
    env.create("MOBackup", "by-name", {**other, "baseBackupName": "full"})
    st = failed(env, "MOBackup", "by-name")
    assert st["reason"] == "InvalidBase" and "is of source" in st["message"] and not st.get("jobName")
    # By backup ID: the engine in the Job refuses, and its reason comes back into status.
    env.create("MOBackup", "by-id", {**other, "baseBackupID": full["backupID"]})
    st = failed(env, "MOBackup", "by-id")
    assert st["jobName"] and "is of source" in st["message"], st
    assert [s.id for s in env.repository().list_backups()] == [full["backupID"]]


def test_restore_onto_non_empty_volume_without_overwrite(env: Env) -> None:
    data = env.stand_in()
    env.s3_storage()
    env.create("MOBackup", "full", backup_spec())
    assert env.wait_phase("MOBackup", "full", "Completed", "Failed")["status"]["phase"] == "Completed"
    env.change(data, seed=5)
    before = snapshot_tree(data)
    env.create("MORestore", "r", {"backupName": "full", "target": {"pvc": {"claimName": "mo-data"}, "workload": STS}})
    st = failed(env, "MORestore", "r")
    assert st["reason"] == "TargetNotEmpty" and "overwrite" in st["message"], st
    assert snapshot_tree(data) == before  # nothing touched
    env.wait_replicas_running()  # and MatrixOne is started again


def test_restore_of_a_failed_or_missing_backup(env: Env) -> None:
    env.cluster.make_pvc(env.ns, "mo-data")
    env.s3_storage()
    env.create("MORestore", "r", {"backupName": "nope", "target": {"pvc": {"claimName": "mo-data"}}})
    st = failed(env, "MORestore", "r")
    assert st["reason"] == "BackupNotFound"


def test_restore_of_another_hosts_backup_is_refused(env: Env) -> None:
    """MatrixOne's log directory carries the pod hostname (mo-0 here): restoring it for a pod of
    another name is refused before anything is written; naming the right hostname works."""
    env.stand_in()  # StatefulSet "mo": its pod is mo-0
    env.s3_storage()
    env.create("MOBackup", "full", backup_spec())
    assert env.wait_phase("MOBackup", "full", "Completed", "Failed")["status"]["phase"] == "Completed"
    target = env.cluster.make_pvc(env.ns, "new-data")
    env.create("MORestore", "wrong", {"backupName": "full", "target": {"pvc": {"claimName": "new-data"},
                                                                       "hostname": "other-0"}})
    st = failed(env, "MORestore", "wrong")
    assert "other-0" in st["message"] and "mo-0" in st["message"], st
    assert not (target / "mo-data").exists() or not any((target / "mo-data").iterdir())
    env.create("MORestore", "right", {"backupName": "full", "target": {"pvc": {"claimName": "new-data"},
                                                                       "hostname": "mo-0"}})
    st = env.wait_phase("MORestore", "right", "Completed", "Failed")["status"]
    assert st["phase"] == "Completed", st


def test_wrong_encryption_key_makes_the_storage_unavailable(env: Env) -> None:
    env.cluster.make_pvc(env.ns, "mo-data")
    (env.cluster.pv_root / env.ns / "mo-data" / "mo-data").mkdir()
    (env.cluster.pv_root / env.ns / "mo-data" / "mo-data" / "f").write_text("x")
    env.s3_storage(encryption=True)
    env.create("MOBackup", "b", backup_spec(consistency="None"))
    assert env.wait_phase("MOBackup", "b", "Completed", "Failed")["status"]["phase"] == "Completed"
    # The same repository through a storage whose Secret holds another passphrase.
    env.secret("other-key", {"key": "not the passphrase"})
    env.create("MOBackupStorage", "s3-wrong", {"s3": {
        "endpoint": env.s3.endpoint, "bucket": env.s3.bucket, "prefix": f"{env.ns}/s3", "pathStyle": True,
        "credentialsSecretRef": {"name": "s3-creds"}}, "encryption": {"keySecretRef": {"name": "other-key"}}})
    st = env.wait_phase("MOBackupStorage", "s3-wrong", "Available", "Unavailable")["status"]
    assert st["phase"] == "Unavailable" and st["reason"] == "EncryptionKeyError", st
    assert "not the passphrase" not in str(st)


def test_runs_on_the_storage_pvc_are_refused(env: Env) -> None:
    """The storage's own PVC as a restore's target or a backup's source: one volume mounted twice in
    the Job's pod, whose restore with overwrite would replace the repository. Failed before any Job,
    with the reason and a Warning Event; the volume is untouched."""
    host = env.cluster.make_pvc(env.ns, "repo")
    (host / "mobackup").mkdir()
    (host / "mobackup" / "keep").write_text("the repository")
    env.create("MOBackupStorage", "vol", {"pvc": {"claimName": "repo"}})
    env.wait_phase("MOBackupStorage", "vol", "Available")
    env.create("MORestore", "r", {"backupID": "x", "storageRef": {"name": "vol"}, "overwrite": True,
                                  "target": {"pvc": {"claimName": "repo", "path": "mobackup"}}})
    env.create("MOBackup", "b", {"source": {"pvc": {"claimName": "repo"}}, "storageRef": {"name": "vol"},
                                 "consistency": "None"})
    for kind, name, field in (("MORestore", "r", "spec.target.pvc.claimName"),
                              ("MOBackup", "b", "spec.source.pvc.claimName")):
        st = failed(env, kind, name)
        assert st["reason"] == "StorageOverlap" and not st.get("jobName"), st
        assert f"{field} repo is the PVC of MOBackupStorage vol" in st["message"], st
    assert sorted(str(p.relative_to(host)) for p in host.rglob("*")) == ["mobackup", "mobackup/keep"]


def test_secrets_need_their_owners_consent(env: Env) -> None:
    """A Secret without the label mobackup.io/credentials=true is never used (its keys would go to
    the storage's endpoint), nor is the operator's own identity for a storage without keys."""
    env.cluster.make_pvc(env.ns, "mo-data")
    env.api.create(f"/api/v1/namespaces/{env.ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "theirs"},
        "stringData": {"AWS_ACCESS_KEY_ID": env.s3.access_key, "AWS_SECRET_ACCESS_KEY": env.s3.secret_key}})
    env.s3_storage(secret="theirs", wait="Unavailable")
    st = env.get("MOBackupStorage", "s3")["status"]
    assert st["reason"] == "SecretNotOptedIn" and "label secret theirs mobackup.io/credentials=true" in st["message"]
    env.create("MOBackup", "b", backup_spec(consistency="None"))
    st = failed(env, "MOBackup", "b")
    assert st["reason"] == "SecretNotOptedIn" and not st.get("jobName"), st
    env.create("MOBackupStorage", "keyless", {"s3": {"endpoint": env.s3.endpoint, "bucket": env.s3.bucket,
                                                     "prefix": f"{env.ns}/keyless", "pathStyle": True}})
    st = env.wait_phase("MOBackupStorage", "keyless", "Available", "Unavailable")["status"]
    assert st["phase"] == "Unavailable" and st["reason"] == "AmbientCredentialsNotAllowed", st
    # The owner consents: the same storage becomes Available at its next check.
    env.api.merge_patch(f"/api/v1/namespaces/{env.ns}/secrets/theirs",
                        {"metadata": {"labels": {"mobackup.io/credentials": "true"}}})
    env.api.merge_patch(env.path("MOBackupStorage", "s3"), {"spec": {"checkIntervalSeconds": 61}})
    env.wait_phase("MOBackupStorage", "s3", "Available", timeout=60)
