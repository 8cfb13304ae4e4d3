"""Point-in-time recovery through the operator with the real MatrixOne (issue 19), in place: a cluster
PITR, then issue 19's incident (a writer's numbered transactions; at T an UPDATE, a DELETE and a dropped
table; churn with checkpoints and a global checkpoint); a cold (Stop) MOBackup with
spec.pointInTime.window that lengthens the PITR and records its interval; a MORestore with
pointInTime T minus one second and no backupName, onto the same volume and StatefulSet: the operator
picks the backup, restores the files, scales MatrixOne back, its PITR Job runs RESTORE CLUSTER FROM
PITR, then the SQL check. The exact state at T - 1 s is read back: db1 and db2 as before the
accident, the writer's rows an exact prefix with every transaction committed before that instant and
none begun after it. A refusal (a time in the future) fails before anything is touched. The other
refusals: test_pointintime_logic.py (in memory). The same in place for table data in S3, and the RPO of
a MOBackupSchedule `@every 1m` under a writer (each test starts its own MatrixOne)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from mo_cluster_e2e import S3MatrixOne
from mo_cluster_e2e import stop_mo as stop_statefulset
from mo_e2e import Env
from test_e2e_copies import jobs_run_these_sources
from test_e2e_matrixone import STS, real_mo, sql_ref  # noqa: F401  (real_mo: the fixture)

from cluster.kube_api import ApiError
from mo_server import PASSWORD, TXN_ROWS, Incident, SqlClient, Writer, checksums, create_db, wait_sql, writer_rows

TARGET = {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS}


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_restore_in_place_to_a_time_before_an_accident(
        env: Env, real_mo: Callable[..., SqlClient]) -> None:  # noqa: F811  (the imported fixture)
    jobs_run_these_sources(env)  # the agent's `pitr` and --pitr-record are this tree's
    mo = real_mo()
    clock = started = time.monotonic()  # after the wait for the machine's MatrixOne lock
    env.s3_storage()
    env.secret("mo-sql", {"password": PASSWORD})
    mo.sql("create pitr pc for cluster range 1 'h'")  # the user's own PITR: lengthened, never shortened
    incident = Incident(mo)
    t, before = incident.t, incident.before
    incident_seconds, clock = time.monotonic() - clock, time.monotonic()

    env.create("MOBackup", "cold", {"source": {"pvc": TARGET["pvc"], "workload": STS, "sql": sql_ref()},
                                    "storageRef": {"name": "s3"}, "consistency": "Stop",
                                    "pointInTime": {"window": "1d"}})
    st = env.wait_phase("MOBackup", "cold", "Completed", "Failed", timeout=300)["status"]
    assert st["phase"] == "Completed", st
    assert st["pointInTime"]["ensured"] == "lengthened pc (1 d)" and st["pointInTime"]["history"] is True, st
    start, end = (datetime.fromisoformat(st[k].replace("Z", "+00:00")) for k in ("recoverableFrom", "recoverableTo"))
    restore_at = t - timedelta(seconds=1)
    assert start < restore_at < t < end, (start, end, t)
    cond = {c["type"]: c for c in st["conditions"]}["PointInTimeRecoverable"]
    assert cond["status"] == "True" and st["recoverableTo"] in cond["message"], cond
    backup_seconds = time.monotonic() - clock
    env.wait_replicas_running(timeout=120)
    wait_sql(180)
    assert [(p[0], p[7], p[8]) for p in mo.sql("show pitr")] == [("pc", 1, "d")]

    # A time without a zone: refused by the schema (pattern), nothing created.
    try:
        env.create("MORestore", "no-zone", {"pointInTime": "2026-12-01T10:00:00", "target": TARGET,
                                            "sqlCheck": sql_ref()})
        raise AssertionError("the API server took a pointInTime without a zone")
    except ApiError as e:
        assert e.status == 422 and "pointInTime" in e.message, e.message
    # Refused before anything is touched: no Job, MatrixOne left running.
    env.create("MORestore", "future", {"pointInTime": rfc3339(datetime.now(UTC) + timedelta(hours=1)),
                                       "overwrite": True, "target": TARGET, "sqlCheck": sql_ref()})
    r = env.wait_phase("MORestore", "future", "Failed", "Completed", timeout=60)["status"]
    assert r["reason"] == "PointInTimeNotRecoverable" and "is in the future" in r["message"], r
    assert f"cold [{st['recoverableFrom'][:19]}" in r["message"], r["message"]
    assert "PointInTimeNotRecoverable" in env.event_reasons("future", {"PointInTimeNotRecoverable"})
    assert env.replicas()[0] == 1 and "jobName" not in r

    clock = time.monotonic()
    env.create("MORestore", "to-time", {"pointInTime": rfc3339(restore_at), "overwrite": True, "target": TARGET,
                                        "sqlCheck": {**sql_ref(), "timeoutSeconds": 180}})
    r = env.wait_phase("MORestore", "to-time", "Completed", "Failed", timeout=400)["status"]
    restore_seconds = time.monotonic() - clock
    assert r["phase"] == "Completed", r
    assert r["pointInTime"]["backupName"] == "cold" and r["pointInTime"]["pitr"] == "pc", r
    assert r["pointInTime"]["time"] == rfc3339(restore_at) and r["pointInTime"]["serverTime"], r
    assert r["backupID"] == st["backupID"] and "db1" in r["sqlCheck"], r
    print(f"\nPITR via the operator: incident {incident_seconds:.1f} s, cold backup {backup_seconds:.1f} s, restore "
          f"to a time {restore_seconds:.1f} s (RESTORE CLUSTER FROM PITR {r['pointInTime'].get('pitrSeconds')} s), "
          f"{time.monotonic() - started:.1f} s since MatrixOne answered")

    wait_sql(180)
    assert checksums(mo, ["db1", "db2"]) == before  # the accident and the churn undone, db2.t back
    count, max_id, txns = writer_rows(mo)
    assert count == max_id + 1 == txns * TXN_ROWS, (count, max_id, txns)
    committed, begun_after = incident.committed_before(restore_at), incident.first_begun_after(restore_at)
    assert txns >= committed and (begun_after is None or txns <= begun_after), (txns, committed, begun_after)
    mo.sql("insert into w.t values (-1, -1)")  # the restored server takes writes


def test_a_schedule_every_minute_keeps_the_recovery_point_within_a_minute(
        env: Env, real_mo: Callable[..., SqlClient]) -> None:  # noqa: F811  (the imported fixture)
    """The RPO of issue 19 in the suite (the long measurement: benchmarks/rpo_bench.py): a
    MOBackupSchedule `@every 1m` of Online backups with a PITR window (each takes the history too)
    while a writer commits throughout, for three runs. No run fails or is skipped; consecutive
    BACKUPTS are at most 60 s + one backup's duration apart; the newest backup, restored under
    another name, is an exact prefix of the writer's transactions that lost only those that returned
    after its BACKUPTS, so at most that gap. Prints each run's fixed costs."""
    from mobackup.engine.pitr import hlc_time

    jobs_run_these_sources(env)
    mo = real_mo()
    env.s3_storage()
    env.secret("mo-sql", {"password": PASSWORD})
    create_db(mo, "db1", 5000)
    mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
    runs = 3
    writer = Writer(pause=0.05).start()  # a trickle, throughout: the machine is shared
    try:
        # The first (full) run now rather than a minute after the schedule is made: the incrementals
        # then come at +1 and +2 minutes.
        env.create("MOBackupSchedule", "rpo", {
            "fullSchedule": "@every 1h", "incrementalSchedule": "@every 1m", "pointInTime": {"window": "1d"},
            "template": {"spec": {"source": {"pvc": TARGET["pvc"], "workload": STS, "sql": sql_ref()},
                                  "storageRef": {"name": "s3"}}}}, annotations={"mobackup.io/run-now": "Full"})

        def finished(o: dict[str, Any]) -> bool:
            done = [b for b in env.api.get(env.path("MOBackup"))["items"]
                    if (b.get("status") or {}).get("phase") in ("Completed", "Failed")]
            return len(done) >= runs

        env.wait("MOBackupSchedule", "rpo", finished, timeout=runs * 60 + 120, what=f"{runs} runs finished")
        stopped = datetime.now(UTC)
    finally:
        writer.stop()
    assert writer.errors == [], writer.errors
    env.api.merge_patch(env.path("MOBackupSchedule", "rpo"), {"spec": {"suspend": True}})
    backups = sorted((b for b in env.api.get(env.path("MOBackup"))["items"]
                      if (b.get("status") or {}).get("phase") in ("Completed", "Failed")),
                     key=lambda b: b["metadata"]["creationTimestamp"])[:runs]
    assert [b["status"]["phase"] for b in backups] == ["Completed"] * runs, [b["status"] for b in backups]
    sched = env.get("MOBackupSchedule", "rpo")["status"]
    assert sched.get("reason") not in ("MissedRun", "SkippedConcurrent"), sched
    assert [b["status"]["type"] for b in backups] == ["Full"] + ["Incremental"] * (runs - 1)
    repo = env.repository()
    summaries = [repo.load_summary(b["status"]["backupID"]) for b in backups]
    ts = [hlc_time(s.backup_ts) for s in summaries]
    took = [(status_time(b, "completionTime") - status_time(b, "startTime")).total_seconds() for b in backups]
    for b, s, duration in zip(backups, summaries, took, strict=True):
        scheduled = datetime.fromisoformat(b["metadata"]["annotations"]["mobackup.io/scheduled-at"]
                                           .replace("Z", "+00:00"))  # the manual run's: when it was asked for
        created, started = status_time(b, "creationTimestamp"), status_time(b, "startTime")
        engine = datetime.fromisoformat(s.started_at.replace("Z", "+00:00"))
        print(f"\n{b['metadata']['name']}: created +{(created - scheduled).total_seconds():.1f} s after its "
              f"time, Job +{(started - created).total_seconds():.1f} s, engine start "
              f"+{(engine - started).total_seconds():.1f} s, BACKUP {s.extra.get('matrixone_backup_seconds')} s, "
              f"store {s.duration_seconds - s.extra.get('matrixone_backup_seconds', 0):.1f} s, status "
              f"{duration - s.duration_seconds - (engine - started).total_seconds():.1f} s; {duration:.1f} s in all, "
              f"{s.new_bytes} B new, history {s.extra['pitr'].get('history_added', {}).get('files')} files")
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(ts)]
    print(f"gaps between BACKUPTS: {[round(g, 1) for g in gaps]} s")
    for gap, duration in zip(gaps, took[1:], strict=True):
        assert gap <= 60 + duration, (gaps, took)
    newest = summaries[-1]
    assert hlc_time(newest.backup_ts) == max(ts)

    stop_statefulset(env, "mo")
    env.cluster.make_pvc(env.ns, "mo-data-copy", size="5Gi")
    env.create("MORestore", "newest", {"backupName": backups[-1]["metadata"]["name"],
                                       "target": {"pvc": {"claimName": "mo-data-copy", "path": "mo-data"}}})
    r = env.wait_phase("MORestore", "newest", "Completed", "Failed", timeout=300)["status"]
    assert r["phase"] == "Completed", r
    copy = real_mo("mo-copy", "mo-data-copy")
    count, max_id, txns = writer_rows(copy)
    assert count == max_id + 1 == txns * TXN_ROWS, (count, max_id, txns)
    at = hlc_time(newest.backup_ts)
    returned_before = sum(1 for _, _, ended in writer.log if ended < at)
    begun_after = next((n for n, began, _ in writer.log if began > at), None)
    assert returned_before <= txns and (begun_after is None or txns <= begun_after), (txns, returned_before,
                                                                                        begun_after)
    lost = [ended for n, _, ended in writer.log if n >= txns]
    print(f"restored {txns} of {len(writer.log)} transactions; lost {len(lost)}, those that returned in the last "
          f"{(stopped - at).total_seconds():.1f} s (after BACKUPTS)")
    assert all(ended >= at for ended in lost)
    assert (stopped - at).total_seconds() <= 60 + max(took), (stopped, at, took)


def status_time(obj: dict[str, Any], key: str) -> datetime:
    text = obj["metadata"][key] if key == "creationTimestamp" else obj["status"][key]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_s3_resident_restore_in_place_to_a_time_before_an_accident(
        env: Env, s3_mo: Callable[..., S3MatrixOne]) -> None:
    """Table data in S3 (the suite's S3 server, MatrixOne as StatefulSet `mo`): Online MOBackups with
    spec.pointInTime.window take the history objects of the cluster's prefix (engine/pitr_history_s3.py);
    a MORestore with pointInTime T - 1 s and no backupName, into the same prefix with the StatefulSet as
    its workload: the objects back, MatrixOne scaled back, RESTORE CLUSTER FROM PITR, the SQL check;
    the exact state at T - 1 s."""
    jobs_run_these_sources(env)
    mo = s3_mo()
    env.s3_storage()
    env.secret("mo-sql", {"password": PASSWORD})
    env.secret("mo-s3", {"AWS_ACCESS_KEY_ID": env.s3.access_key, "AWS_SECRET_ACCESS_KEY": env.s3.secret_key})
    shared = {"s3": {"path": mo.path, "type": "minio", "endpoint": env.s3.endpoint, "region": env.s3.region,
                     "secretRef": {"name": "mo-s3"}}}
    source = {"sharedStorage": shared, "sql": sql_ref(), "name": "mo"}
    env.create("MOBackup", "base", {"source": source, "storageRef": {"name": "s3"}, "pointInTime": {"window": "1d"}})
    st = env.wait_phase("MOBackup", "base", "Completed", "Failed", timeout=300)["status"]
    assert st["phase"] == "Completed" and st["pointInTime"]["ensured"] == "created mobackup_mo (1 d)", st
    incident = Incident(mo)
    t, before = incident.t, incident.before
    env.create("MOBackup", "after", {"source": source, "storageRef": {"name": "s3"}, "type": "Incremental"})
    st = env.wait_phase("MOBackup", "after", "Completed", "Failed", timeout=300)["status"]
    assert st["phase"] == "Completed" and st["baseBackupID"], st
    restore_at = t - timedelta(seconds=1)
    start, end = (datetime.fromisoformat(st[k].replace("Z", "+00:00")) for k in ("recoverableFrom", "recoverableTo"))
    assert start < restore_at < end, (start, end, restore_at)
    assert {c["type"]: c["status"] for c in st["conditions"]}["PointInTimeRecoverable"] == "True", st
    added = env.repository().load_summary(st["backupID"]).extra["pitr"]["history_added"]
    assert added["files"] > 0, added

    clock = time.monotonic()
    env.create("MORestore", "to-time", {
        "pointInTime": rfc3339(restore_at), "overwrite": True, "sqlCheck": {**sql_ref(), "timeoutSeconds": 180},
        "target": {"sharedStorage": shared, "workload": STS, "logVolume": {"claimName": mo.claim, "path": "mo-data"}}})
    r = env.wait_phase("MORestore", "to-time", "Completed", "Failed", timeout=400)["status"]
    assert r["phase"] == "Completed", r
    assert r["pointInTime"]["backupName"] == "after" and r["pointInTime"]["pitr"] == "mobackup_mo", r
    print(f"\nS3 PITR via the operator: restore to a time {time.monotonic() - clock:.1f} s (RESTORE CLUSTER FROM "
          f"PITR {r['pointInTime'].get('pitrSeconds')} s); history {added}")
    wait_sql(180)
    assert checksums(mo, ["db1", "db2"]) == before
    count, max_id, txns = writer_rows(mo)
    assert count == max_id + 1 == txns * TXN_ROWS, (count, max_id, txns)
    committed, begun_after = incident.committed_before(restore_at), incident.first_begun_after(restore_at)
    assert txns >= committed and (begun_after is None or txns <= begun_after), (txns, committed, begun_after)
