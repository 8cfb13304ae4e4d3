"""Unit tests of the operator's plain logic modules (no cluster, no kopf)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mobackup.engine.prune import RetentionPolicy
from mobackup.k8s import cron, jobs, lease, models, retention, schedule, status, workload


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------ cron

@pytest.mark.parametrize("expr,after,expected", [
    ("*/15 * * * *", "2026-01-01T10:07:30", "2026-01-01T10:15:00"),
    ("0 2 * * *", "2026-01-01T02:00:00", "2026-01-02T02:00:00"),
    ("30 1 1 * *", "2026-01-31T12:00:00", "2026-02-01T01:30:00"),
    ("0 0 * * sun", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),  # 2026-01-01 is a Thursday
    ("0 0 * * 7", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),
    ("0 12 13 * fri", "2026-01-01T00:00:00", "2026-01-02T12:00:00"),  # dom OR dow (Vixie)
    ("0 0 29 feb *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
    ("@hourly", "2026-01-01T10:59:59", "2026-01-01T11:00:00"),
    ("5-10/5 * * jan-mar mon-fri", "2026-01-02T23:59:00", "2026-01-05T00:05:00"),
])
def test_cron_next(expr: str, after: str, expected: str) -> None:
    assert cron.parse(expr).next_after(t(after)) == t(expected)


def test_cron_every_and_timezone() -> None:
    anchor = t("2026-01-01T00:00:10")
    c = cron.parse("@every 90s")
    assert c.next_after(t("2026-01-01T00:01:00"), anchor=anchor) == t("2026-01-01T00:01:40")
    # 02:00 in Berlin (winter, UTC+1) is 01:00 UTC.
    assert cron.parse("0 2 * * *").next_after(t("2026-01-01T00:00:00"), cron.zone("Europe/Berlin")) == \
        t("2026-01-01T01:00:00")
    assert c.previous_at_or_before(t("2026-01-01T00:05:00"), anchor, anchor=anchor) == t("2026-01-01T00:04:40")


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * *", "*/0 * * * *", "5-1 * * * *", "@fortnightly",
                                 "@every 10x", "a b c d e"])
def test_cron_rejects(bad: str) -> None:
    with pytest.raises(cron.CronError):
        cron.parse(bad)


def test_parse_duration() -> None:
    assert cron.parse_duration("1h30m") == timedelta(minutes=90)
    assert cron.parse_duration("2w") == timedelta(days=14)
    with pytest.raises(ValueError):
        cron.parse_duration("7 days")


# ------------------------------------------------------------------------------------------ models

BACKUP = {"source": {"pvc": {"claimName": "mo-data"}, "workload": {"kind": "StatefulSet", "name": "mo"}},
          "storageRef": {"name": "s3"}}


def test_parse_backup_defaults() -> None:
    b = models.parse_backup(BACKUP, "ns1")
    assert (b.type, b.consistency, b.deletion_policy, b.parallelism) == ("Full", "Stop", "Retain", None)
    assert b.source_name == "ns1/mo-data" and b.volume.path == "mo-data"


@pytest.mark.parametrize("change,message", [
    ({"type": "Diff"}, "spec.type must be Full or Incremental"),
    ({"baseBackupID": "x"}, "only meaningful for type Incremental"),
    ({"type": "Incremental", "baseBackupID": "a", "baseBackupName": "b"}, "at most one"),
    ({"source": {"pvc": {"claimName": "mo"}}}, "needs spec.source.workload"),
    ({"source": {"pvc": {"claimName": "mo", "path": "../etc"}}, "consistency": "None"}, "relative path"),
    ({"bandwidthLimit": "fast"}, "not a quantity"),
    ({"storageRef": {}}, "spec.storageRef"),
])
def test_parse_backup_errors(change: dict, message: str) -> None:
    with pytest.raises(models.SpecError, match=message):
        models.parse_backup({**BACKUP, **change}, "ns")


def test_quantity() -> None:
    assert models.parse_quantity("50Mi") == 50 * 2**20
    assert models.parse_quantity("1.5k") == 1500
    assert models.parse_quantity(None) is None


def test_parse_storage_and_location() -> None:
    s = models.parse_storage({"s3": {"bucket": "b", "prefix": "/team/a/", "endpoint": "http://m:9000",
                                     "credentialsSecretRef": {"name": "creds"}}})
    assert s.location == "s3://b/team/a" and s.s3 and s.s3.access_key_key == "AWS_ACCESS_KEY_ID"
    with pytest.raises(models.SpecError, match="exactly one"):
        models.parse_storage({})
    with pytest.raises(models.SpecError, match="http"):
        models.parse_storage({"s3": {"bucket": "b", "endpoint": "minio:9000"}})


def test_parse_restore_and_schedule_errors() -> None:
    with pytest.raises(models.SpecError, match="exactly one of backupName or backupID"):
        models.parse_restore({"target": {"pvc": {"claimName": "x"}}})
    with pytest.raises(models.SpecError, match=r"needs spec\.storageRef"):
        models.parse_restore({"backupID": "abc", "target": {"pvc": {"claimName": "x"}}})
    with pytest.raises(models.SpecError, match=r"spec\.fullSchedule"):
        models.parse_schedule({"fullSchedule": "0 25 * * *", "template": {"spec": BACKUP}}, "ns")
    with pytest.raises(models.SpecError, match="timeZone"):
        models.parse_schedule({"fullSchedule": "@daily", "timeZone": "Mars/Base", "template": {"spec": BACKUP}}, "ns")
    s = models.parse_schedule({"fullSchedule": "@daily", "incrementalSchedule": "0 * * * *",
                               "retention": {"keepLast": 3, "keepWithin": "2d"}, "template": {"spec": BACKUP}}, "ns")
    assert s.retention.keep_within == timedelta(days=2) and s.concurrency == "Forbid"


# ------------------------------------------------------------------------------------------ jobs

STORAGE = models.parse_storage({
    "s3": {"bucket": "bk", "prefix": "p", "endpoint": "http://127.0.0.1:9000", "pathStyle": True,
           "credentialsSecretRef": {"name": "s3-creds"}, "caBundle": {"configMapRef": {"name": "ca"}}},
    "encryption": {"keySecretRef": {"name": "enc"}}})


def test_backup_job_has_no_secret_in_args_and_is_locked_down() -> None:
    owner = jobs.Owner("MOBackup", "nightly", "ns", "uid-1")
    spec = models.parse_backup({**BACKUP, "type": "Incremental", "bandwidthLimit": "10Mi",
                                "job": {"backoffLimit": 3, "nodeSelector": {"disk": "ssd"}}}, "ns")
    job = jobs.backup_job(owner, spec, STORAGE, base_id="base-1",
                          defaults=jobs.OperatorDefaults(image="img:1", service_account="job-sa"))
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["mobackup", "agent", "backup"]
    args = " ".join(c["args"])
    assert "--repo s3://bk/p" in args and "--base base-1" in args and "--type incremental" in args
    assert f"--bandwidth-limit {10 * 2**20}" in args and "--data-dir /data/mo-data" in args
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    assert env["MOBACKUP_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "enc"
    assert env["AWS_CA_BUNDLE"]["value"] == "/etc/mobackup/ca/ca.crt"
    assert env["MOBACKUP_S3_PATH_STYLE"]["value"] == "1"
    assert all("value" not in env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MOBACKUP_ENCRYPTION_KEY"))
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert pod["serviceAccountName"] == "job-sa" and pod["nodeSelector"] == {"disk": "ssd"}
    assert job["spec"]["backoffLimit"] == 3
    ref = job["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "MOBackup" and ref["uid"] == "uid-1" and ref["controller"] is True
    assert len(job["metadata"]["name"]) <= 63
    assert job["metadata"]["name"] == jobs.job_name(owner, "backup")  # deterministic


def test_restore_job_and_long_names() -> None:
    owner = jobs.Owner("MORestore", "r" * 250, "ns", "uid-2")
    spec = models.parse_restore({"backupID": "abc", "storageRef": {"name": "s"}, "overwrite": True,
                                 "target": {"pvc": {"claimName": "t", "path": "."}}})
    job = jobs.restore_job(owner, spec, STORAGE, "abc", jobs.OperatorDefaults())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--overwrite" in args and args[args.index("--target") + 1] == "/data"
    assert len(job["metadata"]["name"]) <= 63 and all(len(v) <= 63 for v in job["metadata"]["labels"].values())


def test_pvc_repository_and_operator_defaults() -> None:
    st = models.parse_storage({"pvc": {"claimName": "repo", "path": "backups"}, "compression": "none"})
    assert jobs.repo_url(st) == "/repo/backups"
    d = jobs.OperatorDefaults.from_env({"MOBACKUP_AGENT_IMAGE": "x:2", "MOBACKUP_JOB_DEFAULTS":
                                        '{"backoffLimit": 4, "ttlSecondsAfterFinished": 60}'})
    job = jobs.delete_job(jobs.Owner("MOBackup", "b", "ns", "u"), st, "id1", models.JobOverrides(), d)
    assert job["spec"]["backoffLimit"] == 4 and job["spec"]["ttlSecondsAfterFinished"] == 60
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "x:2"


def test_job_state_and_termination_message() -> None:
    assert jobs.job_state({"status": {"active": 1}}).state == "Running"
    failed = jobs.job_state({"status": {"failed": 2, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}]}})
    assert (failed.state, failed.reason, failed.attempts) == ("Failed", "BackoffLimitExceeded", 2)
    pod = {"status": {"containerStatuses": [{"name": "agent", "state": {"terminated": {
        "message": 'log line\n{"ok": true, "action": "backup", "result": {"id": "x"}}'}}}]}}
    assert jobs.parse_result(jobs.termination_message(pod)) == {"ok": True, "action": "backup", "result": {"id": "x"}}
    assert jobs.parse_result("Traceback: boom") is None


# ------------------------------------------------------------------------------------------ status

def test_memory_kill_names_the_limit() -> None:
    """A container the kernel killed for its memory limit (the kubelet reports OOMKilled) left no
    result: the run's reason must say so and name the limit, not just "BackoffLimitExceeded"."""
    pod = {"spec": {"containers": [{"name": "agent", "resources": {"limits": {"memory": "48Mi"}}}]},
           "status": {"phase": "Failed", "containerStatuses": [
               {"name": "agent", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}
    msg = jobs.memory_kill(pod)
    assert msg and "memory limit of 48Mi" in msg and "spec.job.resources.limits.memory" in msg
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "Error"
    assert jobs.memory_kill(pod) is None
    del pod["spec"]["containers"][0]["resources"]
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    assert "no memory limit set" in (jobs.memory_kill(pod) or "")


def test_retried_api_requests_are_warnings_until_kopf_gives_up() -> None:
    import logging

    from mobackup.k8s.operator_main import _retried_requests

    def record(msg: str, name: str = "kopf._cogs.clients.watching") -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)

    retried = record("Request attempt #1/9 failed; will retry: GET /apis -> APITooManyRequestsError(...)")
    assert _retried_requests(retried) and retried.levelname == "WARNING"
    final = record("Request attempt #9/9 failed; escalating: GET /apis -> APIServerError(...)")
    assert _retried_requests(final) and final.levelname == "ERROR"
    ours = record("failed; will retry", name="mobackup.operator")
    assert _retried_requests(ours) and ours.levelname == "ERROR"


def test_status_patches() -> None:
    start = "2026-01-01T00:00:00Z"
    p = status.phase_patch({"startTime": start}, "Completed", "BackupCompleted", "ok", 3,
                           completionTime="2026-01-01T00:01:03Z")
    assert p["duration"] == "1m3.0s" and p["durationSeconds"] == 63 and p["observedGeneration"] == 3
    conds = {c["type"]: c["status"] for c in p["conditions"]}
    assert conds == {"Ready": "True", "Running": "False", "Failed": "False"}
    f = status.backup_result_fields({"id": "a", "type": "incremental", "base_id": "b", "backup_ts": "1-0",
                                     "size_bytes": 70 * 2**20, "new_bytes": 5, "file_count": 733})
    assert f["size"] == "70.0 MiB" and f["type"] == "Incremental" and f["baseBackupID"] == "b"
    assert status.human_duration(3725) == "1h2m5s" and status.human_duration(8.648) == "8.6s"
    assert status.progress_fields(50, 200, 1, 4)["percent"] == 25


def test_merge_conditions_keeps_transition_time() -> None:
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "T0"}]
    new = status.merge_conditions(old, [status.condition("Ready", False, "Waiting", "m")])
    assert new[0]["lastTransitionTime"] == "T0"


# ------------------------------------------------------------------------------------------ retention

def test_retention_keeps_newest_and_no_bases() -> None:
    """Two chains (full-1 <- incr-1 <- incr-2, full-2 <- incr-3): a kept incremental does not keep
    its base, its file list is complete (the schedule's own sparing of a running backup's base is
    tests/engine/test_schedule_retention.py)."""
    now = t("2026-01-10T12:00:00")
    items = [
        retention.Item("full-1", "F1", t("2026-01-01T00:00:00")),
        retention.Item("incr-1", "I1", t("2026-01-02T00:00:00")),
        retention.Item("incr-2", "I2", t("2026-01-03T00:00:00")),
        retention.Item("full-2", "F2", t("2026-01-04T00:00:00")),
        retention.Item("incr-3", "I3", t("2026-01-05T00:00:00")),
    ]
    d = retention.select(items, RetentionPolicy(keep_last=1), now)
    assert d.keep == ["incr-3"] and d.delete == ["full-2", "incr-2", "incr-1", "full-1"]
    assert d.reasons == {"incr-3": "newest completed backup"}
    d = retention.select(items, RetentionPolicy(keep_last=3), now)
    assert d.keep == ["incr-3", "full-2", "incr-2"] and d.delete == ["incr-1", "full-1"]  # incr-2 without its chain
    d = retention.select(items, RetentionPolicy(keep_last=0), now)
    assert d.keep == ["incr-3"]  # never the newest completed backup
    d = retention.select(items, RetentionPolicy(), now, history_limit=2)
    assert d.keep == ["incr-3", "full-2"] and d.delete == ["incr-2", "incr-1", "full-1"]
    d = retention.select(items, RetentionPolicy(keep_daily=2), now)  # the newest of the two last days
    assert d.keep == ["incr-3", "full-2"]
    assert retention.history_overflow(["a", "b", "c"], 1) == ["b", "c"]


# ------------------------------------------------------------------------------------------ schedule

def test_schedule_decide() -> None:
    spec = models.parse_schedule({"fullSchedule": "0 0 * * *", "incrementalSchedule": "0 * * * *",
                                  "startingDeadlineSeconds": 600, "template": {"spec": BACKUP}}, "ns")
    created = t("2026-01-01T10:30:00")
    d = schedule.decide(spec, t("2026-01-01T10:45:00"), created, None, None)
    assert d.kind is None and d.next_incremental == t("2026-01-01T11:00:00") and d.next_full == t("2026-01-02T00:00:00")
    d = schedule.decide(spec, t("2026-01-01T11:00:05"), created, None, None)
    assert (d.kind, d.scheduled, d.missed) == ("Incremental", t("2026-01-01T11:00:00"), False)
    d = schedule.decide(spec, t("2026-01-02T00:00:01"), created, None, t("2026-01-01T23:00:00"))
    assert d.kind == "Full"  # both due: the full wins
    d = schedule.decide(spec, t("2026-01-01T13:30:00"), created, None, t("2026-01-01T11:00:00"))
    assert d.kind == "Incremental" and d.scheduled == t("2026-01-01T13:00:00") and d.missed  # > 600 s late


def test_schedule_backup_body_protects_from_argo() -> None:
    spec = models.parse_schedule({"fullSchedule": "@daily", "template": {
        "metadata": {"labels": {"team": "db"}}, "spec": BACKUP}}, "ns")
    sched = {"metadata": {"name": "nightly", "namespace": "ns", "uid": "u1"}}
    body = schedule.backup_body(sched, spec, "Incremental", t("2026-01-01T00:00:00"), "nightly-full-x")
    ann = body["metadata"]["annotations"]
    assert ann["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
    assert ann["argocd.argoproj.io/sync-options"] == "Prune=false"
    labels = body["metadata"]["labels"]
    assert labels["mobackup.io/schedule"] == "nightly" and labels["team"] == "db"
    assert body["spec"]["baseBackupName"] == "nightly-full-x" and body["spec"]["deletionPolicy"] == "Delete"
    assert body["metadata"]["name"] == "nightly-incr-20260101000000"
    assert "ownerReferences" not in body["metadata"]


# ------------------------------------------------------------------------------------------ workload, lease

def test_workload_record_lives_on_the_run() -> None:
    """The record is the run's metadata (annotation + finalizer); the workload is its spec's."""
    run = {"kind": "MOBackup", "spec": BACKUP,
           "metadata": {"name": "b", "namespace": "ns", "uid": "u", "finalizers": [workload.FINALIZER],
                        "annotations": {workload.A_REPLICAS: "3"}}, "status": {"phase": "Running"}}
    assert workload.holds(run) and workload.holds(run, models.Workload("StatefulSet", "mo"))
    assert not workload.holds(run, models.Workload("Deployment", "mo"))
    assert workload.held_replicas(run) == 3
    assert workload.run_active(run)
    run["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    assert not workload.run_active(run)  # being deleted: the sweeper scales back
    del run["metadata"]["annotations"]
    assert not workload.holds(run)
    assert not workload.holds({"metadata": {}, "status": {"phase": "Running"}})
    # A status record alone (what a status patch can write) holds nothing.
    forged = {"kind": "MOBackup", "spec": BACKUP, "metadata": {"name": "b", "namespace": "ns", "uid": "u"},
              "status": {"scaledWorkload": {"kind": "StatefulSet", "name": "mo", "replicas": 3,
                                            "scaledDownAt": "2026-01-01T00:00:00Z"}}}
    assert not workload.holds(forged)


def test_lease_decide_and_name() -> None:
    assert lease.decide(None, "me", lambda h: True)
    assert lease.decide("me", "me", lambda h: True)
    assert not lease.decide("other", "me", lambda h: True)
    assert lease.decide("other", "me", lambda h: False)  # a finished or vanished holder is taken over
    assert len(lease.lease_name("x" * 300)) <= 63


def test_snapshot_manifests() -> None:
    from mobackup.k8s import snapshot

    owner = jobs.Owner("MOBackup", "b", "ns", "u1")
    vs = snapshot.snapshot_body(owner, "mo-data", "csi-class")
    assert vs["spec"] == {"source": {"persistentVolumeClaimName": "mo-data"}, "volumeSnapshotClassName": "csi-class"}
    assert vs["metadata"]["ownerReferences"][0]["uid"] == "u1"
    pvc = snapshot.clone_body(owner, {"spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                                               "resources": {"requests": {"storage": "10Gi"}}}}, "12Gi")
    assert pvc["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                         "name": vs["metadata"]["name"]}
    assert pvc["spec"]["resources"]["requests"]["storage"] == "12Gi" and pvc["spec"]["storageClassName"] == "fast"
    spec = models.parse_backup({**BACKUP, "consistency": "Snapshot"}, "ns")
    job = jobs.backup_job(owner, spec, STORAGE, base_id=None, defaults=jobs.OperatorDefaults(),
                          claim=pvc["metadata"]["name"], mo_version="1.2.3")
    pod = job["spec"]["template"]["spec"]
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "--mo-version" in pod["containers"][0]["args"]


def test_restore_hostname() -> None:
    base = {"backupID": "a", "storageRef": {"name": "s"}}
    r = models.parse_restore({**base, "target": {"pvc": {"claimName": "t"}, "workload": {"name": "mo"}}})
    assert r.hostname == "mo-0"  # a StatefulSet's first pod
    r2 = models.parse_restore({**base, "target": {"pvc": {"claimName": "t"},
                                                  "workload": {"kind": "Deployment", "name": "mo"}}})
    assert r2.hostname is None
    r3 = models.parse_restore({**base, "target": {"pvc": {"claimName": "t"}, "hostname": "mo-3"}})
    args = jobs.restore_job(jobs.Owner("MORestore", "r", "ns", "u"), r3, STORAGE, "a", jobs.OperatorDefaults())[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--hostname") + 1] == "mo-3"


# ------------------------------------------------------------------------------------------ online

SQL = {"host": "mo.matrixone.svc", "port": 6001, "user": "dump", "passwordSecretRef": {"name": "mo-sql"}}


def test_online_is_the_default_with_sql_for_backups_and_schedules() -> None:
    with_sql = {**BACKUP, "source": {**BACKUP["source"], "sql": SQL}}
    assert models.parse_backup(with_sql, "ns").consistency == "Online"
    assert models.parse_backup(BACKUP, "ns").consistency == "Stop"
    assert models.parse_backup({**with_sql, "consistency": "Stop"}, "ns").consistency == "Stop"
    schedule = models.parse_schedule({"fullSchedule": "@daily", "template": {"spec": with_sql}}, "ns")
    assert models.parse_backup(schedule.template_spec, "ns", template=True).consistency == "Online"
    with pytest.raises(models.SpecError, match=r"Online needs spec\.source\.sql"):
        models.parse_backup({**BACKUP, "consistency": "Online"}, "ns")
    with pytest.raises(models.SpecError, match="serverDataDir must be an absolute path"):
        models.parse_backup({**with_sql, "source": {**with_sql["source"], "serverDataDir": "mo-data"}}, "ns")


def test_online_backup_job_talks_sql_writes_the_volume_and_runs_beside_matrixone() -> None:
    owner = jobs.Owner("MOBackup", "online", "ns", "uid-2")
    spec = models.parse_backup({**BACKUP, "source": {**BACKUP["source"], "sql": SQL}}, "ns")
    job = jobs.backup_job(owner, spec, STORAGE, base_id=None,
                          defaults=jobs.OperatorDefaults(image="img:1", service_account="job-sa"),
                          online=jobs.OnlinePlacement("/var/lib/mo/mo-data", {"app": "mo"}))
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = " ".join(c["args"])
    assert "--online --sql-host mo.matrixone.svc --sql-port 6001 --sql-user dump" in args
    assert "--server-data-dir /var/lib/mo/mo-data" in args
    env = {e["name"]: e for e in c["env"]}
    assert env["MOBACKUP_SQL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mo-sql", "key": "password"}
    data = next(m for m in c["volumeMounts"] if m["name"] == "data")
    assert data.get("readOnly") is False  # the Job removes MatrixOne's staging copy
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term == {"labelSelector": {"matchLabels": {"app": "mo"}}, "topologyKey": "kubernetes.io/hostname"}


# ----------------------------------------------------------------- MatrixOne with table data in S3

CLUSTER_BACKUP = {"source": {"cluster": {"name": "mo"}}, "storageRef": {"name": "s3"}}
SHARED = {"path": "mo-bucket/clusters/mo", "type": "minio", "endpoint": "http://minio:9000",
          "secretRef": {"name": "mo-s3"}}


def test_cluster_and_shared_storage_sources() -> None:
    spec = models.parse_backup({**CLUSTER_BACKUP, "parallelPods": 4}, "ns")
    assert (spec.volume, spec.consistency, spec.source_name, spec.parallel_pods) == (None, "Online", "ns/mo", 4)
    assert spec.lease_key == "matrixonecluster-mo"
    shared = models.parse_backup({"source": {"sharedStorage": {"s3": SHARED}, "sql": {
        "host": "mo-cn", "passwordSecretRef": {"name": "p"}}}, "storageRef": {"name": "s3"}}, "ns")
    assert shared.shared is not None and shared.shared.data_url == "s3://mo-bucket/clusters/mo/data"
    assert shared.shared.url("hk_data") == "s3://mo-bucket/clusters/mo/hk_data" and shared.shared.path_style
    assert shared.source_name == "s3://mo-bucket/clusters/mo" and shared.lease_key == shared.shared.data_url
    own = models.parse_shared_s3({**SHARED, "keyPrefix": "server/data", "type": "aws"}, "x")
    assert (own.key_prefix, own.path_style, own.region) == ("server/data", False, "us-west-2")
    # Lease names stay DNS names whatever the key.
    for key in (spec.lease_key, shared.lease_key, "s3://B_ad/x//y"):
        name = lease.lease_name(key)
        assert models.DNS.match(name) and len(name) <= 63, name


@pytest.mark.parametrize("change, message", [
    ({"source": {"cluster": {"name": "mo"}, "pvc": {"claimName": "d"}}},
     "exactly one of pvc .*got \\['pvc', 'cluster'\\]"),
    ({"source": {}}, "exactly one of pvc"),
    ({"consistency": "Snapshot"}, "needs a data volume"),
    ({"source": {"cluster": {"name": "mo"}, "workload": {"name": "mo"}}}, "applies to a data volume"),
    ({"parallelPods": 65}, "parallelPods must be 1-64"),
    ({"source": {"sharedStorage": {"s3": SHARED}}}, "needs spec.source.sql"),
    ({"source": {"sharedStorage": {"s3": {**SHARED, "path": "Bad_Bucket/x"}}}}, "not an S3 bucket name"),
    ({"source": {"sharedStorage": {"s3": {**SHARED, "path": "bucket/../x"}}}}, "without '.', '..'"),
    ({"source": {"sharedStorage": {"s3": {**SHARED, "secretRef": {}}}}}, "secretRef.name is required"),
    ({"source": {"sharedStorage": {"s3": {**SHARED, "endpoint": "minio:9000"}}}}, "http:// or https://"),
    ({"source": {"cluster": {"name": "mo"}, "staging": {"path": "/"}}}, "BUCKET/FOLDER"),
])
def test_cluster_source_errors(change: dict, message: str) -> None:
    with pytest.raises(models.SpecError, match=message):
        models.parse_backup({**CLUSTER_BACKUP, **change}, "ns")


def test_s3_backup_steps_carry_no_secret_and_only_the_first_talks_sql() -> None:
    spec = models.parse_backup({**CLUSTER_BACKUP, "parallelPods": 3, "parallelism": 6}, "ns")
    shared = models.parse_shared_s3(SHARED, "x")
    storage = models.parse_storage({"s3": {"bucket": "repo", "credentialsSecretRef": {"name": "c"}}})
    sql = models.SqlEndpoint("mo-cn", 6001, "dump", models.SecretKey("mo-credential", "password"))
    owner = jobs.Owner("MOBackup", "b", "ns", "uid")
    bodies = {step: jobs.s3_backup_job(owner, spec, storage, shared, sql if step in ("backup", "stage") else None,
                                       step=step, defaults=jobs.OperatorDefaults(), run_id="run-1")
              for step in jobs.S3_STEPS}
    assert len({b["metadata"]["name"] for b in bodies.values()}) == 4
    for step, body in bodies.items():
        pod = body["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert "volumes" not in pod or all("persistentVolumeClaim" not in v for v in pod["volumes"])
        assert env["MOBACKUP_STAGING_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "mo-s3", "key": "AWS_SECRET_ACCESS_KEY"}
        assert ("MOBACKUP_SQL_PASSWORD" in env) == (step in ("backup", "stage")), step
        assert "--staging" in container["args"] and "s3://mo-bucket/clusters/mo/mobackup-staging" in container["args"]
    ingest = bodies["ingest"]["spec"]
    assert (ingest["completionMode"], ingest["completions"], ingest["parallelism"], ingest["maxFailedIndexes"]) == (
        "Indexed", 3, 3, 0) and "backoffLimit" not in ingest and ingest["backoffLimitPerIndex"] == 1
    assert "--stage-only" in bodies["stage"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert bodies["commit"]["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "commit"


def test_s3_restore_targets_and_steps() -> None:
    spec = models.parse_restore({"backupName": "b", "parallelPods": 2, "overwrite": True, "target": {
        "cluster": {"name": "mo"}, "logVolume": {"claimName": "mo-data-mo-log-0"}}})
    assert spec.log_volume == models.Volume("mo-data-mo-log-0", "data") and spec.target_label == "MatrixOneCluster mo"
    shared = models.parse_shared_s3(SHARED, "x")
    storage = models.parse_storage({"s3": {"bucket": "repo"}})
    owner = jobs.Owner("MORestore", "r", "ns", "uid")
    shards = jobs.s3_restore_job(owner, spec, storage, "ID", shared, ["mo-cn:6001"], jobs.OperatorDefaults(), "shards")
    final = jobs.s3_restore_job(owner, spec, storage, "ID", shared, ["mo-cn:6001"], jobs.OperatorDefaults(),
                                "finalize")
    s_args = shards["spec"]["template"]["spec"]["containers"][0]["args"]
    f_args = final["spec"]["template"]["spec"]["containers"][0]["args"]
    assert shards["spec"]["completions"] == 2 and "--shards" in s_args and "--local-fs-dir" not in s_args
    assert not any(v.get("persistentVolumeClaim") for v in shards["spec"]["template"]["spec"]["volumes"])
    assert {"--finalize", "--reset-local-fs", "--overwrite"} <= set(f_args) and "--hk-data-s3" in f_args
    assert f_args[f_args.index("--target-s3") + 1] == "s3://mo-bucket/clusters/mo/data"
    assert f_args[f_args.index("--check-stopped") + 1] == "mo-cn:6001"
    for bad, message in [({"target": {"cluster": {"name": "mo"}, "workload": {"name": "mo"}}}, "its own spec"),
                         ({"target": {"pvc": {"claimName": "d"}, "logVolume": {"claimName": "l"}}}, "apply to table"),
                         ({"target": {"pvc": {"claimName": "d"}}, "parallelPods": 2}, "apply to table"),
                         ({"target": {"cluster": {"name": "mo"}, "hostname": "mo-0"}}, "applies to a data volume")]:
        with pytest.raises(models.SpecError, match=message):
            models.parse_restore({"backupName": "b", **bad})


# ------------------------------------------------------------------------- a run against its storage

def test_storage_overlap_claims_prefixes_and_staging() -> None:
    """A run may not mount the storage's PVC as its data, nor write over (or stage above) its prefix."""
    pvc = models.parse_storage({"pvc": {"claimName": "repo"}})
    message = models.storage_overlap(pvc, "st", claims={"spec.target.pvc.claimName": "repo"})
    assert message and message.startswith("spec.target.pvc.claimName repo is the PVC of MOBackupStorage st")
    assert models.storage_overlap(pvc, "st", claims={"spec.target.pvc.claimName": "mo-data", "log": None}) is None
    s3 = models.parse_storage({"s3": {"bucket": "bk", "prefix": "/team/repo/"}})
    for bucket, prefix, overlaps in [("bk", "team/repo", True), ("bk", "team", True), ("bk", "", True),
                                     ("bk", "team/repo/blobs", True), ("bk", "team/repo2", False),
                                     ("bk", "team/re", False), ("other", "team/repo", False)]:
        found = models.storage_overlap(s3, "st", writes={"the target's data prefix": (bucket, prefix)})
        assert bool(found) == overlaps, (bucket, prefix, found)
    assert "would overwrite it" in str(models.storage_overlap(s3, "st", writes={"hk_data": ("bk", "team/repo/x")}))
    assert "contains the repository" in str(models.storage_overlap(s3, "st", staging=("bk", "team")))
    assert models.storage_overlap(s3, "st", staging=("bk", "team/repo/mobackup-staging")) is None  # inside: kept apart
    assert models.storage_overlap(s3, "st", claims={"spec.source.pvc.claimName": "repo"}) is None
