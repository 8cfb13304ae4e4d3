"""Operator benchmarks (issue 4) on the real test control plane (tests/cluster) and its S3 server.

1. Reaction time (median of N): MOBackup created -> its Job exists; Job complete -> status Completed.
   Measured client side from watch-event arrival times (API timestamps have 1 s resolution).
2. Footprint: the operator's resident memory and idle CPU with 0/100/250/500 MOBackups (terminal
   state) + 50 MOBackupSchedules present.
3. Stop-mode downtime of the workload (its pod gone -> a new pod running) versus the copy alone
   (the agent's copyDurationSeconds): what the operator adds.

Run: .venv/bin/python benchmarks/operator_bench.py [--runs 20] [--out benchmarks/results/operator.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "operator")]

import yaml  # noqa: E402
from mo_e2e import Env, OperatorProcess  # noqa: E402

from cluster.kube_cluster import start_cluster  # noqa: E402
from cluster.rbac import render_chart  # noqa: E402

G = "/apis/mobackup.io/v1alpha1"


class Watcher(threading.Thread):
    """Records the arrival time of watch events: (kind, name) -> first time `pred` held."""

    def __init__(self, env: Env, path: str, preds: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.env, self.path, self.preds = env, path, preds
        self.seen: dict[tuple[str, str], float] = {}
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            rv = self.env.api.get(self.path)["metadata"]["resourceVersion"]
            try:
                for ev in self.env.api.watch(self.path, rv, timeout_seconds=60):
                    t = time.monotonic()
                    obj = ev.get("object") or {}
                    name = (obj.get("metadata") or {}).get("name")
                    for key, pred in self.preds.items():
                        if name and (key, name) not in self.seen and pred(ev["type"], obj):
                            self.seen[(key, name)] = t
                    if self.stop:
                        return
            except Exception:
                time.sleep(0.1)


def setup(cluster: Any, ns_prefix: str, tmp: Path) -> Env:
    ns = cluster.create_namespace(ns_prefix)
    docs = render_chart({"jobServiceAccount.namespaces": [ns]})
    cluster.apply([d for d in docs if d.get("kind") in ("ServiceAccount", "Role", "RoleBinding")
                   and d["metadata"].get("namespace") == ns])
    op = OperatorProcess(cluster, [ns], tmp / f"operator-{ns}.log", resync_seconds="3")  # the default
    return Env(cluster, ns, op, cluster.s3, tmp)


def reaction(cluster: Any, tmp: Path, runs: int) -> dict[str, Any]:
    env = setup(cluster, "bench-react", tmp)
    env.op.start()
    env.s3_storage()
    host = cluster.make_pvc(env.ns, "mo-data")
    from mobackup.sample import generate_mo_data

    generate_mo_data(host / "mo-data", seed=1, objects=5)
    jobs = Watcher(env, f"/apis/batch/v1/namespaces/{env.ns}/jobs", {
        "created": lambda t, o: t == "ADDED",
        "complete": lambda t, o: any(c["type"] == "Complete" and c["status"] == "True"
                                     for c in (o.get("status") or {}).get("conditions") or [])})
    backups = Watcher(env, env.path("MOBackup"), {
        "completed": lambda t, o: (o.get("status") or {}).get("phase") == "Completed"})
    jobs.start()
    backups.start()
    time.sleep(1)
    to_job, to_status = [], []
    for i in range(runs):
        name = f"r{i}"
        t0 = time.monotonic()
        env.create("MOBackup", name, {"source": {"pvc": {"claimName": "mo-data"}}, "consistency": "None",
                                      "storageRef": {"name": "s3"}})
        st = env.wait_phase("MOBackup", name, "Completed", "Failed", timeout=120)["status"]
        assert st["phase"] == "Completed", st
        time.sleep(0.5)
        job = st["jobName"]
        to_job.append(jobs.seen[("created", job)] - t0)
        to_status.append(backups.seen[("completed", name)] - jobs.seen[("complete", job)])
    jobs.stop = backups.stop = True
    env.op.kill(signal.SIGTERM)
    return {"runs": runs,
            "create_to_job_s": {"median": statistics.median(to_job), "max": max(to_job), "min": min(to_job)},
            "job_complete_to_status_s": {"median": statistics.median(to_status), "max": max(to_status),
                                         "min": min(to_status)}}


def _proc_sample(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def footprint(cluster: Any, tmp: Path, steps: list[int], schedules: int, idle_seconds: float) -> dict[str, Any]:
    env = setup(cluster, "bench-foot", tmp)
    spec = {"source": {"pvc": {"claimName": "mo-data"}, "workload": {"kind": "StatefulSet", "name": "mo"}},
            "storageRef": {"name": "s3"}}
    env.s3_storage(wait=None)
    for i in range(schedules):
        env.create("MOBackupSchedule", f"s{i}", {"fullSchedule": "0 0 1 1 *", "incrementalSchedule": "0 0 1 1 *",
                                                 "retention": {"keepLast": 7}, "template": {"spec": spec}})
    results = []
    made = 0
    for n in steps:
        # Present, finished backups (status written as the operator would, while it is stopped).
        while made < n:
            name = f"b{made:04d}"
            env.create("MOBackup", name, spec)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            env.api.merge_patch(env.path("MOBackup", name) + "/status", {"status": {
                "phase": "Completed", "reason": "BackupCompleted", "message": "bench", "type": "Full",
                "backupID": f"00000000-0000-4000-8000-{made:012d}", "size": "65.0 MiB", "sizeBytes": 68157440,
                "backupTS": "1715745404915410000-1", "duration": "8.6s", "startTime": now, "completionTime": now,
                "source": f"{env.ns}/mo-data", "storage": "s3"}})
            made += 1
        env.op.start()
        try:
            time.sleep(10)  # initial listing and the first schedule passes
            rss0, cpu0 = _proc_sample(env.op.proc.pid)  # type: ignore[union-attr]
            time.sleep(idle_seconds)
            rss1, cpu1 = _proc_sample(env.op.proc.pid)  # type: ignore[union-attr]
        finally:
            env.op.kill(signal.SIGTERM)
        results.append({"mobackups": n, "schedules": schedules, "rss_mib": round(max(rss0, rss1), 1),
                        "idle_cpu_percent_of_core": round(100 * (cpu1 - cpu0) / idle_seconds, 2)})
        print(json.dumps(results[-1]), flush=True)
    return {"idle_seconds": idle_seconds, "steps": results}


def stop_downtime(cluster: Any, tmp: Path, runs: int, objects: int) -> dict[str, Any]:
    """Downtime = the workload's pod DELETED -> a new pod Running (watch arrival times), split into
    what the operator does (pods gone -> Job created; Job complete -> StatefulSet scaled back) and
    what the cluster does (Job pod start + agent + copy; the workload's pod start)."""
    env = setup(cluster, "bench-stop", tmp)
    env.op.start()
    env.stand_in(objects=objects)
    env.s3_storage()
    events: list[tuple[float, str, str, str, Any]] = []  # (t, what, type, uid, detail)

    def record_pod(t: str, o: dict[str, Any]) -> bool:
        if (o["metadata"].get("labels") or {}).get("app") == "mo":
            running = (o.get("status") or {}).get("phase") == "Running" and not o["metadata"].get("deletionTimestamp")
            events.append((time.monotonic(), "pod", t, o["metadata"]["uid"], running))
        return False

    def record_job(t: str, o: dict[str, Any]) -> bool:
        done = any(c["type"] == "Complete" and c["status"] == "True"
                   for c in (o.get("status") or {}).get("conditions") or [])
        events.append((time.monotonic(), "job", t, o["metadata"]["name"], done))
        return False

    def record_sts(t: str, o: dict[str, Any]) -> bool:
        events.append((time.monotonic(), "sts", t, o["metadata"]["name"], o["spec"].get("replicas")))
        return False

    watchers = [Watcher(env, f"/api/v1/namespaces/{env.ns}/pods", {"x": record_pod}),
                Watcher(env, f"/apis/batch/v1/namespaces/{env.ns}/jobs", {"x": record_job}),
                Watcher(env, f"/apis/apps/v1/namespaces/{env.ns}/statefulsets", {"x": record_sts})]
    for w in watchers:
        w.start()
    time.sleep(1)
    out = []
    for i in range(runs):
        events.clear()
        name = f"stop-{i}"
        [old] = [p for p in env.api.get(f"/api/v1/namespaces/{env.ns}/pods", labelSelector="app=mo")["items"]
                 if not p["metadata"].get("deletionTimestamp")]
        old_uid = old["metadata"]["uid"]
        env.create("MOBackup", name, {"source": {"pvc": {"claimName": "mo-data"},
                                                 "workload": {"kind": "StatefulSet", "name": "mo"}},
                                      "storageRef": {"name": "s3"}, "type": "Full"})
        st = env.wait_phase("MOBackup", name, "Completed", "Failed", timeout=300)["status"]
        assert st["phase"] == "Completed", st
        env.wait_replicas_running()
        time.sleep(0.5)
        job = st["jobName"]
        gone = next(t for t, w, typ, uid, _ in events if w == "pod" and uid == old_uid and typ == "DELETED")
        created = next(t for t, w, typ, n, _ in events if w == "job" and n == job and typ == "ADDED")
        complete = next(t for t, w, _, n, done in events if w == "job" and n == job and done)
        scaled = next(t for t, w, _, _, r in events if w == "sts" and r == 1 and t >= complete)
        back = next(t for t, w, _, uid, running in events if w == "pod" and uid != old_uid and running)
        out.append({"downtime_s": round(back - gone, 3), "copy_s": st["copyDurationSeconds"],
                    "operator_s": round((created - gone) + (scaled - complete), 3),
                    "job_pod_and_agent_s": round(complete - created, 3),
                    "workload_restart_s": round(back - scaled, 3),
                    "size": st["size"], "files": st["fileCount"]})
        print(json.dumps(out[-1]), flush=True)
    for w in watchers:
        w.stop = True
    env.op.kill(signal.SIGTERM)
    med = lambda k: statistics.median(r[k] for r in out)  # noqa: E731
    return {"runs": out, **{f"median_{k}": med(k) for k in ("downtime_s", "copy_s", "operator_s",
                                                             "job_pod_and_agent_s", "workload_restart_s")}}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--steps", default="0,100,250,500")
    p.add_argument("--schedules", type=int, default=50)
    p.add_argument("--idle-seconds", type=float, default=60)
    p.add_argument("--stop-runs", type=int, default=3)
    p.add_argument("--objects", type=int, default=200, help="objects of the stand-in's mo-data (Stop mode)")
    p.add_argument("--only", default="reaction,footprint,stop")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "operator.json")
    p.add_argument("--fresh", action="store_true", help="do not keep other phases' results from --out")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mobackup-opbench-"))
    cluster = start_cluster(tmp / "cluster")
    try:
        for f in sorted((REPO / "crds").glob("*.yaml")):
            cluster.apply(yaml.safe_load(f.read_text()))
        time.sleep(2)
        result: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "machine": f"{os.cpu_count()} cores"}
        only = args.only.split(",")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.exists() and not args.fresh:
            result.update({k: v for k, v in json.loads(args.out.read_text()).items() if k not in result})
        if "reaction" in only:
            result["reaction"] = reaction(cluster, tmp, args.runs)
            print(json.dumps(result["reaction"]), flush=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        if "footprint" in only:
            result["footprint"] = footprint(cluster, tmp, [int(s) for s in args.steps.split(",")], args.schedules,
                                            args.idle_seconds)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        if "stop" in only:
            result["stop_mode"] = stop_downtime(cluster, tmp, args.stop_runs, args.objects)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
