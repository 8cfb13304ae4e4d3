"""MORestoreDrill on the test cluster with the real MatrixOne (`mo-service` v2.2.2) as the scratch
server: a Stop (cold) backup and an Online backup of the real server in a StatefulSet pod are drilled
into fresh scratch PVCs; the cold one's scratch pod runs under the source pod's host name (mo-0), the
online one's recorded catalog (row counts at BACKUPTS) is checked; a user check that does not match
fails with expected vs got; a backup that cannot be restored fails with the reason; the operator is
killed mid-drill and the next one finishes the drill; no Job, pod or PVC of a drill outlives it, and
the source's volume is left alone. The local node runs the pod's command as a process (images are
ignored), so the scratch MatrixOne's working directory is a host directory holding the stock
configuration, the scratch PVC mounted at its ./mo-data, as the chart's drill.matrixOne values do
with the MatrixOne image. MatrixOne's ports are fixed: the test holds the suite's lock throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mo_e2e import Env, OperatorProcess, free_port
from test_e2e_matrixone import STS, real_mo, sql_ref, stop_statefulset  # noqa: F401 - real_mo is a fixture

from cluster.prometheus import Prometheus
from mo_server import DEFAULT_VERSION, PASSWORD, SqlClient, create_db, wait_ports_free
from mobackup.k8s import status
from ship.test_alerts import rendered_rules

pytestmark = pytest.mark.cluster


# The chart's alert rules as Prometheus runs them here: the shipped expressions, rendered with test
# values that make the scenario take seconds (the defaults in brackets): thresholds of 10.8 s since
# the last backup [26 h], 8.64 s since the last passing drill [8 days] and 7.2 s of copy lag [6 h],
# a failure window of 15 s [1 h], and `for:` 2 s [10-15 min] (MOBackupOperatorDown keeps its 10 min:
# the operator is killed on purpose below). Prometheus scrapes and evaluates every second.
FAST_ALERTS = ("--set-json", "metrics.prometheusRule.staleBackupHours=0.003",
               "--set-json", "metrics.prometheusRule.staleDrillDays=0.0001",
               "--set-json", "metrics.prometheusRule.copyLagHours=0.002",
               "--set", "metrics.prometheusRule.failedBackupWindow=15s",
               *(arg for rule in ("staleBackup", "staleDrill", "storageUnavailable", "copyLagging")
                 for arg in ("--set", f"metrics.prometheusRule.for.{rule}=2s")))


def drill_operator(env: Env, mo_install: Callable[[str], Path], tmp_path: Path) -> OperatorProcess:
    home = mo_install(DEFAULT_VERSION)
    workdir = tmp_path / "mo-scratch-home"
    if not workdir.exists():
        shutil.copytree(home / "etc", workdir / "etc")
    # Jobs run the sources this test runs (the local node plays the image with the project's .venv).
    job_env = [{"name": "PYTHONPATH", "value": os.environ["PYTHONPATH"]}] if os.environ.get("PYTHONPATH") else []
    return OperatorProcess(env.cluster, [env.ns], tmp_path / f"operator-{time.monotonic_ns()}.log", extra_env={
        "MOBACKUP_DRILL_COMMAND": json.dumps([str(home / "mo-service")]),
        "MOBACKUP_DRILL_ARGS": json.dumps(["-launch", "etc/launch/launch.toml"]),
        "MOBACKUP_DRILL_WORKING_DIR": str(workdir), "MOBACKUP_DRILL_DATA_PATH": str(workdir / "mo-data"),
        "MOBACKUP_JOB_DEFAULTS": json.dumps({"env": job_env})})


def swap_operator(env: Env, new: OperatorProcess) -> None:
    env.op.kill(signal.SIGTERM)
    new.start()
    env.op = new


def scratch_objects(env: Env, drill: dict[str, Any]) -> list[str]:
    """The drill's Jobs, pods and PVCs still in the API (by its uid label)."""
    uid = drill["metadata"]["uid"]
    found = []
    for path, kind in ((f"/apis/batch/v1/namespaces/{env.ns}/jobs", "Job"),
                       (f"/api/v1/namespaces/{env.ns}/pods", "Pod"),
                       (f"/api/v1/namespaces/{env.ns}/persistentvolumeclaims", "PVC")):
        for item in env.api.get(path)["items"]:
            labels = item["metadata"].get("labels") or {}
            owners = [o.get("uid") for o in item["metadata"].get("ownerReferences") or []]
            if labels.get("mobackup.io/uid") == uid or uid in owners:
                found.append(f"{kind} {item['metadata']['name']}")
    if not found:  # pods of a Job carry the Job's labels; the Job's name is in status
        job = (drill.get("status") or {}).get("jobName")
        if job:
            found += [f"Pod {p['metadata']['name']}" for p in
                      env.api.get(f"/api/v1/namespaces/{env.ns}/pods", labelSelector=f"job-name={job}")["items"]]
    return found


def run_drill(env: Env, name: str, spec: dict[str, Any], timeout: float = 400) -> dict[str, Any]:
    env.create("MORestoreDrill", name, {"timeoutSeconds": 300, "sql": {"passwordSecretRef": {"name": "mo-sql"}},
                                        **spec})
    obj = env.wait_phase("MORestoreDrill", name, "Completed", "Failed", timeout=timeout)
    obj = env.wait("MORestoreDrill", name, lambda o: bool(o["status"].get("cleanedUp")), 90, "cleanedUp")
    deadline = time.monotonic() + 90
    while scratch_objects(env, obj):
        assert time.monotonic() < deadline, f"scratch objects outlived the drill: {scratch_objects(env, obj)}"
        time.sleep(0.5)
    wait_ports_free(90)  # the scratch MatrixOne is gone
    return obj


def test_restore_drills_on_the_cluster_with_the_real_matrixone(
        env: Env, real_mo: Callable[..., SqlClient],  # noqa: F811 - the fixture imported above
        mo_install: Callable[[str], Path], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    swap_operator(env, drill_operator(env, mo_install, tmp_path))
    # A real Prometheus scrapes the operator all along, with the chart's alert rules (FAST_ALERTS).
    prom = Prometheus(tmp_path / "prometheus", rendered_rules(*FAST_ALERTS))
    request.addfinalizer(prom.stop)
    prom.scrape([f"127.0.0.1:{env.op.metrics_port}"])
    mo = real_mo()
    env.s3_storage()
    # Causes of alerts, from the start (removed in step 3): a backup that fails, a copy target that
    # cannot be reached (the storage's backups wait for their copy).
    started = time.time()
    env.create("MOBackup", "no-storage", {"source": {"pvc": {"claimName": "mo-data"}}, "consistency": "None",
                                          "storageRef": {"name": "absent"}})
    env.create("MOBackupStorage", "offsite", {"s3": {
        "endpoint": "http://127.0.0.1:9", "bucket": env.s3.bucket, "prefix": f"{env.ns}/offsite",
        "region": env.s3.region, "pathStyle": True, "credentialsSecretRef": {"name": "s3-creds"}}})
    env.api.merge_patch(env.path("MOBackupStorage", "s3"), {"spec": {"copyTo": [{"name": "offsite"}]}})
    env.secret("mo-sql", {"password": PASSWORD})
    create_db(mo, "db1", 2000)
    create_db(mo, "db2", 3000)
    mo.sql("create view db2.v as select id from db2.t where id > 10")

    env.create("MOBackup", "mo-online", {"source": {"pvc": {"claimName": "mo-data", "path": "mo-data"},
                                                    "workload": STS, "sql": sql_ref()}, "storageRef": {"name": "s3"}})
    online = env.wait_phase("MOBackup", "mo-online", "Completed", "Failed", timeout=300)["status"]
    assert online["phase"] == "Completed", online
    env.create("MOBackup", "mo-stop", {"source": {"pvc": {"claimName": "mo-data", "path": "mo-data"},
                                                  "workload": STS, "sql": sql_ref()},
                                       "storageRef": {"name": "s3"}, "consistency": "Stop"})
    cold = env.wait_phase("MOBackup", "mo-stop", "Completed", "Failed", timeout=300)["status"]
    assert cold["phase"] == "Completed", cold
    env.wait_replicas_running(timeout=120)
    stop_statefulset(env, "mo")  # the scratch MatrixOne needs the machine's fixed ports
    source_pv = env.cluster.pv_root / env.ns / "mo-data"
    source_before = sorted(str(p.relative_to(source_pv)) for p in source_pv.rglob("*"))

    # 1. The cold backup, by name, with a user check: passes under the source pod's host name. The
    #    operator is killed while the drill runs; the next one finishes it.
    env.create("MORestoreDrill", "drill-stop", {
        "backupName": "mo-stop", "timeoutSeconds": 300, "sql": {"passwordSecretRef": {"name": "mo-sql"}},
        "checks": [{"query": "select count(*) from db1.t", "expect": "2000"}]})
    env.wait_phase("MORestoreDrill", "drill-stop", "Running", "Completed", "Failed", timeout=120)
    env.op.kill(signal.SIGKILL)
    time.sleep(3)
    env.op = drill_operator(env, mo_install, tmp_path)
    env.op.start()
    prom.scrape([f"127.0.0.1:{env.op.metrics_port}"])
    env.wait_phase("MORestoreDrill", "drill-stop", "Completed", "Failed", timeout=400)
    drill = run_drill_wait_only(env, "drill-stop")
    st = drill["status"]
    assert st["phase"] == "Completed", st
    assert st["hostname"] == "mo-0" and st["backupID"] == cold["backupID"] and st["moVersion"]
    checks = {c["name"]: c for c in st["checks"]}
    assert checks["query 1"] == {"name": "query 1", "ok": True, "detail": "select count(*) from db1.t",
                                 "expected": "2000", "got": "2000"}
    assert checks["restore"]["ok"] and checks["server answers"]["ok"]
    print(f"\ncluster drill of a Stop backup: restore {st.get('restoreSeconds')} s, start {st.get('startSeconds')} s, "
          f"checks {st.get('checkSeconds')} s, whole drill {st.get('duration')}")
    assert any(e["reason"] == "DrillPassed" for e in env.events("drill-stop"))

    # 2. The online backup as the newest of its source would be: its catalog is checked; a wrong
    #    expectation fails the drill with expected vs got.
    drill = run_drill(env, "drill-online", {
        "backupName": "mo-online", "checks": [{"query": "select count(*) from db1.t where id <= 10", "expect": "11"}]})
    st = drill["status"]
    assert st["phase"] == "Failed" and st["reason"] == "CheckFailed", st
    checks = {c["name"]: c for c in st["checks"]}
    assert checks["query 1"]["expected"] == "11" and checks["query 1"]["got"] == "10" and not checks["query 1"]["ok"]
    assert checks["rows db1.t"] == {"name": "rows db1.t", "ok": True, "expected": "2000", "got": "2000"}
    assert checks["rows db2.t"]["ok"] and checks["tables"]["ok"] and checks["databases"]["ok"]
    assert "expected '11', got '10'" in st["message"] and st.get("hostname") is None

    # 3. Each alert fires, and resolves once its cause is gone.
    alerts_fire_and_resolve(env, prom, started)

    # 4. A backup that cannot be restored: fails with the reason, no MatrixOne started.
    drill = run_drill(env, "drill-missing", {"backupID": "00000000-0000-4000-8000-000000000000",
                                             "storageRef": {"name": "s3"}})
    st = drill["status"]
    assert st["phase"] == "Failed" and st["reason"] == "RestoreFailed", st
    assert "00000000-0000-4000-8000-000000000000" in st["message"]

    # 5. A damaged blob (one bit of the cold backup's biggest file, flipped in the bucket): the restore
    #    fails the drill with the reason, before any MatrixOne starts.
    from mobackup.engine.repository import blob_key

    repo = env.repository()
    summary = repo.load_summary(cold["backupID"])
    victim = max((r for r in repo.entries(summary) if r.get("chunks")), key=lambda r: r["size"])
    key = blob_key(victim["chunks"][0])
    data = bytearray(repo.backend.read(key))
    data[len(data) // 2] ^= 0x01
    repo.backend.write(key, bytes(data))
    drill = run_drill(env, "drill-damaged", {"backupName": "mo-stop"})
    st = drill["status"]
    assert st["phase"] == "Failed" and st["reason"] == "RestoreFailed", st
    assert victim["chunks"][0][:16] in st["message"] or victim["path"] in st["message"], st["message"]

    metrics = env.op.metrics()
    assert f'mobackup_drill_failures_total{{namespace="{env.ns}"' in metrics
    check_alerts_and_dashboard(env, prom)
    # Drills never touched the source's volume (the StatefulSet stays as the test left it).
    assert sorted(str(p.relative_to(source_pv)) for p in source_pv.rglob("*")) == source_before
    assert env.replicas("mo")[0] == 0


def firing(env: Env, name: str) -> str:
    return f'ALERTS{{alertname="{name}", alertstate="firing", namespace="{env.ns}"}}'


def not_firing_at(env: Env, prom: Prometheus, name: str, when: float) -> None:
    """The alert was resolved at the unix time `when` (waited for if ahead): a stale-type alert fires
    again once its threshold passes anew, so its resolution is checked at a moment, not left to chance."""
    time.sleep(max(0.0, when + 2 - time.time()))  # that evaluation is done and stored
    assert not prom.query(firing(env, name), at=when), f"{name} still firing at {when}"


def alerts_fire_and_resolve(env: Env, prom: Prometheus, started: float) -> None:
    """Each alert seen firing in the real Prometheus, then its cause removed and the alert resolved:
    MOBackupFailed (the failed MOBackup; it resolves when the window passes without a failure),
    MOBackupStorageUnavailable and MOBackupCopyLagging (the copy target made reachable: copies
    catch up), MOBackupStale (a new backup of the source), MORestoreDrillStale (a passing drill) and
    MORestoreDrillFailed (the window passes without a failed drill)."""
    began = time.monotonic()
    assert (env.get("MOBackup", "no-storage").get("status") or {}).get("phase") == "Failed"
    assert prom.seen(firing(env, "MOBackupFailed"), started)
    prom.wait_gone(firing(env, "MOBackupFailed"), 20)
    # The failed drill's alert fires only for failedBackupWindow (15 s) after the failure: looked for
    # over the whole run, as the failed backup's, so the waits for the others cannot outlast it.
    deadline = time.monotonic() + 40
    while not prom.seen(firing(env, "MORestoreDrillFailed"), started):
        assert time.monotonic() < deadline, "MORestoreDrillFailed never fired for the failed drill"
        time.sleep(1)
    for name in ("MOBackupStale", "MOBackupStorageUnavailable", "MOBackupCopyLagging",
                 "MORestoreDrillStale"):  # each has had time to fire: lagging waits for a copy pass
        prom.wait_for(firing(env, name), 40)
    env.api.merge_patch(env.path("MOBackupStorage", "offsite"), {"spec": {"s3": {"endpoint": env.s3.endpoint}}})
    env.create("MOBackup", "mo-again", {"source": {"pvc": {"claimName": "mo-data", "path": "mo-data"}},
                                        "consistency": "None", "storageRef": {"name": "s3"}})
    again = env.wait_phase("MOBackup", "mo-again", "Completed", "Failed", timeout=120)["status"]
    assert again["phase"] == "Completed", again
    # 10.8 s after it, the source is stale again: resolved 6 s after its completion.
    not_firing_at(env, prom, "MOBackupStale", status.parse_iso(again["completionTime"]).timestamp() + 6)
    drill = run_drill(env, "drill-again", {"backupName": "mo-online"})["status"]
    assert drill["phase"] == "Completed", drill
    not_firing_at(env, prom, "MORestoreDrillStale", status.parse_iso(drill["completionTime"]).timestamp() + 5)
    prom.wait_gone(firing(env, "MORestoreDrillFailed"), 20)
    prom.wait_gone(firing(env, "MOBackupStorageUnavailable"), 30)
    prom.wait_gone(firing(env, "MOBackupCopyLagging"), 60)
    offsite = env.get("MOBackupStorage", "s3")["status"]["copies"]
    assert offsite == [{"storage": "offsite", "copied": 3, "pending": 0}], offsite
    print(f"\nalerts fired and resolved in {time.monotonic() - began:.1f} s (a backup and a drill included)")


def check_alerts_and_dashboard(env: Env, prom: Prometheus) -> None:
    """What the real Prometheus made of the last failures, and every query of the chart's Grafana
    dashboard returns series."""
    alerts = prom.wait_for(firing(env, "MORestoreDrillFailed"), 30)  # drill-missing, drill-damaged
    assert {a["metric"]["namespace"] for a in alerts} == {env.ns}, alerts
    assert not prom.query('ALERTS{alertname="MOBackupOperatorDown"}')
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "charts" / "mo-backup-operator" / "dashboards"
                            / "mobackup.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(queries) >= 12
    for expr in queries:  # the namespace variable set to All; a just-set metric waits for its scrape
        prom.wait_for(expr.replace("$namespace", ".*"), 20)


def run_drill_wait_only(env: Env, name: str, mo_ports: bool = True) -> dict[str, Any]:
    obj = env.wait("MORestoreDrill", name, lambda o: bool((o.get("status") or {}).get("cleanedUp")), 90, "cleanedUp")
    deadline = time.monotonic() + 90
    while scratch_objects(env, obj):
        assert time.monotonic() < deadline, f"scratch objects outlived the drill: {scratch_objects(env, obj)}"
        time.sleep(0.5)
    if mo_ports:
        wait_ports_free(90)  # the scratch MatrixOne is gone
    return obj


def test_a_schedule_drills_every_nth_backup_keeps_its_history_and_a_silent_server_fails_in_time(
        env: Env, tmp_path: Path) -> None:
    """MOBackupSchedule.spec.drill with the MatrixOne stand-in's backups: the first Completed backup
    and then every 2nd get a MORestoreDrill; the scratch "MatrixOne" here never answers (sleep), so
    each drill fails when timeoutSeconds passes, naming the reason, with its scratch objects gone;
    failedDrillsHistoryLimit 1 keeps only the newest failed drill."""
    # The checker asks a port of this test's own, never MatrixOne's 6001: no other test's server can
    # answer for the silent one (and the test needs no MatrixOne lock).
    port = free_port()
    swap_operator(env, OperatorProcess(env.cluster, [env.ns], tmp_path / "operator-sched.log", extra_env={
        "MOBACKUP_DRILL_COMMAND": json.dumps(["sleep", "600"]), "MOBACKUP_DRILL_ARGS": "[]",
        "MOBACKUP_DRILL_WORKING_DIR": "/tmp", "MOBACKUP_DRILL_DATA_PATH": str(tmp_path / "never-read")}))
    env.stand_in(objects=10)
    env.s3_storage()
    env.create("MOBackupSchedule", "nightly", {
        "fullSchedule": "@every 1h", "incrementalSchedule": "@every 8s",
        "template": {"spec": {"source": {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS},
                              "storageRef": {"name": "s3"}}},
        "drill": {"everyNthBackup": 2, "failedDrillsHistoryLimit": 1,
                  "template": {"timeoutSeconds": 30, "scratch": {"size": "1Gi"}, "sql": {"port": port}}}})

    def completed() -> list[str]:
        items = env.api.get(env.path("MOBackup"), labelSelector="mobackup.io/schedule=nightly")["items"]
        done = [b for b in items if (b.get("status") or {}).get("phase") == "Completed"]
        return [b["metadata"]["name"] for b in sorted(done, key=lambda b: b["status"]["completionTime"])]

    def drills() -> dict[str, dict[str, Any]]:
        items = env.api.get(env.path("MORestoreDrill"), labelSelector="mobackup.io/schedule=nightly")["items"]
        return {d["metadata"]["annotations"]["mobackup.io/drill-of"]: d for d in items}

    deadline = time.monotonic() + 180
    while len(completed()) < 3:
        assert time.monotonic() < deadline, f"backups: {completed()}\n{env.op.log_tail()}"
        time.sleep(0.5)
    env.api.merge_patch(env.path("MOBackupSchedule", "nightly"), {"spec": {"suspend": True}})
    first, second, third = completed()[:3]
    seen = drills()
    assert first in seen and second not in seen, (first, second, sorted(seen))
    deadline = time.monotonic() + 120
    while third not in drills():
        assert time.monotonic() < deadline, f"no drill of {third}: {sorted(drills())}\n{env.op.log_tail()}"
        time.sleep(0.5)
    third_drill = drills()[third]
    assert third_drill["metadata"]["ownerReferences"][0]["kind"] == "MOBackupSchedule"
    assert third_drill["spec"]["backupName"] == third and third_drill["spec"]["timeoutSeconds"] == 30
    st = run_drill_wait_only(env, third_drill["metadata"]["name"], mo_ports=False)["status"]
    assert st["phase"] == "Failed" and st["reason"] == "CheckFailed", st
    assert f"did not answer SQL on port {port}" in st["message"] and "startSeconds" not in st
    assert st["hostname"] == "mo-0"  # a Stop backup of StatefulSet mo
    # History: only the newest failed drill is kept.
    deadline = time.monotonic() + 120
    while first in drills():
        assert time.monotonic() < deadline, f"failed drill history not applied: {sorted(drills())}"
        time.sleep(0.5)
    assert list(drills()) == [third]
