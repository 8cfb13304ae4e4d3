"""MORestoreDrill: prove a backup restorable on the cluster, never touching the source.

One pass (controller-style, state in status) does:
- Pending: resolve the backup (backupName; backupID + storageRef; or the newest Completed MOBackup
  of `source`), create a fresh scratch PVC and one Job whose pod
  * restores the backup into the PVC (an init container built by the restore Job builder),
  * runs the scratch MatrixOne on it (image and command from the operator's settings, the chart's
    `drill.matrixOne` values; hostname = the source pod's for a cold backup, since the log service
    is bound to it),
  * runs the checker beside it (mobackup.k8s.drillcheck: waits for SQL on 127.0.0.1, checks the
    recorded catalog and the user's queries, writes the outcome as its termination message). It
    parses what the restored server answers, so it gets the least: no scratch volume, a PVC
    repository read-only, and spec.readOnlyCredentialsSecretRef's S3 keys when given;
  * no container gets an API token (the pod reports through termination messages only);
- Running: reads the restore and checker containers' outcome from the pod; the Job's
  activeDeadlineSeconds (timeoutSeconds) bounds a server that never answers;
- Completed/Failed: records every check, durations, the MatrixOne version, Events and metrics,
  and deletes every scratch object (Job, its pod, the PVC). A terminal drill whose objects still
  exist (the operator was killed in between) is cleaned on the next pass; owner references let the
  garbage collector remove them with the drill at the latest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import controller, jobs, models, status
from .controller import Ctx, Fail, Wait, meta, owner_of, transition
from .kube import Conflict, NotFound
from .storage import pvc_made_for

log = logging.getLogger("mobackup.drill")

KIND = "MORestoreDrill"
CHECKER = "checker"
RESTORE = "restore"
MATRIXONE = "matrixone"
SCRATCH_MOUNT = "/scratch"
DEFAULT_TIMEOUT = 900
DEFAULT_SIZE = "10Gi"
# Past the Job's deadline, give the Job controller this long to report before the pass gives up.
GRACE_SECONDS = 120
# timeoutSeconds bounds the scratch MatrixOne's start and the checks (as `mobackup drill --timeout`);
# the pod's deadline adds this for the restore before them (a few GB take minutes).
RESTORE_ALLOWANCE_SECONDS = 3600


@dataclass(frozen=True)
class MatrixOneSettings:
    """How the scratch MatrixOne runs (operator env, from the chart's drill.matrixOne values)."""

    image: str = "matrixorigin/matrixone:2.2.2"
    command: tuple[str, ...] = ("/mo-service",)
    args: tuple[str, ...] = ("-launch", "/etc/launch/launch.toml")
    working_dir: str = "/"
    data_path: str = "/mo-data"  # where the restored mo-data appears (relative paths in the config)
    # Where a scoped restore's loader reaches the scratch server's SQL when its configuration sets a Unix
    # socket ([cn.frontend] unix-socket) on a path both containers see; "": 127.0.0.1:6001 in the pod.
    sql_socket: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> MatrixOneSettings:
        env = dict(os.environ if env is None else env)

        def listed(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            try:
                value = json.loads(env[key]) if env.get(key) else None
            except ValueError:
                value = None
            return tuple(str(v) for v in value) if isinstance(value, list) and value else default

        d = cls()
        return cls(image=env.get("MOBACKUP_DRILL_IMAGE") or d.image,
                   command=listed("MOBACKUP_DRILL_COMMAND", d.command), args=listed("MOBACKUP_DRILL_ARGS", d.args),
                   working_dir=env.get("MOBACKUP_DRILL_WORKING_DIR") or d.working_dir,
                   data_path=env.get("MOBACKUP_DRILL_DATA_PATH") or d.data_path,
                   sql_socket=env.get("MOBACKUP_DRILL_SQL_SOCKET") or d.sql_socket)


@dataclass(frozen=True)
class DrillSpec:
    backup_name: str | None
    backup_id: str | None
    storage: str | None
    source: str | None
    storage_class: str | None
    size: str
    checks: tuple[dict[str, str], ...]
    timeout: int
    hostname: str | None
    sql_user: str
    password: models.SecretKey | None
    sql_port: int = 6001
    job: models.JobOverrides = field(default_factory=models.JobOverrides)
    # S3 keys of the checker (a read-only key); None: the storage's.
    read_only_credentials: models.SecretKey | None = None
    read_only_secret_key_key: str = "AWS_SECRET_ACCESS_KEY"


def parse_drill(spec: dict[str, Any]) -> DrillSpec:
    name, bid, source = spec.get("backupName"), spec.get("backupID"), spec.get("source")
    if sum(bool(x) for x in (name, bid, source)) != 1:
        raise models.SpecError("spec: set exactly one of backupName, backupID (with storageRef) or source")
    storage = (spec.get("storageRef") or {}).get("name")
    if bid and not storage:
        raise models.SpecError("spec.backupID needs spec.storageRef")
    scratch = spec.get("scratch") or {}
    size = str(scratch.get("size") or DEFAULT_SIZE)
    if not models.QUANTITY.match(size):
        raise models.SpecError(f"spec.scratch.size {size!r} is not a quantity like 10Gi")
    checks = []
    for i, c in enumerate(spec.get("checks") or []):
        if not isinstance(c, dict) or not c.get("query") or "expect" not in c:
            raise models.SpecError(f"spec.checks[{i}] needs query and expect")
        checks.append({"query": str(c["query"]), "expect": str(c["expect"])})
    timeout = int(spec.get("timeoutSeconds") or DEFAULT_TIMEOUT)
    if timeout < 30:
        raise models.SpecError("spec.timeoutSeconds must be at least 30")
    sql = spec.get("sql") or {}
    password = sql.get("passwordSecretRef")
    ro = spec.get("readOnlyCredentialsSecretRef") or {}
    return DrillSpec(
        backup_name=models._name(name, "spec.backupName") if name else None, backup_id=bid,
        storage=models._name(storage, "spec.storageRef.name") if storage else None, source=source or None,
        storage_class=scratch.get("storageClassName") or None, size=size, checks=tuple(checks), timeout=timeout,
        hostname=spec.get("hostname") or None, sql_user=str(sql.get("user") or "root"),
        password=models._secret_key(password, "spec.sql.passwordSecretRef", "password") if password else None,
        sql_port=int(sql.get("port") or 6001),
        read_only_credentials=models.SecretKey(
            models._name(ro["name"], "spec.readOnlyCredentialsSecretRef.name"),
            str(ro.get("accessKeyIDKey") or "AWS_ACCESS_KEY_ID")) if ro.get("name") else None,
        read_only_secret_key_key=str(ro.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY"),
    )


def _short(owner: jobs.Owner, what: str) -> str:
    digest = hashlib.sha256(f"{owner.uid}/{what}".encode()).hexdigest()[:6]
    return f"{owner.name[: 63 - len(what) - 8].rstrip('-.')}-{what}-{digest}"


def scratch_claim_name(owner: jobs.Owner) -> str:
    return _short(owner, "scratch")


def scratch_pvc(owner: jobs.Owner, spec: DrillSpec) -> dict[str, Any]:
    return scratch_claim(owner, spec.size, spec.storage_class)


def scratch_claim(owner: jobs.Owner, size: str, storage_class: str | None) -> dict[str, Any]:
    """The scratch PVC of a drill or a scoped restore (labelled with its owner's kind)."""
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": scratch_claim_name(owner), "namespace": owner.namespace,
                     "labels": {jobs.MANAGED_BY: jobs.MANAGER, jobs.L_KIND: owner.kind.lower(),
                                jobs.L_NAME: owner.name[:63].rstrip("-."), jobs.L_UID: owner.uid},
                     "ownerReferences": [owner.reference()]},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }
    if storage_class:
        body["spec"]["storageClassName"] = storage_class
    return body


def drill_job(owner: jobs.Owner, spec: DrillSpec, storage: models.StorageSpec, backup_id: str,
              hostname: str | None, defaults: jobs.OperatorDefaults, mo: MatrixOneSettings) -> dict[str, Any]:
    """The scratch Job (scratch_job) with the checker beside the scratch MatrixOne."""
    job, restore = scratch_job(owner, spec.job, storage, backup_id, hostname, defaults, mo, "drill",
                               spec.timeout + RESTORE_ALLOWANCE_SECONDS)
    checker = sidecar_container(restore, CHECKER, storage, spec.read_only_credentials, spec.read_only_secret_key_key)
    checker["command"] = ["python", "-m", "mobackup.k8s.drillcheck"]
    repo = restore["args"][restore["args"].index("--repo") + 1]
    checker["args"] = ["--repo", repo, "--backup-id", backup_id, "--sql-user", spec.sql_user,
                       "--sql-port", str(spec.sql_port),
                       "--timeout", str(spec.timeout), "--checks", json.dumps(list(spec.checks)),
                       "--termination-log", jobs.TERMINATION_LOG]
    if spec.password:
        checker["env"] = [*checker["env"], jobs.secret_env("MOBACKUP_SQL_PASSWORD", spec.password.name,
                                                           spec.password.key)]
    job["spec"]["template"]["spec"]["containers"].append(checker)
    return job


def scratch_job(owner: jobs.Owner, overrides: models.JobOverrides, storage: models.StorageSpec, backup_id: str,
                hostname: str | None, defaults: jobs.OperatorDefaults, mo: MatrixOneSettings, action: str,
                deadline_seconds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Job, its restore container): the restore Job's pod (jobs.restore_job, into the scratch PVC)
    turned into the restore as an init container, then the scratch MatrixOne; the caller appends the
    container that talks to it (drill: the checker; scoped restore: the loader)."""
    restore_spec = models.RestoreSpec(
        backup_name=None, backup_id=backup_id, storage=None,
        volume=models.Volume(scratch_claim_name(owner), "mo-data"), workload=None, overwrite=False,
        sql_check=None, parallelism=None, job=overrides, hostname=hostname)
    job = jobs.restore_job(owner, restore_spec, storage, backup_id, defaults)
    job["metadata"]["name"] = jobs.job_name(owner, action)
    for meta_ in (job["metadata"], job["spec"]["template"]["metadata"]):
        meta_["labels"][jobs.L_ACTION] = action
    pod = job["spec"]["template"]["spec"]
    restore = pod["containers"][0]
    restore["name"] = RESTORE
    # No API token in the pod: no progress reports from the restore (it reports in its termination message).
    restore["args"] = [*restore["args"], "--progress-interval", "0"]
    matrixone: dict[str, Any] = {
        "name": MATRIXONE, "image": mo.image, "command": list(mo.command), "args": list(mo.args),
        "workingDir": mo.working_dir,
        "volumeMounts": [{"name": "data", "mountPath": mo.data_path, "subPath": "mo-data"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod["initContainers"] = [restore]
    pod["containers"] = [matrixone]
    if hostname:
        pod["hostname"] = hostname
    pod["terminationGracePeriodSeconds"] = 5  # the scratch data is thrown away: no clean shutdown needed
    job["spec"]["backoffLimit"] = 0
    job["spec"]["activeDeadlineSeconds"] = deadline_seconds
    return job, restore


def sidecar_container(restore: dict[str, Any], name: str, storage: models.StorageSpec,
                      ro: models.SecretKey | None = None, ro_secret_key_key: str = "AWS_SECRET_ACCESS_KEY"
                      ) -> dict[str, Any]:
    """The restore container's settings minus what a container that parses the restored server's
    answers does not need: the scratch volume (it talks SQL) and write access to the repository (a
    PVC repository mounted read-only; for S3, the read-only keys `ro` when given)."""
    checker = {k: v for k, v in restore.items() if k not in ("args", "command")}
    checker["name"] = name
    checker["volumeMounts"] = [{**m, "readOnly": True} if m["name"] == "repository" else m
                               for m in restore["volumeMounts"] if m["name"] != "data"]
    if ro is not None and storage.s3:
        keys = {"AWS_ACCESS_KEY_ID": ro.key, "AWS_SECRET_ACCESS_KEY": ro_secret_key_key}
        checker["env"] = [*(e for e in restore["env"] if e["name"] not in keys),
                          *(jobs.secret_env(name, ro.name, key) for name, key in keys.items())]
    return checker


# ------------------------------------------------------------------------------------------ passes

def resolve_backup(ctx: Ctx, ns: str, spec: DrillSpec) -> tuple[str, str, str | None, dict[str, Any] | None]:
    """(backup id, storage name, MOBackup name, that MOBackup)."""
    if spec.backup_id:
        assert spec.storage
        return spec.backup_id, spec.storage, None, None
    if spec.backup_name:
        backup = controller.completed_backup(ctx, ns, spec.backup_name, controller.RESTORE_REASONS, "MOBackup")
    else:
        done = [b for b in ctx.kube.list_cr("MOBackup", ns)
                if (b.get("status") or {}).get("source") == spec.source and _recorded(b)]
        if spec.storage:
            done = [b for b in done if ((b.get("spec") or {}).get("storageRef") or {}).get("name") == spec.storage]
        if not done:
            raise Wait("WaitingForBackup", f"no Completed MOBackup of source {spec.source!r} yet")
        backup = max(done, key=lambda b: (b["status"].get("completionTime") or "", b["metadata"]["name"]))
    bst = backup["status"]
    storage_name = ((backup.get("spec") or {}).get("storageRef") or {}).get("name") or bst.get("storage")
    return str(bst["backupID"]), str(storage_name), backup["metadata"]["name"], backup


def _recorded(backup: dict[str, Any]) -> bool:
    """A Completed MOBackup whose backup ID is the one the operator recorded."""
    try:
        return controller.recorded_backup_id(backup) is not None
    except Fail:
        return False


def source_hostname(backup: dict[str, Any] | None, ns: str) -> str | None:
    """A cold copy's log service data is bound to the source pod's host name (<statefulset>-0)."""
    if backup is None:
        return None
    try:
        bspec = models.parse_backup(backup.get("spec") or {}, ns)
    except models.SpecError:
        return None
    if bspec.consistency == "Online" or bspec.workload is None or bspec.workload.kind != "StatefulSet":
        return None
    return f"{bspec.workload.name}-0"


def reconcile_scratch_run(ctx: Ctx, obj: dict[str, Any], *, parse: Callable[[dict[str, Any]], Any],
                          start: Callable[[Any], None], follow: Callable[[Any], None],
                          finish: Callable[[bool, str, str], None], clean: Callable[[], object],
                          made: Callable[[dict[str, Any]], bool] = lambda st: True) -> None:
    """One pass of a run on a scratch MatrixOne (a drill, a scoped restore): its scratch objects
    removed once it is deleted or done (`made`: whether the status says any were made), else the
    spec parsed, then the run started or followed; Wait and Fail become its status."""
    st = obj.get("status") or {}
    phase = st.get("phase")
    if obj["metadata"].get("deletionTimestamp"):
        clean()
        return
    if phase not in controller.RUN_ACTIVE:
        if not st.get("cleanedUp") and made(st):
            clean()  # an operator killed between the outcome and the cleanup
        return
    try:
        spec = parse(obj.get("spec") or {})
    except (models.SpecError, ValueError) as e:
        finish(False, "InvalidSpec", str(e))
        return
    try:
        if phase == "Running":
            follow(spec)
        else:
            start(spec)
    except Wait as e:
        transition(ctx, obj, "Pending", e.reason, str(e))
    except Fail as e:
        finish(False, e.reason, str(e))


def reconcile_drill(ctx: Ctx, obj: dict[str, Any], mo: MatrixOneSettings | None = None) -> None:
    reconcile_scratch_run(
        ctx, obj, parse=parse_drill, follow=lambda spec: follow(ctx, obj, spec),
        start=lambda spec: start(ctx, obj, spec, mo or MatrixOneSettings.from_env()),
        finish=lambda ok, reason, message: _finish(ctx, obj, ok, reason, message), clean=lambda: cleanup(ctx, obj))


def start(ctx: Ctx, obj: dict[str, Any], spec: DrillSpec, mo: MatrixOneSettings) -> None:
    ns, _, _ = meta(obj)
    if not (obj.get("status") or {}).get("phase"):
        transition(ctx, obj, "Pending", "Accepted", "validated; preparing the drill")
    backup_id, storage_name, backup_name, backup = resolve_backup(ctx, ns, spec)
    if ((backup or {}).get("status") or {}).get("sharedStorage"):
        raise Fail("DrillUnsupported", f"MOBackup {backup_name} is of a MatrixOne whose table data lives in S3: a "
                                       "drill starts MatrixOne on a scratch volume, which cannot hold it; restore it "
                                       "into a new cluster's prefix instead (docs/s3-clusters.md)")
    _, storage_spec = controller.require_storage_ready(ctx, ns, storage_name)
    hostname = spec.hostname or source_hostname(backup, ns)
    owner = owner_of(obj)
    claim = scratch_claim_name(owner)
    controller.refuse_storage_overlap(storage_spec, storage_name, claims={"the drill's scratch PVC": claim})
    body = drill_job(owner, spec, storage_spec, backup_id, hostname, ctx.defaults, mo)
    controller.require_job_secrets(ctx, ns, body)  # before the scratch PVC: nothing made for a refused drill
    try:
        ctx.kube.create_pvc(ns, scratch_pvc(owner, spec))
    except Conflict:  # made by an earlier pass; never someone else's of that name
        if pvc_made_for(ctx.kube, ns, claim, owner.uid) is False:
            raise Fail("ScratchClaimTaken", f"PVC {claim} exists and was not made for this drill: refusing to "
                                            "restore into it (or to delete it afterwards)") from None
    job_name = controller.create_job(ctx, obj, body)
    ctx.metrics.inc("mobackup_runs_total", kind=KIND, namespace=ns)
    source = ((backup or {}).get("status") or {}).get("source") or spec.source
    transition(ctx, obj, "Running", "JobCreated",
               f"Job {job_name} restores {backup_id} into a scratch volume and starts MatrixOne on it",
               jobName=job_name, startTime=status.iso(), backupID=backup_id, storage=storage_name,
               scratchClaim=scratch_claim_name(owner), location=storage_spec.location,
               **{k: v for k, v in (("backupName", backup_name), ("source", source), ("hostname", hostname)) if v})


def _terminated(pod: dict[str, Any], name: str, init: bool = False) -> dict[str, Any] | None:
    key = "initContainerStatuses" if init else "containerStatuses"
    for cs in (pod.get("status") or {}).get(key) or []:
        if cs.get("name") == name:
            return (cs.get("state") or {}).get("terminated")
    return None


def _seconds(term: dict[str, Any]) -> float | None:
    a, b = status.parse_iso(term.get("startedAt")), status.parse_iso(term.get("finishedAt"))
    return round((b - a).total_seconds(), 3) if a and b else None


def follow_scratch_job(ctx: Ctx, obj: dict[str, Any], action: str, last: str, timeout: int,
                       finish: Callable[[dict[str, Any], dict[str, Any]], None], *, run: str,
                       restore_failed: str, late: str) -> None:
    """One pass over a scratch run's Job (a drill's, a scoped restore's): the restore init container's
    outcome into the status fields, then `finish(terminated, fields)` once the `last` container has
    ended; TimeLimitExceeded (`late` and why) when the Job failed or the time limit passed."""
    ns, _, _ = meta(obj)
    st = obj.get("status") or {}
    job_name = jobs.job_name(owner_of(obj), action)  # derived: never a Job a patched status names
    try:
        job = ctx.kube.get_job(ns, job_name)
    except NotFound:
        raise Fail("JobVanished", f"Job {job_name} vanished before {run} finished") from None
    pods = controller._pods_of_job(ctx, ns, job_name)
    pod = pods[-1] if pods else None
    fields: dict[str, Any] = {}
    if pod is not None:
        restored = _terminated(pod, RESTORE, init=True)
        if restored is not None:
            fields["restoreSeconds"] = _seconds(restored)
            result = jobs.parse_result(restored.get("message"))
            if restored.get("exitCode") != 0:
                reason = (result or {}).get("error") or (restored.get("message") or "").strip()[-500:]
                raise Fail("RestoreFailed", f"{restore_failed}: {reason}")
            if result and result.get("result"):
                fields["restoredBytes"] = result["result"].get("size_bytes")
        ended = _terminated(pod, last)
        if ended is not None:
            finish(ended, fields)
            return
    state = jobs.job_state(job)
    started = status.parse_iso(st.get("startTime"))
    limit = timeout + RESTORE_ALLOWANCE_SECONDS + GRACE_SECONDS
    if state.state == "Failed" or (started is not None and (status.now() - started).total_seconds() > limit):
        why = state.message or state.reason or "the time limit passed"
        raise Fail("TimeLimitExceeded", f"{late} ({why})")
    if fields:
        controller.patch_fields(ctx, obj, **{k: v for k, v in fields.items() if v is not None})


def follow(ctx: Ctx, obj: dict[str, Any], spec: DrillSpec) -> None:
    def finish(checked: dict[str, Any], fields: dict[str, Any]) -> None:
        outcome = _checker_result(checked.get("message"))
        if outcome is None:
            raise Fail("CheckerFailed", f"the checker ended without a result: "
                                        f"{(checked.get('message') or '').strip()[-300:]}")
        _record(ctx, obj, outcome, fields)

    follow_scratch_job(ctx, obj, "drill", CHECKER, spec.timeout, finish, run="the drill",
                       restore_failed="the restore into the scratch volume failed",
                       late=f"the drill did not finish within timeoutSeconds={spec.timeout}: MatrixOne never "
                            "answered SQL or the checks hung")


def _checker_result(message: str | None) -> dict[str, Any] | None:
    if not message:
        return None
    text = message.strip()
    start_ = text.find("{")
    try:
        doc = json.loads(text[start_:]) if start_ >= 0 else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "ok" in doc and "checks" in doc else None


def _record(ctx: Ctx, obj: dict[str, Any], outcome: dict[str, Any], fields: dict[str, Any]) -> None:
    restored = {"name": "restore", "ok": True,
                "detail": f"{fields.get('restoredBytes', '?')} bytes in {fields.get('restoreSeconds', '?')} s"}
    checks = [restored, *({k: (json.dumps(v) if k in ("expected", "got") and not isinstance(v, str) else v)
                           for k, v in c.items()} for c in outcome.get("checks") or [])]
    fields.update({"checks": checks, "startSeconds": outcome.get("start_seconds"),
                   "checkSeconds": outcome.get("check_seconds"), "moVersion": outcome.get("mo_version"),
                   "backupKind": outcome.get("backup_kind")})
    fields = {k: v for k, v in fields.items() if v is not None}
    passed = sum(1 for c in checks if c.get("ok"))
    if outcome.get("ok"):
        _finish(ctx, obj, True, "DrillPassed", f"all {len(checks)} checks passed on MatrixOne "
                                               f"{outcome.get('mo_version')}", **fields)
    else:
        _finish(ctx, obj, False, "CheckFailed", f"{len(checks) - passed} of {len(checks)} checks failed: "
                                                f"{outcome.get('reason')}", **fields)


def record_success_metric(ctx: Ctx, obj: dict[str, Any]) -> None:
    """A Completed (passed) drill seen at any time, e.g. by an operator just started: its source's
    last-success gauge is at least its completion time (else MORestoreDrillStale had no series
    after a restart until the next passing drill)."""
    st = obj.get("status") or {}
    try:
        done = status.parse_iso(st.get("completionTime"))
    except ValueError:
        return
    if st.get("phase") != "Completed" or done is None:
        return
    ns, source = obj["metadata"]["namespace"], str(st.get("source") or "")
    prev = ctx.metrics.get("mobackup_last_drill_success_timestamp_seconds", namespace=ns, source=source)
    if prev is None or done.timestamp() > prev:
        ctx.metrics.set("mobackup_last_drill_success_timestamp_seconds", done.timestamp(), namespace=ns, source=source)


def _finish(ctx: Ctx, obj: dict[str, Any], ok: bool, reason: str, message: str, **fields: Any) -> None:
    """Scratch objects first (a crash in between leaves a terminal drill that the next pass cleans)."""
    ns, _, _ = meta(obj)
    cleaned = cleanup(ctx, obj, record=False)
    ctx.metrics.inc("mobackup_successes_total" if ok else "mobackup_failures_total", kind=KIND, namespace=ns)
    source = fields.get("source") or (obj.get("status") or {}).get("source") or ""
    if ok:
        ctx.metrics.set("mobackup_last_drill_success_timestamp_seconds", status.now().timestamp(),
                        namespace=ns, source=source)
    else:
        ctx.metrics.inc("mobackup_drill_failures_total", namespace=ns, source=source)
    started = status.parse_iso((obj.get("status") or {}).get("startTime"))
    if started:
        ctx.metrics.observe("mobackup_run_duration_seconds", (status.now() - started).total_seconds(), kind=KIND)
    transition(ctx, obj, "Completed" if ok else "Failed", reason, message, cleanedUp=cleaned, **fields)


def cleanup(ctx: Ctx, obj: dict[str, Any], record: bool = True, action: str = "drill") -> bool:
    """Deletes the drill's (or a scoped restore's: `action`) Job, with its pod, and scratch PVC; True
    when none is left."""
    ns, _, _ = meta(obj)
    owner = owner_of(obj)
    gone = True
    try:
        ctx.kube.delete_job(ns, jobs.job_name(owner, action))
    except NotFound:
        pass
    except Exception as e:
        log.warning("drill %s/%s: deleting the Job failed: %s", ns, owner.name, e)
        gone = False
    try:
        if pvc_made_for(ctx.kube, ns, scratch_claim_name(owner), owner.uid):  # never another's of that name
            ctx.kube.delete_pvc(ns, scratch_claim_name(owner))
    except NotFound:
        pass
    except Exception as e:
        log.warning("drill %s/%s: deleting the scratch PVC failed: %s", ns, owner.name, e)
        gone = False
    if record and gone and (obj.get("status") or {}).get("phase") in status.TERMINAL:
        controller.patch_fields(ctx, obj, cleanedUp=True)
    return gone


# ------------------------------------------------------------------------------- schedules' drills

A_DRILL_OF = "mobackup.io/drill-of"  # the MOBackup a scheduled drill drills


def drill_name(backup: str) -> str:
    base = f"{backup[:240]}-drill"
    return base if len(base) <= 253 else f"{base[:240]}-{hashlib.sha256(base.encode()).hexdigest()[:8]}"


def schedule_drills(ctx: Ctx, sched: dict[str, Any], completed: list[dict[str, Any]], label: str) -> str | None:
    """MOBackupSchedule.spec.drill: drill the first Completed backup, then the newest one once
    `everyNthBackup` more completed since the last drilled one; keep the history limits. `completed`:
    the schedule's Completed MOBackups, newest first. Returns a note for the schedule's status."""
    d = (sched.get("spec") or {}).get("drill")
    if not isinstance(d, dict):
        return None
    ns, sname, uid = meta(sched)
    every = max(1, int(d.get("everyNthBackup") or 1))
    drills = ctx.kube.list_cr(KIND, ns, f"{label}={sname}")
    drilled = {(x["metadata"].get("annotations") or {}).get(A_DRILL_OF) for x in drills}
    note = None
    if completed:
        newest = completed[0]["metadata"]["name"]
        # Backups completed since the newest one that has (or had, per the schedule's status) a drill.
        last = (sched.get("status") or {}).get("lastDrilledBackup")
        names = [b["metadata"]["name"] for b in completed]
        since = names.index(last) if last in names else every  # a drilled backup pruned since: due
        if newest not in drilled and (last is None or since >= every):
            spec = {k: v for k, v in (d.get("template") or {}).items()
                    if k not in ("backupName", "backupID", "source", "storageRef")}
            body = {"apiVersion": models.API_VERSION, "kind": KIND,
                    "metadata": {"name": drill_name(newest), "namespace": ns,
                                 "labels": {label: sname, "app.kubernetes.io/managed-by": "mobackup-operator"},
                                 "annotations": {A_DRILL_OF: newest},
                                 "ownerReferences": [{"apiVersion": models.API_VERSION, "kind": "MOBackupSchedule",
                                                      "name": sname, "uid": uid, "controller": True,
                                                      "blockOwnerDeletion": True}]},
                    "spec": {**spec, "backupName": newest}}
            with contextlib.suppress(Conflict):
                ctx.kube.create_cr(KIND, ns, body)
                note = f"created MORestoreDrill {body['metadata']['name']}"
            controller.patch_fields(ctx, sched, lastDrilledBackup=newest)
    # History limits: the newest Completed and Failed drills are kept; running ones always.
    for phase, key in (("Completed", "successfulDrillsHistoryLimit"), ("Failed", "failedDrillsHistoryLimit")):
        limit = int(d.get(key, 3))
        done = sorted((x for x in drills if (x.get("status") or {}).get("phase") == phase
                       and not x["metadata"].get("deletionTimestamp")),
                      key=lambda x: x["metadata"].get("creationTimestamp") or "", reverse=True)
        for victim in done[limit:]:
            ctx.kube.delete_cr(KIND, ns, victim["metadata"]["name"])
    return note
