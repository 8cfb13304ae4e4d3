"""Nothing a Job or a status patch can write steers the operator (issue 18, item 9).

Jobs get no API token (their ServiceAccount has no rights); and what the operator acts on
destructively is not read from the status: the workload it scales back is the one the run's spec
names, to the replicas it recorded in the run's metadata; the Jobs it follows or deletes are the
names derived from the run; the backup it deletes is the ID it recorded in metadata at completion,
checked again in the repository by the delete Job. Driven against an in-memory API (FakeKube)."""

from __future__ import annotations

import copy
import json
from typing import Any, cast

import pytest

from mobackup.k8s import controller, drill, jobs, models, workload
from mobackup.k8s.kube import Conflict, Kube, NotFound

NS = "db"
STS = {"kind": "StatefulSet", "name": "mo"}
BACKUP_SPEC = {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS}, "storageRef": {"name": "s3"},
               "consistency": "Stop"}
STORAGE_SPEC = {"s3": {"bucket": "bk", "credentialsSecretRef": {"name": "creds"}}}
# The operator's records in a run's metadata (documented in docs/crd-behaviour.md).
A_REPLICAS, A_BACKUP_ID = "mobackup.io/scaled-replicas", "mobackup.io/backup-id"


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386): null deletes, objects merge, everything else replaces."""
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


class FakeKube:
    """The slice of the API the reconcile code calls, in memory."""

    def __init__(self) -> None:
        self.crs: dict[tuple[str, str], dict[str, Any]] = {}
        self.replicas: dict[str, int] = {}
        self.scaled: list[tuple[str, int]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.deleted_jobs: list[str] = []
        self.pods: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.rv = 1

    def add(self, kind: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None = None,
            **meta: Any) -> dict[str, Any]:
        self.rv += 1
        obj = {"kind": kind, "spec": spec, "status": status or {},
               "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": str(self.rv),
                            "creationTimestamp": "2026-01-01T00:00:00Z", **meta}}
        self.crs[(kind, name)] = obj
        return copy.deepcopy(obj)

    # custom resources
    def get_cr(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        if (kind, name) not in self.crs:
            raise NotFound(name)
        return copy.deepcopy(self.crs[(kind, name)])

    def list_cr(self, kind: str, ns: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _), o in self.crs.items() if k == kind]

    def list_cr_all(self, kind: str) -> list[dict[str, Any]]:
        return self.list_cr(kind, NS)

    def patch_cr(self, kind: str, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        obj = self.crs[(kind, name)]
        want = patch.get("metadata", {}).get("resourceVersion")
        if want is not None and want != obj["metadata"]["resourceVersion"]:
            raise Conflict(name)
        _merge(obj, {k: v for k, v in patch.items() if k != "status"})  # the main resource ignores status
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    def patch_status(self, kind: str, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        if (kind, name) not in self.crs:
            raise NotFound(name)
        _merge(self.crs[(kind, name)].setdefault("status", {}), status)  # /status ignores metadata
        return copy.deepcopy(self.crs[(kind, name)])

    # workloads
    def get_scale(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        if name not in self.replicas:
            raise NotFound(name)
        return {"spec": {"replicas": self.replicas[name]}, "status": {"selector": f"app={name}"}}

    def scale_workload(self, kind: str, ns: str, name: str, replicas: int) -> dict[str, Any]:
        if name not in self.replicas:
            raise NotFound(name)
        self.replicas[name] = replicas
        self.scaled.append((name, replicas))
        return {}

    def get_secret(self, ns: str, name: str) -> dict[str, Any]:
        if name != "creds":
            raise NotFound(name)
        return {"metadata": {"name": name, "labels": {"mobackup.io/credentials": "true"}},
                "data": {"AWS_ACCESS_KEY_ID": "aWQ=", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"}}

    # jobs, pods, events, leases
    def get_job(self, ns: str, name: str) -> dict[str, Any]:
        if name not in self.jobs:
            raise NotFound(name)
        return copy.deepcopy(self.jobs[name])

    def create_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        self.jobs[body["metadata"]["name"]] = copy.deepcopy(body)
        return body

    def delete_job(self, ns: str, name: str) -> None:
        self.deleted_jobs.append(name)
        self.jobs.pop(name, None)

    def list_pods(self, ns: str, label_selector: str) -> list[dict[str, Any]]:
        key, _, value = label_selector.partition("=")
        return [p for p in self.pods if p["metadata"]["labels"].get(key) == value]

    def create_event(self, ns: str, body: dict[str, Any]) -> None:
        self.events.append(body)

    def get_lease(self, ns: str, name: str) -> dict[str, Any]:
        raise NotFound(name)


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    k.replicas.update({"mo": 0, "victim": 3})
    k.add("MOBackupStorage", "s3", STORAGE_SPEC, {"phase": "Available"})
    return k


def api(kube: FakeKube) -> Kube:
    return cast(Kube, kube)


def ctx_of(kube: FakeKube) -> controller.Ctx:
    return controller.Ctx(api(kube))


def reasons(kube: FakeKube) -> list[str]:
    return [e["reason"] for e in kube.events]


def finished_job(kube: FakeKube, name: str, ok: bool, result: dict[str, Any]) -> None:
    """A Job that ended, with its pod and the agent's result as termination message."""
    kube.jobs[name] = {"metadata": {"name": name},
                       "status": {"conditions": [{"type": "Complete" if ok else "Failed", "status": "True"}]}}
    kube.pods.append({"metadata": {"labels": {"job-name": name}}, "status": {
        "phase": "Succeeded" if ok else "Failed",
        "containerStatuses": [{"name": "agent", "state": {"terminated": {"message": json.dumps(result)}}}]}})


# ------------------------------------------------------------------------------- the scaled workload

FORGED_SCALE = {"kind": "StatefulSet", "name": "victim", "replicas": 0, "scaledDownAt": "2026-01-01T00:00:00Z"}


def test_a_forged_status_record_scales_nothing(kube: FakeKube) -> None:
    """The reported attack: status.scaledWorkload naming an unrelated StatefulSet on a finished run."""
    kube.add("MOBackup", "done", BACKUP_SPEC, {"phase": "Completed", "scaledWorkload": FORGED_SCALE})
    kube.add("MORestore", "done-r", {"backupID": "x", "storageRef": {"name": "s3"}, "target": {
        "pvc": {"claimName": "mo-data"}, "workload": STS}}, {"phase": "Failed", "scaledWorkload": FORGED_SCALE})
    assert workload.sweep(api(kube), NS) == []
    controller.cleanup_run(ctx_of(kube), kube.get_cr("MOBackup", NS, "done"))
    assert kube.scaled == [] and kube.replicas["victim"] == 3


def test_scale_back_uses_the_spec_and_the_operators_record(kube: FakeKube) -> None:
    """A held run whose status was patched: the spec's workload gets the recorded replicas back."""
    kube.add("MOBackup", "b", BACKUP_SPEC, {"phase": "Failed", "scaledWorkload": FORGED_SCALE},
             finalizers=[workload.FINALIZER], annotations={A_REPLICAS: "2"})
    kube.jobs[jobs.job_name(jobs.Owner("MOBackup", "b", NS, "uid-b"), "backup")] = {"metadata": {}}
    assert workload.sweep(api(kube), NS) == ["StatefulSet db/mo -> 2 (held by MOBackup b)"]
    assert kube.scaled == [("mo", 2)] and kube.replicas["victim"] == 3
    # Its own Job was deleted first (derived name: a Failed phase is no proof nothing writes the volume).
    assert jobs.job_name(jobs.Owner("MOBackup", "b", NS, "uid-b"), "backup") in kube.deleted_jobs
    meta = kube.crs[("MOBackup", "b")]["metadata"]
    assert workload.FINALIZER not in meta["finalizers"] and A_REPLICAS not in meta.get("annotations", {})
    assert kube.crs[("MOBackup", "b")]["status"]["scaledWorkload"]["name"] == "mo"  # the copy for people


def test_the_record_is_written_to_metadata_before_the_scale_down(kube: FakeKube) -> None:
    kube.replicas["mo"] = 4
    obj = kube.add("MOBackup", "b", BACKUP_SPEC, {"phase": "Pending"})
    ctx = ctx_of(kube)
    kube.pods.append({"metadata": {"labels": {"app": "mo"}}})  # still terminating: the pass waits
    with pytest.raises(controller.Wait):
        controller.stop_workload(ctx, obj, models.Workload("StatefulSet", "mo"))
    meta = kube.crs[("MOBackup", "b")]["metadata"]
    assert meta["annotations"][A_REPLICAS] == "4" and workload.FINALIZER in meta["finalizers"]
    assert kube.scaled == [("mo", 0)]
    # A status patch cannot change what comes back.
    kube.patch_status("MOBackup", NS, "b", {"scaledWorkload": {"replicas": 0, "name": "victim"}, "phase": "Failed"})
    kube.pods.clear()
    workload.sweep(api(kube), NS)
    assert kube.replicas == {"mo": 4, "victim": 3}


# ------------------------------------------------------------------------------- the Job followed

def test_a_forged_job_name_is_neither_deleted_nor_followed(kube: FakeKube) -> None:
    kube.jobs["someone-elses-job"] = {"metadata": {"name": "someone-elses-job"},
                                      "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    obj = kube.add("MOBackup", "b", BACKUP_SPEC, {"phase": "Running", "jobName": "someone-elses-job"})
    own = jobs.job_name(controller.owner_of(obj), "backup")
    controller.cleanup_run(ctx_of(kube), obj)
    assert "someone-elses-job" in kube.jobs and own in kube.deleted_jobs
    assert controller.run_job_name(obj, "backup") == own
    obj["status"]["jobName"] = jobs.job_name(controller.owner_of(obj), "ingest")  # its own: followed
    assert controller.run_job_name(obj, "backup") == obj["status"]["jobName"]


# ------------------------------------------------------------------------------- the backup deleted

def completed(kube: FakeKube, name: str, backup_id: str, recorded: str | None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"annotations": {A_BACKUP_ID: recorded}} if recorded else {}
    return kube.add("MOBackup", name, {**BACKUP_SPEC, "deletionPolicy": "Delete", **spec},
                    {"phase": "Completed", "backupID": backup_id, "source": "db/mo-data"}, **meta)


def test_a_patched_backup_id_is_not_deleted(kube: FakeKube) -> None:
    obj = completed(kube, "b", "someone-elses-backup", recorded="b-backup")
    done, message = controller.delete_backup_data(ctx_of(kube), obj)
    assert done and "not deleted" in message and "BackupIDMismatch" in reasons(kube)
    assert not [j for j in kube.jobs.values() if j["metadata"]["labels"].get(jobs.L_ACTION) == "delete"]


def test_the_delete_job_checks_the_backup_in_the_repository(kube: FakeKube) -> None:
    obj = completed(kube, "b", "b-backup", recorded="b-backup")
    done, _ = controller.delete_backup_data(ctx_of(kube), obj)
    assert not done
    (job,) = kube.jobs.values()
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--backup-id") + 1] == "b-backup"
    assert args[args.index("--source") + 1] == "db/mo-data"
    assert args[args.index("--not-before") + 1] == "2026-01-01T00:00:00Z"
    # The agent refuses: the MOBackup is finished with, the data kept, a Warning says why.
    finished_job(kube, job["metadata"]["name"], False,
                 {"ok": False, "action": "delete", "reason": "DeleteRefused", "error": "of source 'x'"})
    done, message = controller.delete_backup_data(ctx_of(kube), obj)
    assert done and "not deleted" in message and "DeleteRefused" in reasons(kube)


def test_restores_and_drills_refuse_a_patched_backup_id(kube: FakeKube) -> None:
    completed(kube, "b", "someone-elses-backup", recorded="b-backup")
    ctx = ctx_of(kube)
    with pytest.raises(controller.Fail) as e:
        controller.completed_backup(ctx, NS, "b", controller.RESTORE_REASONS, "MOBackup")
    assert e.value.reason == "BackupIDMismatch"
    with pytest.raises(controller.Wait):  # by source: the tampered one is not a candidate
        drill.resolve_backup(ctx, NS, drill.parse_drill({"source": "db/mo-data"}))
    completed(kube, "c", "c-backup", recorded="c-backup")
    assert drill.resolve_backup(ctx, NS, drill.parse_drill({"source": "db/mo-data"}))[0] == "c-backup"


def test_completion_records_the_backup_id_in_metadata(kube: FakeKube) -> None:
    obj = kube.add("MOBackup", "b", {**BACKUP_SPEC, "consistency": "None"},
                   {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"})
    finished_job(kube, jobs.job_name(controller.owner_of(obj), "backup"), True, {
        "ok": True, "action": "backup", "result": {"id": "new-id", "size_bytes": 10, "file_count": 2}})
    spec = models.parse_backup(obj["spec"], NS)
    controller.follow_backup(ctx_of(kube), obj, spec)
    stored = kube.crs[("MOBackup", "b")]
    assert stored["metadata"]["annotations"][A_BACKUP_ID] == "new-id"
    assert stored["status"]["phase"] == "Completed" and stored["status"]["backupID"] == "new-id"
    # The Job had no API access: the progress is the operator's, from the result.
    assert stored["status"]["progress"]["bytesDone"] == stored["status"]["progress"]["bytesTotal"] == 10
