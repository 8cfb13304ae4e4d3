"""A run whose data is its own repository (issue 18): the storage's PVC as a backup's source, a
restore's target or log volume, a drill's scratch volume; a restore into (or above) the storage's S3
prefix, or a staging root above it. One reconcile pass of each kind against an in-memory API: Failed
(StorageOverlap) with an Event, and no Job, PVC or MOBackup created. (The same end to end, with the
real API server, is in test_e2e_bad_input.py.)"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from mobackup.k8s import controller, drill, schedule, status
from mobackup.k8s.kube import NotFound

NS = "ns"
CREATED = status.iso(status.now() - timedelta(minutes=10))


class FakeKube:
    """Objects by (kind, name); reads of anything else find nothing; every other call is recorded."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _get(self, kind: str, name: str) -> dict[str, Any]:
        try:
            return copy.deepcopy(self.objects[(kind, name)])
        except KeyError:
            raise NotFound(f"{kind} {name}") from None

    def get_cr(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        return self._get(kind, name)

    def get_pvc(self, ns: str, name: str) -> dict[str, Any]:
        return self._get("PersistentVolumeClaim", name)

    def get_secret(self, ns: str, name: str) -> dict[str, Any]:
        return self._get("Secret", name)

    def list_cr(self, kind: str, ns: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind]

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **_: Any) -> dict[str, Any]:
            self.calls.append((method, args))
            if method.startswith("get_"):
                raise NotFound(method)
            return {}
        return call

    def made(self) -> list[str]:
        return [m for m, _ in self.calls if m.startswith("create_") and m != "create_event"]

    def warnings(self) -> list[str]:
        return [args[1]["reason"] for m, args in self.calls if m == "create_event" and args[1]["type"] == "Warning"]


def obj(kind: str, name: str, spec: dict[str, Any], **status_: Any) -> dict[str, Any]:
    return {"apiVersion": "mobackup.io/v1alpha1", "kind": kind, "spec": spec,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": CREATED},
            **({"status": status_} if status_ else {})}


def storage(spec: dict[str, Any]) -> dict[str, Any]:
    """An Available storage; an S3 one with SECRET's keys (without keys it would be refused first)."""
    if "s3" in spec:
        spec = {**spec, "s3": {"credentialsSecretRef": {"name": "k"}, **spec["s3"]}}
    return obj("MOBackupStorage", "st", spec, phase="Available")


def pvc(name: str) -> dict[str, Any]:
    return {"kind": "PersistentVolumeClaim", "metadata": {"name": name}, "status": {"phase": "Bound"}}


SECRET = {"kind": "Secret", "metadata": {"name": "k", "labels": {"mobackup.io/credentials": "true"}},
          "data": {"AWS_ACCESS_KEY_ID": "aWQ=", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0", "password": "cA=="}}
SHARED = {"s3": {"path": "bkt/team", "type": "minio", "endpoint": "http://minio:9000", "secretRef": {"name": "k"}}}
PVC_STORAGE = storage({"pvc": {"claimName": "repo"}})


def failed_for_overlap(kube: FakeKube, run: dict[str, Any]) -> str:
    st = run.get("status") or {}
    assert (st.get("phase"), st.get("reason")) == ("Failed", "StorageOverlap"), st
    assert "StorageOverlap" in kube.warnings() and kube.made() == [], kube.calls
    return str(st["message"])


@pytest.mark.parametrize("path", ["mo-data", "."])
def test_backup_of_the_storage_pvc(path: str) -> None:
    kube = FakeKube(PVC_STORAGE, pvc("repo"))
    run = obj("MOBackup", "b", {"source": {"pvc": {"claimName": "repo", "path": path}}, "consistency": "None",
                                "storageRef": {"name": "st"}})
    controller.reconcile_backup(controller.Ctx(kube), run)
    assert failed_for_overlap(kube, run).startswith("spec.source.pvc.claimName repo is the PVC of MOBackupStorage st")


def test_restore_into_the_storage_pvc() -> None:
    kube = FakeKube(PVC_STORAGE, pvc("repo"))
    run = obj("MORestore", "r", {"backupID": "x", "storageRef": {"name": "st"}, "overwrite": True,
                                 "target": {"pvc": {"claimName": "repo"}}})
    controller.reconcile_restore(controller.Ctx(kube), run)
    assert "spec.target.pvc.claimName repo is the PVC" in failed_for_overlap(kube, run)


@pytest.mark.parametrize("repository,target", [
    ({"s3": {"bucket": "bkt", "prefix": "team"}}, {"sharedStorage": SHARED}),  # above the data prefix
    ({"s3": {"bucket": "bkt", "prefix": "team/data"}}, {"sharedStorage": SHARED}),  # the data prefix itself
    ({"s3": {"bucket": "bkt", "prefix": "team/hk_data"}}, {"sharedStorage": SHARED}),  # where hk_data goes
    ({"pvc": {"claimName": "log"}}, {"sharedStorage": SHARED, "logVolume": {"claimName": "log"}}),
])
def test_restore_of_table_data_over_the_repository(repository: dict[str, Any], target: dict[str, Any]) -> None:
    kube = FakeKube(storage(repository), pvc("log"), SECRET)
    run = obj("MORestore", "r", {"backupID": "x", "storageRef": {"name": "st"}, "overwrite": True, "target": target})
    controller.reconcile_restore(controller.Ctx(kube), run)
    failed_for_overlap(kube, run)


def test_staging_root_above_the_repository() -> None:
    kube = FakeKube(storage({"s3": {"bucket": "bkt", "prefix": "backups/repo"}}), SECRET)
    source = {"sharedStorage": SHARED, "sql": {"host": "mo", "passwordSecretRef": {"name": "k"}},
              "staging": {"path": "bkt/backups"}}
    run = obj("MOBackup", "b", {"source": source, "storageRef": {"name": "st"}})
    controller.reconcile_backup(controller.Ctx(kube), run)
    assert "contains the repository" in failed_for_overlap(kube, run)


def test_drill_whose_scratch_volume_is_the_storage_pvc() -> None:
    run = obj("MORestoreDrill", "d", {"backupID": "x", "storageRef": {"name": "st"}})
    claim = drill.scratch_claim_name(controller.owner_of(run))
    kube = FakeKube(storage({"pvc": {"claimName": claim}}), pvc(claim))
    drill.reconcile_drill(controller.Ctx(kube), run, drill.MatrixOneSettings())
    assert "the drill's scratch PVC" in failed_for_overlap(kube, run)
    assert ("delete_pvc", (NS, claim)) not in kube.calls  # not made for the drill: never deleted either


def test_drill_never_adopts_a_scratch_pvc_it_did_not_make() -> None:
    from mobackup.k8s.kube import Conflict

    run = obj("MORestoreDrill", "d", {"backupID": "x", "storageRef": {"name": "st"}})
    claim = drill.scratch_claim_name(controller.owner_of(run))
    kube = FakeKube(storage({"s3": {"bucket": "bkt"}}), pvc(claim), SECRET)

    def taken(*_: Any) -> None:
        raise Conflict(claim)

    kube.create_pvc = taken  # type: ignore[method-assign]
    drill.reconcile_drill(controller.Ctx(kube), run, drill.MatrixOneSettings())
    assert (run["status"]["phase"], run["status"]["reason"]) == ("Failed", "ScratchClaimTaken")
    assert not [m for m, _ in kube.calls if m in ("create_job", "delete_pvc")]


def test_schedule_whose_template_backs_up_the_storage_pvc() -> None:
    kube = FakeKube(PVC_STORAGE, pvc("repo"))
    sched = obj("MOBackupSchedule", "s", {"fullSchedule": "* * * * *", "template": {"spec": {
        "source": {"pvc": {"claimName": "repo"}}, "consistency": "None", "storageRef": {"name": "st"}}}})
    schedule.reconcile_schedule(controller.Ctx(kube), sched)
    st = sched["status"]
    assert st["reason"] == "StorageOverlap" and "is the PVC of MOBackupStorage st" in st["message"], st
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "False"
    assert "StorageOverlap" in kube.warnings() and kube.made() == [], kube.calls


def test_snapshot_never_copies_or_deletes_a_clone_pvc_it_did_not_make() -> None:
    from mobackup.k8s import jobs, snapshot

    owner = jobs.Owner("MOBackup", "b", NS, "uid-b")
    _, clone = snapshot.names(owner)
    kube = FakeKube(pvc(clone))
    kube.get_obj = lambda *_: {"status": {"readyToUse": True}}  # type: ignore[method-assign]
    with pytest.raises(snapshot.SnapshotError, match="not this backup's clone"):
        snapshot.ensure_clone(kube, owner, "mo-data", None)  # type: ignore[arg-type]
    snapshot.cleanup(kube, owner)  # type: ignore[arg-type]
    assert not [m for m, _ in kube.calls if m in ("create_pvc", "delete_pvc")], kube.calls
