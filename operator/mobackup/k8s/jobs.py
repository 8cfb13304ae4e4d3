"""The Job that runs `mobackup agent ...` for a MOBackup / MORestore (backup, restore or delete).

Secrets reach the agent only as env from Secrets (`valueFrom.secretKeyRef`) or mounted files; the
args carry nothing secret. The data volume is mounted at a fixed path; the pod runs non-root with a
read-only root file system and an emptyDir /tmp (the engine's scratch space).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .models import API_VERSION, BackupSpec, JobOverrides, RestoreSpec, StorageSpec

DATA_MOUNT = "/data"
REPO_MOUNT = "/repo"
CA_MOUNT = "/etc/mobackup/ca"
TMP_MOUNT = "/tmp"
TERMINATION_LOG = "/dev/termination-log"
CONTAINER = "agent"

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "mobackup-operator"
L_KIND = "mobackup.io/kind"
L_NAME = "mobackup.io/name"
L_UID = "mobackup.io/uid"
L_ACTION = "mobackup.io/action"

DEFAULT_IMAGE = "mo-backup-operator:latest"
NON_ROOT_UID = 65532


@dataclass(frozen=True)
class OperatorDefaults:
    """Operator-wide settings for Jobs (env of the operator Deployment, see the chart)."""

    image: str = DEFAULT_IMAGE
    service_account: str | None = None
    job_defaults: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = ("mobackup",)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorDefaults:
        env = dict(os.environ if env is None else env)
        defaults: dict[str, Any] = {}
        if env.get("MOBACKUP_JOB_DEFAULTS"):
            try:
                defaults = dict(json.loads(env["MOBACKUP_JOB_DEFAULTS"]))
            except (ValueError, TypeError):
                defaults = {}
        command = tuple(env.get("MOBACKUP_AGENT_COMMAND", "mobackup").split())
        return cls(image=env.get("MOBACKUP_AGENT_IMAGE") or DEFAULT_IMAGE,
                   service_account=env.get("MOBACKUP_JOB_SERVICE_ACCOUNT") or None,
                   job_defaults=defaults, command=command or ("mobackup",))


@dataclass(frozen=True)
class Owner:
    kind: str  # MOBackup | MORestore
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def job_name(owner: Owner, action: str) -> str:
    """Deterministic (so a restarted operator finds it) and at most 63 characters (label value)."""
    digest = hashlib.sha256(f"{owner.uid}/{action}".encode()).hexdigest()[:6]
    prefix = f"{owner.name}"[: 63 - len(action) - 8].rstrip("-.")
    return f"{prefix}-{action}-{digest}"


def repo_url(storage: StorageSpec) -> str:
    if storage.s3:
        prefix = storage.s3.prefix.strip("/")
        return f"s3://{storage.s3.bucket}/{prefix}" if prefix else f"s3://{storage.s3.bucket}"
    assert storage.pvc
    return f"{REPO_MOUNT}/{storage.pvc.path}".rstrip("/.") if storage.pvc.path != "." else REPO_MOUNT


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def storage_env_and_volumes(storage: StorageSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                             list[dict[str, Any]]]:
    """(env, volumes, volumeMounts) that let the agent open the repository."""
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if storage.s3:
        s3 = storage.s3
        if s3.endpoint:
            env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
        env.append({"name": "AWS_REGION", "value": s3.region})
        if s3.path_style:
            env.append({"name": "MOBACKUP_S3_PATH_STYLE", "value": "1"})
        if s3.credentials_secret:
            env.append(_secret_env("AWS_ACCESS_KEY_ID", s3.credentials_secret, s3.access_key_key))
            env.append(_secret_env("AWS_SECRET_ACCESS_KEY", s3.credentials_secret, s3.secret_key_key))
        ca = s3.ca_configmap or s3.ca_secret
        if ca:
            src: dict[str, Any]
            if s3.ca_configmap:
                src = {"configMap": {"name": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]}}
            else:
                src = {"secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]}}
            volumes.append({"name": "ca-bundle", **src})
            mounts.append({"name": "ca-bundle", "mountPath": CA_MOUNT, "readOnly": True})
            env.append({"name": "AWS_CA_BUNDLE", "value": f"{CA_MOUNT}/ca.crt"})
    else:
        assert storage.pvc
        volumes.append({"name": "repository", "persistentVolumeClaim": {"claimName": storage.pvc.claim}})
        mounts.append({"name": "repository", "mountPath": REPO_MOUNT})
    if storage.encryption_key:
        env.append(_secret_env("MOBACKUP_ENCRYPTION_KEY", storage.encryption_key.name,
                               storage.encryption_key.key))
    return env, volumes, mounts


def _data_path(path: str) -> str:
    return DATA_MOUNT if path in ("", ".") else f"{DATA_MOUNT}/{path}"


def _merge_overrides(defaults: OperatorDefaults, overrides: JobOverrides) -> dict[str, Any]:
    merged = dict(defaults.job_defaults)
    merged.update({k: v for k, v in overrides.raw.items() if v is not None})
    return merged


def build_job(*, owner: Owner, action: str, args: list[str], env: list[dict[str, Any]],
              volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], overrides: JobOverrides,
              defaults: OperatorDefaults) -> dict[str, Any]:
    """The Job manifest. `args` follow `mobackup agent <action>`; they must hold no secret."""
    o = _merge_overrides(defaults, overrides)
    labels = {MANAGED_BY: MANAGER, L_KIND: owner.kind.lower(), L_NAME: owner.name[:63].rstrip("-."),
              L_UID: owner.uid, L_ACTION: action, **(o.get("labels") or {})}
    annotations = dict(o.get("annotations") or {})
    name = job_name(owner, action)
    common_args = ["--kind", owner.kind, "--name", owner.name, "--namespace", owner.namespace,
                   "--termination-log", TERMINATION_LOG]
    container_sc = o.get("containerSecurityContext") or {
        "runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]}}
    pod_sc = o.get("securityContext") or {
        "runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID, "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"}}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": o.get("image") or defaults.image,
        "command": [*defaults.command, "agent", action],
        "args": [*common_args, *args],
        "env": [{"name": "HOME", "value": TMP_MOUNT}, {"name": "TMPDIR", "value": TMP_MOUNT},
                {"name": "MOBACKUP_JOB_NAME", "value": name}, *env],
        "volumeMounts": [{"name": "tmp", "mountPath": TMP_MOUNT}, *mounts],
        "securityContext": container_sc,
        "terminationMessagePath": TERMINATION_LOG,
        # The result JSON is in the file; the log tail is the fallback when the agent died early.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if o.get("imagePullPolicy"):
        container["imagePullPolicy"] = o["imagePullPolicy"]
    if o.get("resources"):
        container["resources"] = o["resources"]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
        "securityContext": pod_sc,
        "automountServiceAccountToken": True,  # progress patches need the API
    }
    sa = o.get("serviceAccountName") or defaults.service_account
    if sa:
        pod_spec["serviceAccountName"] = sa
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        if o.get(key):
            pod_spec[key] = o[key]
    job_spec: dict[str, Any] = {
        "backoffLimit": int(o.get("backoffLimit", 1)),
        "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
    }
    for key in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        if o.get(key) is not None:
            job_spec[key] = int(o[key])
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": owner.namespace, "labels": labels, "annotations": annotations,
                     "ownerReferences": [owner.reference()]},
        "spec": job_spec,
    }


def backup_job(owner: Owner, spec: BackupSpec, storage: StorageSpec, *, base_id: str | None,
               defaults: OperatorDefaults, claim: str | None = None,
               mo_version: str | None = None) -> dict[str, Any]:
    """`claim` replaces the source PVC (the clone of a VolumeSnapshot)."""
    env, volumes, mounts = storage_env_and_volumes(storage)
    volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": claim or spec.volume.claim,
                                                              "readOnly": True}})
    mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
    args = ["--repo", repo_url(storage), "--data-dir", _data_path(spec.volume.path),
            "--source", spec.source_name, "--type", spec.type.lower(),
            "--compression", storage.compression]
    if spec.parallelism:
        args += ["--parallelism", str(spec.parallelism)]
    if base_id:
        args += ["--base", base_id]
    if spec.bandwidth_limit:
        args += ["--bandwidth-limit", str(spec.bandwidth_limit)]
    if mo_version:
        args += ["--mo-version", mo_version]
    return build_job(owner=owner, action="backup", args=args, env=env, volumes=volumes, mounts=mounts,
                     overrides=spec.job, defaults=defaults)


def restore_job(owner: Owner, spec: RestoreSpec, storage: StorageSpec, backup_id: str,
                defaults: OperatorDefaults) -> dict[str, Any]:
    env, volumes, mounts = storage_env_and_volumes(storage)
    volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": spec.volume.claim}})
    mounts.append({"name": "data", "mountPath": DATA_MOUNT})
    args = ["--repo", repo_url(storage), "--backup-id", backup_id, "--target", _data_path(spec.volume.path)]
    if spec.parallelism:
        args += ["--parallelism", str(spec.parallelism)]
    if spec.overwrite:
        args.append("--overwrite")
    if spec.hostname:
        args += ["--hostname", spec.hostname]
    return build_job(owner=owner, action="restore", args=args, env=env, volumes=volumes, mounts=mounts,
                     overrides=spec.job, defaults=defaults)


def delete_job(owner: Owner, storage: StorageSpec, backup_id: str, overrides: JobOverrides,
               defaults: OperatorDefaults) -> dict[str, Any]:
    env, volumes, mounts = storage_env_and_volumes(storage)
    args = ["--repo", repo_url(storage), "--backup-id", backup_id]
    return build_job(owner=owner, action="delete", args=args, env=env, volumes=volumes, mounts=mounts,
                     overrides=overrides, defaults=defaults)


# ---------------------------------------------------------------------------------------- Job state

@dataclass(frozen=True)
class JobState:
    state: str  # "Running" | "Succeeded" | "Failed"
    reason: str
    message: str
    attempts: int


def job_state(job: dict[str, Any]) -> JobState:
    st = job.get("status") or {}
    attempts = int(st.get("succeeded") or 0) + int(st.get("failed") or 0) + int(st.get("active") or 0)
    for c in st.get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            return JobState("Succeeded", "JobComplete", c.get("message") or "", attempts)
        if c.get("type") == "Failed":
            return JobState("Failed", c.get("reason") or "JobFailed", c.get("message") or "", attempts)
    return JobState("Running", "JobRunning", "", attempts)


def termination_message(pod: dict[str, Any]) -> str | None:
    """The agent container's termination message (the result JSON, or the log tail on a crash)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != CONTAINER:
            continue
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term and term.get("message"):
            return str(term["message"])
    return None


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The agent's result JSON from a termination message; None when it is not one."""
    if not message:
        return None
    text = message.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        doc = json.loads(text[start:])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "ok" in doc else None
