"""The seed's two examples, end to end on the real control plane: MOBackup/MORestore driving Jobs
(run by the local node) that copy a MatrixOne stand-in's mo-data to a real S3 server (SeaweedFS) and back."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from mo_e2e import Env
from prometheus_client.parser import text_string_to_metric_families

from mobackup.sample import snapshot_tree

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


def backup_spec(**extra: Any) -> dict[str, Any]:
    return {"source": {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS},
            "storageRef": {"name": "s3"}, **extra}


def restore_spec(**extra: Any) -> dict[str, Any]:
    return {"target": {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS}, **extra}


def table(env: Env, kind_plural: str) -> dict[str, Any]:
    """What `kubectl get` shows: the API server's Table rendering of the printer columns."""
    resp = env.api._http.request(
        "GET", f"{env.api.server}/apis/mobackup.io/v1alpha1/namespaces/{env.ns}/{kind_plural}",
        headers={"Authorization": f"Bearer {env.api._token}",
                 "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert resp.status == 200, resp.data
    return json.loads(resp.data)


def test_full_backup_change_restore(env: Env) -> None:
    """Example 1: full backup -> the database changes -> restore -> exactly the backed-up state."""
    data = env.stand_in()
    env.s3_storage()
    storage = env.get("MOBackupStorage", "s3")["status"]
    assert storage["location"] == f"s3://{env.s3.bucket}/{env.ns}/s3" and storage["reason"] == "Reachable"

    env.create("MOBackup", "full-1", backup_spec())
    b = env.wait_phase("MOBackup", "full-1", "Completed", "Failed")
    st = b["status"]
    assert st["phase"] == "Completed", st
    assert re.fullmatch(r"[0-9a-f-]{36}", st["backupID"]) and st["type"] == "Full"
    assert st["sizeBytes"] > 0 and st["size"].endswith("iB") and st["fileCount"] > 40
    assert re.fullmatch(r"\d+-\d+", st["backupTS"]) and st["duration"] and st["durationSeconds"] > 0
    assert st["startTime"] and st["completionTime"] and st["jobName"] and st["source"] == f"{env.ns}/mo-data"
    assert st["location"] == f"s3://{env.ns and env.s3.bucket}/{env.ns}/s3"
    assert st["scaledWorkload"]["replicas"] == 1 and st["scaledWorkload"]["scaledUpAt"]
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Ready": "True", "Running": "False", "Failed": "False"}
    backed_up = snapshot_tree(data)
    # The workload is back, with the remembered replica count and no leftover annotation.
    env.wait_replicas_running()
    assert not any(k.startswith("mobackup.io/") for k in env.replicas()[1])
    # The Job has no API access: the operator wrote the progress from its result.
    assert st["progress"]["bytesDone"] == st["progress"]["bytesTotal"] > 0, st.get("progress")
    expected = {"Accepted", "ScaledDown", "JobCreated", "ScaledUp", "BackupCompleted"}
    reasons = env.event_reasons("full-1", expected)
    assert expected <= reasons, reasons
    # The Job: owned by the MOBackup, no secret anywhere in its spec (env from Secrets only).
    job = env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs/{st['jobName']}")
    assert job["metadata"]["ownerReferences"][0]["uid"] == b["metadata"]["uid"]
    assert env.s3.secret_key not in json.dumps(job) and env.s3.access_key not in json.dumps(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] and container["command"][-2:] == ["agent", "backup"]
    assert env.s3.secret_key not in json.dumps(b) and env.s3.secret_key not in env.op.log_path.read_text()
    # The repository agrees with the status.
    [summary] = env.repository().list_backups()
    assert summary.id == st["backupID"] and summary.file_count == st["fileCount"]

    # `kubectl get mobackups` columns.
    tab = table(env, "mobackups")
    cols = [c["name"] for c in tab["columnDefinitions"] if c.get("priority", 0) == 0]
    assert cols == ["Name", "Phase", "Type", "Backup ID", "Size", "BackupTS", "Duration", "Recoverable To", "Age"]
    row = tab["rows"][0]["cells"]
    assert row[1:5] == ["Completed", "Full", st["backupID"], st["size"]] and row[5] == st["backupTS"]

    env.change(data, seed=2)
    assert snapshot_tree(data) != backed_up
    env.create("MORestore", "restore-1", restore_spec(backupName="full-1", overwrite=True))
    r = env.wait_phase("MORestore", "restore-1", "Completed", "Failed")
    assert r["status"]["phase"] == "Completed", r["status"]
    assert r["status"]["backupID"] == st["backupID"] and r["status"]["fileCount"] == st["fileCount"]
    assert snapshot_tree(data) == backed_up
    env.wait_replicas_running()

    run, src = (("kind", "MOBackup"), ("namespace", env.ns)), (("namespace", env.ns), ("source", f"{env.ns}/mo-data"))
    expected = {("mobackup_successes_total", run): 1,
                ("mobackup_successes_total", (("kind", "MORestore"), ("namespace", env.ns))): 1,
                ("mobackup_last_success_size_bytes", src): st["sizeBytes"],
                ("mobackup_transferred_bytes_total", run): st["newBytes"]}
    deadline = time.monotonic() + 10  # a scrape shortly after the phase changed
    while True:
        metrics = env.op.metrics()
        got = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(metrics) for s in fam.samples}
        if all(got.get(k) == v for k, v in expected.items()) and \
                ("mobackup_last_success_timestamp_seconds", src) in got:
            break
        assert time.monotonic() < deadline, (expected, metrics)
        time.sleep(0.2)


def test_full_incremental_change_restore_incremental(env: Env) -> None:
    """Example 2: full -> change -> incremental (on the full) -> change -> restore the incremental."""
    data = env.stand_in(seed=11)
    env.s3_storage(encryption=True)
    env.create("MOBackup", "full", backup_spec())
    full = env.wait_phase("MOBackup", "full", "Completed", "Failed")["status"]
    assert full["phase"] == "Completed", full
    env.change(data, seed=12)
    env.create("MOBackup", "incr", backup_spec(type="Incremental"))
    incr = env.wait_phase("MOBackup", "incr", "Completed", "Failed")["status"]
    assert incr["phase"] == "Completed", incr
    assert incr["type"] == "Incremental" and incr["baseBackupID"] == full["backupID"]
    assert incr["newBytes"] < full["newBytes"] / 2, (incr["newBytes"], full["newBytes"])
    at_incr = snapshot_tree(data)
    env.change(data, seed=13)
    assert snapshot_tree(data) != at_incr
    # By backup ID + storage (e.g. a backup made elsewhere), not by resource name.
    env.create("MORestore", "restore-incr", restore_spec(backupID=incr["backupID"], storageRef={"name": "s3"},
                                                         overwrite=True))
    r = env.wait_phase("MORestore", "restore-incr", "Completed", "Failed")["status"]
    assert r["phase"] == "Completed", r
    assert snapshot_tree(data) == at_incr
    # The repository is encrypted: without the key nothing opens.
    from mobackup.engine.errors import EncryptionKeyError

    with pytest.raises(EncryptionKeyError):
        env.repository()
    assert {s.id for s in env.repository(encryption=True).list_backups()} == {full["backupID"], incr["backupID"]}


def test_namespaced_mode_with_its_own_rbac(env: Env) -> None:
    """The chart's namespaced mode (watchNamespaces) gives Roles, not cluster-wide rights: the
    operator still does a full backup and restore with exactly those."""
    from mo_e2e import OperatorProcess

    ident = env.cluster.operator_identity(f"mo-backup-operator-{env.ns}", {"watchNamespaces": [env.ns]})
    job_sa = next(o["metadata"]["name"] for o in ident.objects if o["kind"] == "ServiceAccount"
                  and o["metadata"].get("namespace") == env.ns)
    env.op.kill()
    env.op = OperatorProcess(env.cluster, [env.ns], env.tmp / "operator-nsmode.log", kubeconfig=ident.kubeconfig,
                             job_service_account=job_sa)
    env.op.start()
    data = env.stand_in(objects=10)
    env.s3_storage()
    env.create("MOBackup", "b", backup_spec())
    st = env.wait_phase("MOBackup", "b", "Completed", "Failed")["status"]
    assert st["phase"] == "Completed", st
    assert st["progress"]["bytesDone"] == st["progress"]["bytesTotal"]  # written by the operator
    backed_up = snapshot_tree(data)
    env.change(data, seed=4)
    env.create("MORestore", "r", restore_spec(backupName="b", overwrite=True))
    assert env.wait_phase("MORestore", "r", "Completed", "Failed")["status"]["phase"] == "Completed"
    assert snapshot_tree(data) == backed_up
    assert "Forbidden" not in env.op.log_path.read_text() and "403" not in env.op.log_path.read_text()


def test_cluster_wide_mode_and_liveness(env: Env) -> None:
    """The chart's default: no --namespace (all namespaces), with the liveness endpoint on."""
    import urllib.request

    from mo_e2e import OperatorProcess, free_port

    env.op.kill()
    env.op = OperatorProcess(env.cluster, [], env.tmp / "operator-all.log", health_port=free_port())
    env.op.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert urllib.request.urlopen(f"http://127.0.0.1:{env.op.health_port}/healthz", timeout=2).status == 200
            break
        except OSError:
            assert time.monotonic() < deadline, env.op.log_tail()
            time.sleep(0.3)
    data = env.stand_in(objects=10)
    env.s3_storage()
    env.create("MOBackup", "b", backup_spec())
    assert env.wait_phase("MOBackup", "b", "Completed", "Failed")["status"]["phase"] == "Completed"
    backed_up = snapshot_tree(data)
    env.change(data, seed=6)
    env.create("MORestore", "r", restore_spec(backupName="b", overwrite=True))
    assert env.wait_phase("MORestore", "r", "Completed", "Failed")["status"]["phase"] == "Completed"
    assert snapshot_tree(data) == backed_up
