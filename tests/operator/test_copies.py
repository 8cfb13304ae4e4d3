"""MOBackupStorage.spec.copyTo (issue 23): one copy pass over a source storage against an in-memory
API (test_status_trust.FakeKube). The copy Job gets both storages' settings only as env from opted-in
Secrets (the target's under MOBACKUP_TO_*), one Job runs at a time per target, a copy is recorded only
when the Job's report names the backup and the target repository (when the operator can open it)
lists it, and a storage never copies into itself. End to end with the real API server and S3:
test_e2e_copies.py."""

from __future__ import annotations

import copy
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from test_status_trust import NS, FakeKube, ctx_of, finished_job, reasons

from mobackup.k8s import agent, controller, copies, jobs, status
from mobackup.k8s import storage as storage_mod
from mobackup.k8s.kube import NotFound

SOURCE_SPEC = {"s3": {"bucket": "bk", "prefix": "main", "credentialsSecretRef": {"name": "creds"}},
               "encryption": {"keySecretRef": {"name": "creds", "key": "AWS_ACCESS_KEY_ID"}},
               "copyTo": [{"name": "far"}]}
FAR_SPEC = {"pvc": {"claimName": "far-disk"}, "encryption": {"keySecretRef": {"name": "far-key"}},
            "compression": "none"}


class CopyKube(FakeKube):
    """With PVCs and a second, opted-in Secret (the target's key) or one not opted in."""

    def __init__(self, opted_in: bool = True) -> None:
        super().__init__()
        self.opted_in = opted_in

    def get_pvc(self, ns: str, name: str) -> dict[str, Any]:
        if name != "far-disk":
            raise NotFound(name)
        return {"metadata": {"name": name}, "status": {"phase": "Bound"}}

    def get_secret(self, ns: str, name: str) -> dict[str, Any]:
        if name == "far-key":
            labels = {"mobackup.io/credentials": "true"} if self.opted_in else {}
            return {"metadata": {"name": name, "labels": labels}, "data": {"key": "a2V5"}}
        return super().get_secret(ns, name)


def completed(kube: FakeKube, name: str, backup_id: str, minutes_ago: int) -> None:
    done = status.iso(status.now() - timedelta(minutes=minutes_ago))
    kube.add("MOBackup", name, {"source": {"pvc": {"claimName": "mo-data"}}, "storageRef": {"name": "main"}},
             {"phase": "Completed", "backupID": backup_id, "completionTime": done, "source": "db/mo",
              "backupTS": "1-0"}, annotations={controller.A_BACKUP_ID: backup_id})


@pytest.fixture
def kube() -> CopyKube:
    k = CopyKube()
    k.add("MOBackupStorage", "main", SOURCE_SPEC, {"phase": "Available"})
    k.add("MOBackupStorage", "far", FAR_SPEC, {"phase": "Available"})
    completed(k, "b-old", "id-old", 60)
    completed(k, "b-new", "id-new", 10)
    return k


def copy_pass(kube: FakeKube, ctx: controller.Ctx | None = None) -> controller.Ctx:
    ctx = ctx or ctx_of(kube)
    copies.reconcile_copies(ctx, kube.get_cr("MOBackupStorage", NS, "main"))
    return ctx


def copy_job_of(name: str) -> str:
    return jobs.copy_job_name(controller.owner_of({"kind": "MOBackup", "metadata": {
        "name": name, "namespace": NS, "uid": f"uid-{name}"}}), "far")


def storage_status(kube: FakeKube) -> dict[str, Any]:
    return kube.crs[("MOBackupStorage", "main")]["status"]


def test_the_oldest_backup_is_copied_first_by_a_job_with_both_settings_from_secrets(kube: CopyKube) -> None:
    ctx = copy_pass(kube)
    assert list(kube.jobs) == [copy_job_of("b-old")]  # one at a time per target, oldest first
    job = kube.jobs[copy_job_of("b-old")]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][-2:] == ["agent", "copy"]
    args = container["args"]
    assert args[args.index("--repo") + 1] == "s3://bk/main" and args[args.index("--to") + 1] == "/repo-to/mobackup"
    assert args[args.index("--backup-id") + 1] == "id-old" and args[args.index("--compression") + 1] == "none"
    env = {e["name"]: e for e in container["env"]}
    assert env["MOBACKUP_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": "AWS_ACCESS_KEY_ID"}
    assert env["MOBACKUP_TO_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "far-key", "key": "key"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "creds"
    assert not [e for e in container["env"] if "value" in e and e["name"].endswith(("KEY", "KEY_ID"))]
    assert {"name": "repository-to", "persistentVolumeClaim": {"claimName": "far-disk"}} in pod["volumes"]
    assert pod["automountServiceAccountToken"] is False
    assert job["metadata"]["ownerReferences"][0]["name"] == "b-old"
    assert job["metadata"]["labels"][copies.L_COPY_SOURCE] == "main"
    (entry,) = storage_status(kube)["copies"]
    assert {k: entry[k] for k in ("storage", "copied", "pending")} == {"storage": "far", "copied": 0, "pending": 2}
    lag = ctx.metrics.get("mobackup_copy_lag_seconds", namespace=NS, storage="main", target="far")
    assert lag is not None and 3500 < lag < 3700
    copy_pass(kube, ctx)  # the Job still runs: nothing more is started
    assert list(kube.jobs) == [copy_job_of("b-old")]


def report(backup_id: str, **extra: Any) -> dict[str, Any]:
    return {"ok": True, "action": "copy", "result": {"backup_id": backup_id, "copied": [backup_id], "present": [],
                                                     "stored_bytes": 10, **extra}}


def test_a_reported_copy_is_recorded_then_the_next_backup_follows(kube: CopyKube) -> None:
    ctx = copy_pass(kube)
    finished_job(kube, copy_job_of("b-old"), True, report("id-old"))
    copy_pass(kube, ctx)
    old = kube.crs[("MOBackup", "b-old")]["status"]
    (record,) = old["copies"]
    assert (record["storage"], record["backupID"], record["location"]) == ("far", "id-old", "pvc://far-disk/mobackup")
    assert "Copied" in reasons(kube) and copy_job_of("b-old") in kube.deleted_jobs
    assert list(kube.jobs) == [copy_job_of("b-new")]
    finished_job(kube, copy_job_of("b-new"), True, report("id-new"))
    copy_pass(kube, ctx)
    copy_pass(kube, ctx)
    assert kube.jobs == {}
    (entry,) = storage_status(kube)["copies"]
    assert (entry["copied"], entry["pending"], entry.get("oldestPending")) == (2, 0, None)
    assert ctx.metrics.get("mobackup_copy_lag_seconds", namespace=NS, storage="main", target="far") == 0
    assert ctx.metrics.get("mobackup_successes_total", kind="Copy", namespace=NS) == 2


@pytest.mark.parametrize("result", [
    report("id-other"),  # another backup
    {"ok": True, "action": "copy", "result": {"backup_id": "id-old", "copied": [], "present": []}},
    {"ok": True, "action": "backup", "result": {"backup_id": "id-old", "copied": ["id-old"]}},
    {"ok": False, "action": "copy", "reason": "CorruptDataError", "error": "blob x damaged"},
])
def test_a_report_that_does_not_show_the_copy_records_a_failure_and_retries_later(
        kube: CopyKube, result: dict[str, Any]) -> None:
    ctx = copy_pass(kube)
    finished_job(kube, copy_job_of("b-old"), result["ok"], result)
    copy_pass(kube, ctx)
    old = kube.crs[("MOBackup", "b-old")]["status"]
    assert not old.get("copies")
    (failure,) = old["copyFailures"]
    assert failure["storage"] == "far" and failure["attempts"] == 1
    assert "CopyFailed" in reasons(kube) and copy_job_of("b-old") in kube.deleted_jobs
    # The newer backup goes ahead meanwhile; the failed one waits RETRY_SECONDS.
    assert list(kube.jobs) == [copy_job_of("b-new")]
    kube.jobs.clear()
    copy_pass(kube, ctx)
    assert list(kube.jobs) == [copy_job_of("b-new")]
    kube.jobs.clear()
    failure["time"] = status.iso(status.now() - timedelta(seconds=copies.RETRY_SECONDS + 1))
    copy_pass(kube, ctx)
    assert list(kube.jobs) == [copy_job_of("b-old")]


def test_a_copy_the_target_repository_does_not_show_is_not_recorded(kube: CopyKube,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the operator can open the target, the Job's word is checked there."""
    listed = {"id-old": SimpleNamespace(source="another/source", backup_ts="1-0")}

    class Target:
        def load_summary(self, backup_id: str) -> Any:
            from mobackup.engine.errors import BackupNotFound
            if backup_id not in listed:
                raise BackupNotFound(backup_id)
            return listed[backup_id]

    monkeypatch.setattr(storage_mod, "open_repo", lambda *a, **k: Target())
    ctx = copy_pass(kube)
    finished_job(kube, copy_job_of("b-old"), True, report("id-old"))
    copy_pass(kube, ctx)
    (failure,) = kube.crs[("MOBackup", "b-old")]["status"]["copyFailures"]
    assert failure["reason"] == "CopyNotConfirmed" and "another/source" in failure["message"]
    listed["id-old"] = SimpleNamespace(source="db/mo", backup_ts="1-0")
    kube.jobs.clear()
    failure["time"] = status.iso(status.now() - timedelta(seconds=copies.RETRY_SECONDS + 1))
    copy_pass(kube, ctx)
    finished_job(kube, copy_job_of("b-old"), True, report("id-old"))
    copy_pass(kube, ctx)
    assert kube.crs[("MOBackup", "b-old")]["status"]["copies"][0]["backupID"] == "id-old"


@pytest.mark.parametrize(("target", "reason"), [
    ("main", "StorageOverlap"),  # itself
    ("inside", "StorageOverlap"),  # a prefix inside its repository
    ("missing", "TargetNotFound"),
    ("down", "TargetUnavailable"),
    ("keyless", "InvalidTarget"),  # the source's keys, in the Job, would reach its endpoint
])
def test_targets_that_cannot_take_a_copy(kube: CopyKube, target: str, reason: str) -> None:
    kube.add("MOBackupStorage", "inside", {"s3": {"bucket": "bk", "prefix": "main/sub",
                                                   "credentialsSecretRef": {"name": "creds"}}}, {"phase": "Available"})
    kube.add("MOBackupStorage", "keyless", {"s3": {"bucket": "elsewhere", "endpoint": "http://other.example:9000"}},
             {"phase": "Available"})
    kube.add("MOBackupStorage", "down", FAR_SPEC, {"phase": "Unavailable", "message": "PVC lost"})
    kube.crs[("MOBackupStorage", "main")]["spec"] = {**SOURCE_SPEC, "copyTo": [{"name": target}]}
    copy_pass(kube)
    assert kube.jobs == {}
    (entry,) = storage_status(kube)["copies"]
    assert entry["reason"] == reason and entry["pending"] == 2, entry
    assert [e["reason"] for e in kube.events if e["type"] == "Warning"] == [reason]
    copy_pass(kube)  # the same problem: no second Event
    assert [e["reason"] for e in kube.events if e["type"] == "Warning"] == [reason]


def test_a_target_whose_key_secret_is_not_opted_in_gets_no_job() -> None:
    kube = CopyKube(opted_in=False)
    kube.add("MOBackupStorage", "main", SOURCE_SPEC, {"phase": "Available"})
    kube.add("MOBackupStorage", "far", FAR_SPEC, {"phase": "Available"})
    completed(kube, "b-old", "id-old", 60)
    copy_pass(kube)
    assert kube.jobs == {}
    assert storage_status(kube)["copies"][0]["reason"] == "SecretNotOptedIn"


def test_a_patched_backup_id_is_not_copied(kube: CopyKube) -> None:
    """status.backupID is not the ID the operator recorded in metadata: left out."""
    kube.crs[("MOBackup", "b-old")]["status"]["backupID"] = "id-forged"
    copy_pass(kube)
    assert list(kube.jobs) == [copy_job_of("b-new")]
    assert storage_status(kube)["copies"][0]["pending"] == 1


def test_a_target_taken_out_of_copy_to_leaves_no_lag_behind(kube: CopyKube) -> None:
    ctx = copy_pass(kube)
    assert ctx.metrics.get("mobackup_copy_lag_seconds", namespace=NS, storage="main", target="far")
    kube.crs[("MOBackupStorage", "main")]["spec"] = {k: v for k, v in SOURCE_SPEC.items() if k != "copyTo"}
    copy_pass(kube, ctx)
    assert ctx.metrics.get("mobackup_copy_lag_seconds", namespace=NS, storage="main", target="far") is None
    assert "copies" not in storage_status(kube)


def test_a_forged_status_copies_entry_does_not_stop_the_copy(kube: CopyKube) -> None:
    """Whether a copy is owed is read from the operator's record in metadata, not from status.copies."""
    kube.crs[("MOBackup", "b-old")]["status"]["copies"] = [{"storage": "far", "backupID": "id-old"}]
    copy_pass(kube)
    assert list(kube.jobs) == [copy_job_of("b-old")]
    finished_job(kube, copy_job_of("b-old"), True, report("id-old"))
    copy_pass(kube)
    assert kube.crs[("MOBackup", "b-old")]["metadata"]["annotations"][copies.A_COPIED_TO] == "far"


def test_the_agent_reads_the_target_only_from_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The source's endpoint, CA and keys never leak into the target's settings."""
    for name, value in {"AWS_ENDPOINT_URL": "http://source:9000", "AWS_CA_BUNDLE": "/ca", "AWS_ACCESS_KEY_ID": "src",
                        "AWS_SECRET_ACCESS_KEY": "srcsecret", "MOBACKUP_ENCRYPTION_KEY": "source key",
                        "MOBACKUP_TO_REGION": "eu-west-1", "MOBACKUP_TO_ENCRYPTION_KEY": "target key"}.items():
        monkeypatch.setenv(name, value)
    args = agent._parser().parse_args(["copy", "--repo", "s3://a/p", "--to", "s3://b/q", "--backup-id", "x"])
    opts = agent.target_options(args)
    assert (opts.url, opts.s3_endpoint, opts.s3_ca_bundle, opts.s3_access_key_id) == ("s3://b/q", None, None, None)
    assert (opts.s3_region, opts.encryption_key) == ("eu-west-1", "target key")


def test_stats_are_recomputed_when_the_backups_change_or_hourly() -> None:
    now = status.now().timestamp()
    fresh = {"backups": 3, "computedAt": status.iso()}
    assert not storage_mod.stats_due(fresh, 3, now)
    assert storage_mod.stats_due(fresh, 4, now)
    assert storage_mod.stats_due(copy.deepcopy(fresh), 3, now + storage_mod.STATS_MAX_AGE_SECONDS)
    assert storage_mod.stats_due(None, 0, now) and not storage_mod.stats_due(None, None, now)


def test_stats_of_a_repository_too_large_for_the_operators_scratch_space_are_left_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [SimpleNamespace(key=f"blobs/{i:064x}", size=1000) for i in range(50)]
    lists = [SimpleNamespace(key="backups/a.files", size=2000)]
    repo = SimpleNamespace(backend=SimpleNamespace(list=lambda p: iter(blobs if p == "blobs/" else lists)),
                           backup_ids=lambda: ["a"])
    assert storage_mod.stats_scratch_estimate(repo) == 50 * storage_mod.BYTES_PER_BLOB + 4 * 2000
    monkeypatch.setattr(storage_mod, "open_repo", lambda *a, **k: repo)
    monkeypatch.setenv("MOBACKUP_STATS_SCRATCH_BYTES", "1000")
    out = storage_mod.repo_stats(None, NS, None)  # type: ignore[arg-type]
    assert out is not None and out["backups"] == 1 and "MOBACKUP_STATS_SCRATCH_BYTES" in out["message"]
    assert out["storedBytes"] is None and out["dedupRatio"] is None  # null: earlier figures are removed


def test_the_copy_job_is_checked_like_every_job(kube: CopyKube) -> None:
    """controller.create_job checks each Secret the pod reads (here the source's key, not opted in)."""
    kube.crs[("MOBackupStorage", "main")]["spec"] = {**SOURCE_SPEC, "encryption": {"keySecretRef": {"name": "nope"}}}
    copy_pass(kube)
    assert kube.jobs == {}
    assert storage_status(kube)["copies"][0]["reason"] == "SecretNotFound"
