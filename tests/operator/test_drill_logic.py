"""MORestoreDrill builders and parsing (the cluster run is in test_e2e_drill.py): the spec's rules,
the pod (restore as init container into the scratch PVC, the scratch MatrixOne beside the checker,
no secret on a command line), the source pod's host name for cold backups, the checker's bounded
termination message."""

from __future__ import annotations

import json

import pytest

from mobackup.k8s import drill, drillcheck, jobs, models

STORAGE = models.parse_storage({"s3": {"bucket": "bk", "credentialsSecretRef": {"name": "creds"}},
                                "encryption": {"keySecretRef": {"name": "key"}}})
OWNER = jobs.Owner("MORestoreDrill", "nightly-drill", "db", "uid-7")
DEFAULTS = jobs.OperatorDefaults(image="reg/agent:1", service_account="job-sa")


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "exactly one of backupName, backupID"),
    ({"backupName": "b", "source": "db/mo-data"}, "exactly one"),
    ({"backupID": "x"}, "backupID needs spec.storageRef"),
    ({"backupName": "b", "scratch": {"size": "lots"}}, "not a quantity"),
    ({"backupName": "b", "checks": [{"query": "select 1"}]}, "checks[0] needs query and expect"),
    ({"backupName": "b", "timeoutSeconds": 5}, "at least 30"),
])
def test_parse_refuses(spec: dict, message: str) -> None:
    with pytest.raises(models.SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        drill.parse_drill(spec)


def test_drill_job_restores_into_the_scratch_claim_then_runs_matrixone_and_the_checker() -> None:
    spec = drill.parse_drill({"backupName": "b", "scratch": {"storageClassName": "fast", "size": "2Gi"},
                              "checks": [{"query": "select count(*) from db1.t", "expect": 2000}],
                              "timeoutSeconds": 300, "sql": {"user": "root", "passwordSecretRef": {"name": "mo-sql"}}})
    mo = drill.MatrixOneSettings.from_env({"MOBACKUP_DRILL_IMAGE": "reg/mo:2.2.2",
                                          "MOBACKUP_DRILL_COMMAND": '["/opt/mo/mo-service"]'})
    job = drill.drill_job(OWNER, spec, STORAGE, "backup-1", "mo-0", DEFAULTS, mo)
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["activeDeadlineSeconds"] == 300 + drill.RESTORE_ALLOWANCE_SECONDS
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["kind"] == "MORestoreDrill"
    assert job["metadata"]["labels"][jobs.L_KIND] == "morestoredrill"
    assert pod["hostname"] == "mo-0" and pod["restartPolicy"] == "Never"
    (restore,) = pod["initContainers"]
    matrixone, checker = pod["containers"]
    assert checker["args"][checker["args"].index("--timeout") + 1] == "300"
    assert checker["args"][checker["args"].index("--sql-port") + 1] == "6001"
    claim = drill.scratch_claim_name(OWNER)
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]
    assert restore["args"][restore["args"].index("--target") + 1] == "/data/mo-data"
    assert restore["args"][restore["args"].index("--hostname") + 1] == "mo-0"
    assert restore["args"][-2:] == ["--progress-interval", "0"]
    assert matrixone["image"] == "reg/mo:2.2.2" and matrixone["command"] == ["/opt/mo/mo-service"]
    assert matrixone["volumeMounts"] == [{"name": "data", "mountPath": "/mo-data", "subPath": "mo-data"}]
    assert checker["command"] == ["python", "-m", "mobackup.k8s.drillcheck"]
    assert json.loads(checker["args"][checker["args"].index("--checks") + 1]) == [
        {"query": "select count(*) from db1.t", "expect": "2000"}]
    # Secrets only by reference: the checker gets the repository's and the SQL password from Secrets.
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in checker["env"] if "valueFrom" in e}
    assert refs["MOBACKUP_SQL_PASSWORD"] == "mo-sql" and refs["MOBACKUP_ENCRYPTION_KEY"] == "key"
    text = json.dumps(job)
    assert "password" not in " ".join(restore["args"] + checker["args"]).lower()
    assert "111" not in text
    pvc = drill.scratch_pvc(OWNER, spec)
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == "uid-7"


def test_drill_pod_has_no_token_and_the_checker_only_reads() -> None:
    """Issue 18: no container mounts an API token (the scratch MatrixOne included); the checker, which
    parses the restored server's answers, has no scratch volume, a read-only PVC repository, and the
    drill's read-only S3 keys when given (the restore keeps the storage's: it takes a lock)."""
    spec = drill.parse_drill({"backupName": "b", "readOnlyCredentialsSecretRef": {
        "name": "s3-read", "secretAccessKeyKey": "secret"}})
    assert spec.read_only_credentials == models.SecretKey("s3-read", "AWS_ACCESS_KEY_ID")
    job = drill.drill_job(OWNER, spec, STORAGE, "backup-1", None, DEFAULTS, drill.MatrixOneSettings())
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (restore,) = pod["initContainers"]
    matrixone, checker = pod["containers"]
    assert not any("serviceaccount" in m["mountPath"] for c in (restore, matrixone, checker)
                   for m in c.get("volumeMounts") or [])

    def keys(c: dict) -> dict[str, tuple[str, str]]:
        return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                for e in c["env"] if e["name"].startswith("AWS_") and "valueFrom" in e}

    assert keys(checker) == {"AWS_ACCESS_KEY_ID": ("s3-read", "AWS_ACCESS_KEY_ID"),
                             "AWS_SECRET_ACCESS_KEY": ("s3-read", "secret")}
    assert keys(restore) == {"AWS_ACCESS_KEY_ID": ("creds", "AWS_ACCESS_KEY_ID"),
                             "AWS_SECRET_ACCESS_KEY": ("creds", "AWS_SECRET_ACCESS_KEY")}
    assert "data" not in {m["name"] for m in checker["volumeMounts"]}
    # A PVC repository: read-only for the checker, writable for the restore (its lock).
    pvc = models.parse_storage({"pvc": {"claimName": "backups"}})
    pod = drill.drill_job(OWNER, drill.parse_drill({"backupName": "b"}), pvc, "backup-1", None, DEFAULTS,
                          drill.MatrixOneSettings())["spec"]["template"]["spec"]
    mounts = {c["name"]: {m["name"]: m.get("readOnly", False) for m in c["volumeMounts"]}
              for c in (*pod["initContainers"], *pod["containers"]) if "volumeMounts" in c}
    assert mounts["checker"]["repository"] is True and mounts["restore"]["repository"] is False
    # Without the read-only Secret the checker has the storage's keys (documented: give it one).
    pod = drill.drill_job(OWNER, drill.parse_drill({"backupName": "b"}), STORAGE, "backup-1", None, DEFAULTS,
                          drill.MatrixOneSettings())["spec"]["template"]["spec"]
    assert keys(pod["containers"][1])["AWS_ACCESS_KEY_ID"] == ("creds", "AWS_ACCESS_KEY_ID")


def test_source_hostname_only_for_cold_backups_of_a_statefulset() -> None:
    source = {"pvc": {"claimName": "mo-data"}, "workload": {"kind": "StatefulSet", "name": "mo"}}
    sql = {"host": "mo", "passwordSecretRef": {"name": "s"}}
    cold = {"spec": {"source": source, "storageRef": {"name": "s3"}, "consistency": "Stop"}}
    online = {"spec": {"source": {**source, "sql": sql}, "storageRef": {"name": "s3"}}}
    deployment = {"spec": {"source": {**source, "workload": {"kind": "Deployment", "name": "mo"}},
                           "storageRef": {"name": "s3"}, "consistency": "Stop"}}
    assert drill.source_hostname(cold, "db") == "mo-0"
    assert drill.source_hostname(online, "db") is None
    assert drill.source_hostname(deployment, "db") is None
    assert drill.source_hostname(None, "db") is None


def test_checker_message_stays_under_the_kubelet_limit_and_keeps_failures() -> None:
    checks = [{"name": f"rows db.t{i}", "ok": True, "expected": i, "got": i} for i in range(500)]
    checks.append({"name": "query 1", "ok": False, "detail": "expected '1', got '2'", "expected": "1", "got": "2"})
    text = drillcheck.compact({"ok": False, "reason": "query 1: expected '1', got '2'", "checks": checks})
    doc = json.loads(text)
    assert len(text) <= drillcheck.MAX_MESSAGE
    names = [c["name"] for c in doc["checks"]]
    assert "query 1" in names and names[-1] == "rows" and "500 table row count(s)" in doc["checks"][-1]["detail"]


def test_a_passed_drill_seen_after_a_restart_exports_its_source_last_success() -> None:
    """The stale-drill alert needs the gauge from the start: an operator just started takes it from
    the Completed drills it lists (never older than what a newer drill set)."""
    from mobackup.k8s.controller import Ctx
    from mobackup.k8s.metrics import Registry

    ctx = Ctx(kube=None, metrics=Registry())  # type: ignore[arg-type]

    def seen(phase: str, done: str) -> float | None:
        drill.record_success_metric(ctx, {"metadata": {"namespace": "ns"},
                                          "status": {"phase": phase, "completionTime": done, "source": "db"}})
        return ctx.metrics.get("mobackup_last_drill_success_timestamp_seconds", namespace="ns", source="db")

    assert seen("Failed", "2026-12-01T00:00:00Z") is None
    assert seen("Completed", "2026-12-01T00:00:10Z") == 1796083210.0
    assert seen("Completed", "2026-11-30T00:00:00Z") == 1796083210.0  # an older one never goes back
    assert seen("Completed", "not a date") == 1796083210.0
