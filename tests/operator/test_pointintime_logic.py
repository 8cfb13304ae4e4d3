"""Point-in-time recovery in the operator (k8s/pointintime.py), driven against the in-memory API of
test_status_trust (FakeKube): every refusal of a MORestore with spec.pointInTime fails it before
anything is touched (no Lease, no scale-down, no Job), with a reason naming the recoverable
intervals and a Warning Event; the choice among the source's backups; the Jobs it then runs (the
restore re-checks the time against the repository, the PITR step's password comes from the opted-in
Secret, never its args); the PointInTimeRecoverable condition of backups. The same flow against the
real MatrixOne: test_e2e_pitr.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from test_status_trust import NS, FakeKube

from mobackup.k8s import controller, jobs, models, pointintime, schedule
from mobackup.k8s.kube import Kube, NotFound

NOW = datetime.now(UTC).replace(microsecond=0)
STS = {"kind": "StatefulSet", "name": "mo"}
SQL = {"host": "mo", "user": "root", "passwordSecretRef": {"name": "creds", "key": "AWS_SECRET_ACCESS_KEY"}}
TARGET = {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS}


def rfc(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class LeaseKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.leases: dict[str, dict[str, Any]] = {}

    def get_lease(self, ns: str, name: str) -> dict[str, Any]:
        if name not in self.leases:
            raise NotFound(name)
        return self.leases[name]

    def create_lease(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        self.leases[body["metadata"]["name"]] = body
        return body

    def replace_lease(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.leases[name] = body
        return body

    def delete_lease(self, ns: str, name: str) -> None:
        self.leases.pop(name, None)

    def get_pvc(self, ns: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"phase": "Bound"}}


def cold(kube: FakeKube, name: str, start: datetime | None, end: datetime, claim: str = "mo-data",
         record: dict[str, Any] | None = None) -> None:
    st: dict[str, Any] = {"phase": "Completed", "backupID": f"id-{name}", "storage": "s3",
                          "backupTS": f"{int(end.timestamp())}000000000-1",
                          "pointInTime": record or {"history": True, "windows": []}}
    if start is not None:
        st.update(recoverableFrom=rfc(start), recoverableTo=rfc(end))
    kube.add("MOBackup", name, {"source": {"pvc": {"claimName": claim, "path": "mo-data"}, "workload": STS,
                                           "sql": SQL}, "storageRef": {"name": "s3"}, "consistency": "Stop"}, st,
             annotations={"mobackup.io/backup-id": f"id-{name}"})


@pytest.fixture
def kube() -> LeaseKube:
    k = LeaseKube()
    k.replicas["mo"] = 1
    k.add("MOBackupStorage", "s3", {"s3": {"bucket": "bk", "credentialsSecretRef": {"name": "creds"}}},
          {"phase": "Available"})
    # Two cold backups with history: [now-3h, now-2h] and [now-90m, now-1h]; an online one; one of
    # another volume (never a candidate for this target).
    cold(kube=k, name="cold-a", start=NOW - timedelta(hours=3), end=NOW - timedelta(hours=2))
    cold(kube=k, name="cold-b", start=NOW - timedelta(minutes=90), end=NOW - timedelta(hours=1))
    cold(kube=k, name="online", start=None, end=NOW - timedelta(minutes=30),
         record={"history": False, "windows": [], "reason": "MatrixOne's BACKUP output holds no PITR history"})
    cold(kube=k, name="other-volume", start=NOW - timedelta(minutes=50), end=NOW - timedelta(minutes=40),
         claim="elsewhere")
    return k


def restore(kube: FakeKube, name: str, **spec: Any) -> dict[str, Any]:
    kube.add("MORestore", name, {"target": TARGET, "overwrite": True, "sqlCheck": SQL, **spec})
    controller.reconcile_restore(controller.Ctx(cast(Kube, kube)), kube.get_cr("MORestore", NS, name))
    return kube.crs[("MORestore", name)]["status"]


def refused(kube: LeaseKube, name: str, expect: str, reason: str = "PointInTimeNotRecoverable", **spec: Any) -> str:
    st = restore(kube, name, **spec)
    assert st["phase"] == "Failed" and st["reason"] == reason, st
    assert expect in st["message"], st["message"]
    assert kube.jobs == {} and kube.scaled == [] and kube.leases == {}, "a refused restore touched something"
    assert any(e.get("reason") == reason and e.get("type") == "Warning" for e in kube.events)
    return str(st["message"])


def test_each_refusal_comes_before_anything_is_touched(kube: LeaseKube) -> None:
    intervals = (f"cold-a [{rfc(NOW - timedelta(hours=3))[:-1]}", f"cold-b [{rfc(NOW - timedelta(minutes=90))[:-1]}")
    message = refused(kube, "future", "is in the future", pointInTime=rfc(NOW + timedelta(hours=1)))
    assert all(i in message for i in intervals) and "other-volume" not in message, message
    refused(kube, "too-new", f"the newest recoverable point is {rfc(NOW - timedelta(hours=1))[:-1]}",
            pointInTime=rfc(NOW - timedelta(minutes=10)))
    refused(kube, "too-old", "earlier than every window", pointInTime=rfc(NOW - timedelta(days=2)))
    refused(kube, "gap", "in no backup's interval", pointInTime=rfc(NOW - timedelta(minutes=100)))
    refused(kube, "online", "holds no PITR history", backupName="online", pointInTime=rfc(NOW - timedelta(minutes=40)))
    cold(kube, "no-pitr", None, NOW - timedelta(minutes=20))
    refused(kube, "no-pitr", "no cluster PITR", backupName="no-pitr", pointInTime=rfc(NOW - timedelta(minutes=25)))
    refused(kube, "wrong-backup", "later than every backup's BACKUPTS", backupName="cold-a",
            pointInTime=rfc(NOW - timedelta(minutes=80)))
    refused(kube, "only-elsewhere", "looked at the Completed MOBackups of mo-data/mo-data in s3",
            storageRef={"name": "s3"}, pointInTime=rfc(NOW - timedelta(minutes=45)))
    refused(kube, "no-zone", "has no zone", "InvalidSpec", pointInTime="2026-12-01T10:00:00")
    st = restore(kube, "no-sql", pointInTime=rfc(NOW - timedelta(minutes=80)), sqlCheck=None)
    assert st["reason"] == "InvalidSpec" and "needs spec.sqlCheck" in st["message"], st
    with pytest.raises(models.SpecError, match="not backupID"):
        models.parse_restore({"target": TARGET, "sqlCheck": SQL, "backupID": "x", "storageRef": {"name": "s3"},
                              "pointInTime": rfc(NOW)})
    # Table data in S3: in one pod, through sqlCheck (engine/pitr_history_s3.py took the history).
    assert models.parse_restore({"target": {"cluster": {"name": "c"}}, "sqlCheck": SQL,
                                 "pointInTime": rfc(NOW)}).point_in_time == NOW
    with pytest.raises(models.SpecError, match="one pod"):
        models.parse_restore({"target": {"cluster": {"name": "c"}}, "sqlCheck": SQL, "pointInTime": rfc(NOW),
                              "parallelPods": 2})
    with pytest.raises(models.SpecError, match=r"needs spec\.sqlCheck"):
        models.parse_restore({"target": {"cluster": {"name": "c"}}, "pointInTime": rfc(NOW)})


def pod(job: str, phase: str, result: dict[str, Any]) -> dict[str, Any]:
    """A finished agent pod of `job`, its result in the termination message."""
    terminated = {"name": jobs.CONTAINER, "state": {"terminated": {"message": json.dumps(result)}}}
    return {"metadata": {"labels": {"job-name": job}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": phase, "containerStatuses": [terminated]}}


def test_a_time_picks_the_backup_holding_it_and_runs_the_pitr_job_after_the_files(kube: LeaseKube) -> None:
    t = NOW - timedelta(minutes=80)
    st = restore(kube, "ok", pointInTime=rfc(t))
    assert st["phase"] == "Running" and st["backupID"] == "id-cold-b", st
    assert st["pointInTime"]["backupName"] == "cold-b" and st["pointInTime"]["time"] == rfc(t), st
    (name, job), = kube.jobs.items()
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--to-time") + 1] == t.isoformat()  # the agent re-checks it in the repository
    assert kube.scaled == [("mo", 0)]

    # The restore Job succeeds: the workload is scaled back, then the PITR Job starts.
    obj = kube.crs[("MORestore", "ok")]
    result = {"ok": True, "action": "restore", "result": {"backup_id": "id-cold-b", "file_count": 3, "bytes": 10}}
    kube.jobs[name]["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    kube.pods.append(pod(name, "Succeeded", result))
    controller.reconcile_restore(controller.Ctx(cast(Kube, kube)), kube.get_cr("MORestore", NS, "ok"))
    assert obj["status"]["reason"] == "RestoringToTime", obj["status"]
    assert kube.scaled[-1] == ("mo", 1)
    pitr = kube.jobs[jobs.job_name(controller.owner_of(obj), "pitr")]
    container = pitr["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["agent", "pitr"] and pitr["spec"]["backoffLimit"] == 0
    assert "--to-time" in container["args"] and not any("secret" in a.lower() for a in container["args"])
    assert {"name": "MOBACKUP_SQL_PASSWORD", "valueFrom": {"secretKeyRef": {
        "name": "creds", "key": "AWS_SECRET_ACCESS_KEY"}}} in container["env"]

    # The PITR Job fails: Failed, saying what the volume holds.
    pname = pitr["metadata"]["name"]
    kube.jobs[pname]["status"] = {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                                               "reason": "BackoffLimitExceeded"}]}
    failure = {"ok": False, "action": "pitr", "reason": "MobackupError", "error": "MatrixOne refused it"}
    kube.pods.append(pod(pname, "Failed", failure))
    controller.reconcile_restore(controller.Ctx(cast(Kube, kube)), kube.get_cr("MORestore", NS, "ok"))
    assert obj["status"]["phase"] == "Failed" and obj["status"]["reason"] == "PointInTimeFailed", obj["status"]
    assert "MatrixOne refused it; the volume holds backup id-cold-b as of its backupTS" in obj["status"]["message"]


def test_the_recoverable_condition_says_why_not() -> None:
    ok, reason, _ = pointintime.recoverable_condition({"recoverableFrom": "a", "recoverableTo": "b"})
    assert ok and reason == "Recoverable"
    assert pointintime.recoverable_condition({"pointInTime": {"history": False, "reason": "BACKUP output"}})[1:] == \
        ("NoHistory", "BACKUP output")
    assert pointintime.recoverable_condition({"pointInTime": {"history": True, "windows": []}})[1] == "NoPITR"
    assert pointintime.recoverable_condition({"pointInTime": {"history": True, "error": "x"}})[1] == "NoPITRWindows"
    assert pointintime.recoverable_condition({})[1] == "NoPITRWindows"


def test_windows_are_validated_and_a_schedule_passes_its_window_on() -> None:
    spec = {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS, "sql": SQL}, "storageRef": {"name": "s3"},
            "consistency": "Stop", "pointInTime": {"window": "7d"}}
    assert models.parse_backup(spec, NS).pitr_window == 7 * 86400
    with pytest.raises(models.SpecError, match=r"needs spec\.source\.sql"):
        models.parse_backup({**spec, "source": {"pvc": {"claimName": "mo-data"}, "workload": STS}}, NS)
    with pytest.raises(models.SpecError, match=r"pointInTime\.window"):
        models.parse_backup({**spec, "pointInTime": {"window": "a week"}}, NS)
    s3_source = {**spec, "source": {"cluster": {"name": "c"}}, "consistency": "Online"}
    assert models.parse_backup(s3_source, NS).pitr_window == 7 * 86400  # the one-pod run takes the history
    with pytest.raises(models.SpecError, match="needs parallelPods 1"):
        models.parse_backup({**s3_source, "parallelPods": 2}, NS)
    template = {k: v for k, v in spec.items() if k != "pointInTime"}
    sched = {"metadata": {"name": "s", "namespace": NS, "uid": "u"},
             "spec": {"fullSchedule": "@daily", "template": {"spec": template}, "pointInTime": {"window": "36h"}}}
    parsed = models.parse_schedule(sched["spec"], NS)
    body = schedule.backup_body(sched, parsed, "Full", NOW, None)
    assert body["spec"]["pointInTime"] == {"window": "36h"}
    assert models.parse_backup(body["spec"], NS).pitr_window == 36 * 3600
    with pytest.raises(models.SpecError, match=r"needs spec\.source\.sql"):
        models.parse_schedule({**sched["spec"], "template": {"spec": {**template, "source": {
            "pvc": {"claimName": "mo-data"}, "workload": STS}}}}, NS)


def test_the_backup_job_carries_the_record_read_before_the_stop(kube: LeaseKube) -> None:
    """A record already in status (read on an earlier pass, before the scale-down) goes to the Job as is,
    checked: a patched status with a malformed window fails the run instead."""
    spec = models.parse_backup({"source": {"pvc": {"claimName": "mo-data"}, "workload": STS, "sql": SQL},
                                "storageRef": {"name": "s3"}, "consistency": "Stop"}, NS)
    window = {"name": "pc", "created": "2026-12-01T00:00:00Z", "modified": "2026-12-01T00:00:00Z", "value": 1,
              "unit": "d"}
    obj = kube.add("MOBackup", "b", {}, {"pointInTime": {"history": True, "windows": [window],
                                                          "readAt": "2026-12-01T01:00:00Z"}})
    ctx = controller.Ctx(cast(Kube, kube))
    rec = pointintime.backup_record(ctx, obj, spec)
    assert rec == {"history": True, "windows": [window], "read_at": "2026-12-01T01:00:00Z"}
    body = jobs.backup_job(controller.owner_of(obj), spec, models.parse_storage(
        {"s3": {"bucket": "bk", "credentialsSecretRef": {"name": "creds"}}}), base_id=None,
        defaults=ctx.defaults, pitr_record=rec)
    args = body["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(args[args.index("--pitr-record") + 1]) == rec
    obj["status"]["pointInTime"]["windows"] = [{**window, "name": "pc; drop"}]
    with pytest.raises(controller.Fail, match=r"status\.pointInTime"):
        pointintime.backup_record(ctx, obj, spec)


def test_the_agent_records_the_windows_and_rechecks_the_time_before_writing(tmp_path: Path) -> None:
    """`agent backup --pitr-record` stores the record in the manifest and reports the interval;
    `agent restore --to-time` refuses a time the repository's record does not cover, writing nothing."""
    from test_agent import run as agent_run

    from mobackup.sample import generate_mo_data

    data = generate_mo_data(tmp_path / "mo-data", seed=3)
    repo = str(tmp_path / "repo")
    window = {"name": "pc", "created": "2000-01-01T00:00:00Z", "modified": "2000-01-01T00:00:00Z", "value": 100,
              "unit": "y"}
    code, out = agent_run(tmp_path, "backup", "--repo", repo, "--data-dir", str(data), "--source", "ns/mo",
                          "--pitr-record", json.dumps({"history": True, "windows": [window]}))
    assert code == 0, out
    result = out["result"]
    assert result["recoverable_from"] == "2000-01-01T00:00:01.000Z" and result["recoverable_to"], result
    assert pointintime_fields(result) == (result["recoverable_from"], result["recoverable_to"])
    target = tmp_path / "restored"
    code, out = agent_run(tmp_path, "restore", "--repo", repo, "--backup-id", result["id"], "--target", str(target),
                          "--to-time", "1999-12-31T23:00:00Z")
    assert code == 1 and "is outside backup" in out["error"], out
    assert not target.exists()
    code, out = agent_run(tmp_path, "restore", "--repo", repo, "--backup-id", result["id"], "--target", str(target),
                          "--to-time", result["recoverable_to"])
    assert code == 0, out
    code, out = agent_run(tmp_path, "backup", "--repo", repo, "--data-dir", str(data), "--source", "ns/mo",
                          "--pitr-record", json.dumps({"history": True, "windows": [{**window, "value": 101}]}))
    assert code == 1 and "PITR record" in out["error"], out


def pointintime_fields(result: dict[str, Any]) -> tuple[str, str]:
    from mobackup.k8s import status

    fields = status.backup_result_fields(result)
    return fields["recoverableFrom"], fields["recoverableTo"]


def test_an_s3_backup_job_with_a_record_reads_the_clusters_prefix_with_its_keys() -> None:
    """Table data in S3: the one-pod Job gets the record, the SHARED prefix (--shared-s3) and the
    cluster's keys from its Secret (never in args); a staged run (parallelPods > 1) gets neither."""
    shared = {"s3": {"path": "bkt/mo", "type": "minio", "endpoint": "http://s3:9000", "secretRef": {"name": "mo-s3"}}}
    spec = models.parse_backup({"source": {"sharedStorage": shared, "sql": SQL}, "storageRef": {"name": "s3"},
                                "pointInTime": {"window": "1d"}}, NS)
    storage = models.parse_storage({"s3": {"bucket": "repo", "credentialsSecretRef": {"name": "creds"}}})
    rec = {"history": False, "windows": []}
    owner = jobs.Owner("MOBackup", "b", NS, "uid")
    body = jobs.s3_backup_job(owner, spec, storage, spec.shared, spec.sql, step="backup",
                              defaults=jobs.OperatorDefaults(), pitr_record=rec)
    container = body["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert json.loads(args[args.index("--pitr-record") + 1]) == rec
    assert args[args.index("--shared-s3") + 1] == "s3://bkt/mo/data" and "--shared-s3-endpoint" in args
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert keys["MOBACKUP_SHARED_ACCESS_KEY_ID"] == keys["MOBACKUP_SHARED_SECRET_ACCESS_KEY"] == "mo-s3"
    staged = jobs.s3_backup_job(owner, spec, storage, spec.shared, spec.sql, step="stage",
                                defaults=jobs.OperatorDefaults(), pitr_record=rec)
    assert "--shared-s3" not in staged["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_scoped_restore_with_a_time_picks_among_the_live_servers_backups_or_fails_before_anything(
        kube: LeaseKube, monkeypatch: pytest.MonkeyPatch) -> None:
    """spec.scope with spec.pointInTime (k8s/scoped.py): the backup is chosen among the MOBackups whose
    source.sql is target.sql's endpoint; a time none of them holds fails before any Job or PVC."""
    def scoped(name: str, at: datetime, sql: dict[str, Any] = SQL, **spec: Any) -> dict[str, Any]:
        kube.add("MORestore", name, {"scope": {"tables": ["shop.b"]}, "target": {"sql": sql},
                                     "pointInTime": rfc(at), **spec})
        controller.reconcile_restore(controller.Ctx(cast(Kube, kube)), kube.get_cr("MORestore", NS, name))
        return kube.crs[("MORestore", name)]["status"]

    for name, at, sql, expect in (
            ("s-gap", NOW - timedelta(minutes=100), SQL, "in no backup's interval"),
            ("s-future", NOW + timedelta(hours=1), SQL, "is in the future"),
            ("s-other", NOW - timedelta(minutes=80), {**SQL, "host": "other"},
             "looked at the Completed MOBackups of the MatrixOne at other:6001")):
        st = scoped(name, at, sql)
        assert st["phase"] == "Failed" and st["reason"] == "PointInTimeNotRecoverable", st
        assert expect in st["message"], st["message"]
    assert kube.jobs == {} and not getattr(kube, "pvcs", {}), "a refused scoped restore made something"
    st = scoped("s-named", NOW - timedelta(minutes=80), backupName="cold-a")
    assert st["reason"] == "PointInTimeNotRecoverable" and "later than every backup's BACKUPTS" in st["message"], st
    # A time cold-b holds: chosen and recorded, then handed to the checks that read the repository and the
    # live server (test_e2e_scoped.py runs them for real; here they stop the pass).
    from mobackup.k8s import scoped as scoped_run

    checked: list[str] = []

    def stop_at_precheck(ctx: Any, ns: str, spec: Any, storage_spec: Any, backup_id: str, backup: Any) -> str:
        checked.append(backup_id)
        raise controller.Fail("Stopped", "stopped at the precheck")

    monkeypatch.setattr(scoped_run, "precheck", stop_at_precheck)
    st = scoped("s-ok", NOW - timedelta(minutes=80))
    assert st["pointInTime"]["backupName"] == "cold-b" and st["pointInTime"]["time"] == rfc(NOW - timedelta(
        minutes=80)), st
    assert st["reason"] == "Stopped" and checked == ["id-cold-b"], st
