"""The Job that runs `mobackup agent ...` for a MOBackup / MORestore (backup, restore or delete).

Secrets reach the agent only as env from Secrets (`valueFrom.secretKeyRef`) or mounted files; the
args carry nothing secret. The data volume is mounted at a fixed path; the pod runs non-root with a
read-only root file system and an emptyDir /tmp (the engine's scratch space).

`spec.job` is input from whoever may create an MOBackup/MORestore, and the pod it shapes mounts the
data volume: it may not pick another image, ServiceAccount or priority class unless the operator's
allow-lists (chart value `jobOverrides`) name it, its security contexts are merged onto the hardened
defaults and may not leave the `restricted` Pod Security Standard (nor drop the read-only root file
system, nor use group 0), its annotations are limited (SANDBOX_ANNOTATIONS never, keys other than
plain names only when allow-listed), and its labels never replace the operator's (`JobPolicyError` otherwise).

The pods get no API token (automountServiceAccountToken: false): a Job reports only through its
termination message, which the operator parses, so nothing a Job runs can write the status the
operator acts on (the Job ServiceAccount has no rights at all).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .models import API_VERSION, BackupSpec, JobOverrides, RestoreSpec, SharedS3, SqlEndpoint, StorageSpec

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
DEFAULT_TMP_SIZE_LIMIT = "1Gi"
DEFAULT_EPHEMERAL_REQUEST = "128Mi"

# Label keys a user's spec.job.labels may not set: the operator's own (it finds its Jobs by them)
# and the Job controller's (a clash breaks the Job's selector).
RESERVED_LABEL_PREFIXES = ("mobackup.io/", "batch.kubernetes.io/", "app.kubernetes.io/")
RESERVED_LABELS = frozenset({"job-name", "controller-uid"})

POD_SECURITY_DEFAULTS: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID, "fsGroup": NON_ROOT_UID,
    "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_DEFAULTS: dict[str, Any] = {
    "runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


class JobPolicyError(ValueError):
    """spec.job asks for something the operator does not allow; str() says what and why."""


@dataclass(frozen=True)
class OperatorDefaults:
    """Operator-wide settings for Jobs (env of the operator Deployment, see the chart)."""

    image: str = DEFAULT_IMAGE
    service_account: str | None = None
    job_defaults: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = ("mobackup",)
    # Shell-style patterns of spec.job.image / spec.job.serviceAccountName values that runs may set
    # (MOBACKUP_JOB_ALLOWED_IMAGES / _SERVICE_ACCOUNTS, JSON lists). Empty: no override at all.
    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()
    # spec.job.priorityClassName values (besides the chart's jobDefaults one) and prefixed
    # spec.job.annotations keys that runs may set (MOBACKUP_JOB_ALLOWED_PRIORITY_CLASSES / _ANNOTATIONS).
    allowed_priority_classes: tuple[str, ...] = ()
    allowed_annotations: tuple[str, ...] = ()
    # Buckets (shell patterns) that storages without keys may reach as the pod's own identity
    # (MOBACKUP_AMBIENT_CREDENTIAL_BUCKETS). Empty: every S3 storage must name its keys.
    ambient_credential_buckets: tuple[str, ...] = ()

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
                   job_defaults=defaults, command=command or ("mobackup",),
                   allowed_images=_string_list(env.get("MOBACKUP_JOB_ALLOWED_IMAGES")),
                   allowed_service_accounts=_string_list(env.get("MOBACKUP_JOB_ALLOWED_SERVICE_ACCOUNTS")),
                   allowed_priority_classes=_string_list(env.get("MOBACKUP_JOB_ALLOWED_PRIORITY_CLASSES")),
                   allowed_annotations=_string_list(env.get("MOBACKUP_JOB_ALLOWED_ANNOTATIONS")),
                   ambient_credential_buckets=_string_list(env.get("MOBACKUP_AMBIENT_CREDENTIAL_BUCKETS")))


def _string_list(text: str | None) -> tuple[str, ...]:
    """A JSON list of strings (what the chart writes) or a comma-separated list; junk allows nothing."""
    if not text or not text.strip():
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        value = text.split(",")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(str(v).strip() for v in value if isinstance(v, str) and v.strip())


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


def run_job_names(owner: Owner) -> tuple[str, ...]:
    """Every name the Jobs of a run can have (job_name is deterministic): the only Jobs the operator
    follows or deletes for it, whatever its status names. Not the delete Job (data deletion)."""
    actions = {"MOBackup": S3_STEPS, "MORestore": (*S3_RESTORE_STEPS, "scoped", "pitr"), "MORestoreDrill": ("drill",)}
    return tuple(job_name(owner, a) for a in actions.get(owner.kind, ()))


def repo_url(storage: StorageSpec, mount: str = REPO_MOUNT) -> str:
    if storage.s3:
        prefix = storage.s3.prefix.strip("/")
        return f"s3://{storage.s3.bucket}/{prefix}" if prefix else f"s3://{storage.s3.bucket}"
    assert storage.pvc
    return f"{mount}/{storage.pvc.path}".rstrip("/.") if storage.pvc.path != "." else mount


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


# Env names of a repository's settings: the source's (AWS_*, as every tool reads them) and a copy
# target's (MOBACKUP_TO_*, as `mobackup copy` reads them: cli/repos.py).
SOURCE_ENV = {"endpoint": "AWS_ENDPOINT_URL", "region": "AWS_REGION", "path_style": "MOBACKUP_S3_PATH_STYLE",
              "key_id": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "ca": "AWS_CA_BUNDLE",
              "encryption": "MOBACKUP_ENCRYPTION_KEY"}
TARGET_ENV = {"endpoint": "MOBACKUP_TO_ENDPOINT", "region": "MOBACKUP_TO_REGION",
              "path_style": "MOBACKUP_TO_PATH_STYLE", "key_id": "MOBACKUP_TO_ACCESS_KEY_ID",
              "secret": "MOBACKUP_TO_SECRET_ACCESS_KEY", "ca": "MOBACKUP_TO_CA_BUNDLE",
              "encryption": "MOBACKUP_TO_ENCRYPTION_KEY"}
TARGET_REPO_MOUNT = "/repo-to"


def storage_env_and_volumes(storage: StorageSpec, target: bool = False) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, volumeMounts) that let the agent open the repository; `target`: as the target of
    a copy (TARGET_ENV names, its own volume names and mount paths)."""
    names, suffix = (TARGET_ENV, "-to") if target else (SOURCE_ENV, "")
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if storage.s3:
        s3 = storage.s3
        if s3.endpoint:
            env.append({"name": names["endpoint"], "value": s3.endpoint})
        env.append({"name": names["region"], "value": s3.region})
        if s3.path_style:
            env.append({"name": names["path_style"], "value": "1"})
        if s3.credentials_secret:
            env.append(secret_env(names["key_id"], s3.credentials_secret, s3.access_key_key))
            env.append(secret_env(names["secret"], s3.credentials_secret, s3.secret_key_key))
        ca = s3.ca_configmap or s3.ca_secret
        if ca:
            src: dict[str, Any]
            if s3.ca_configmap:
                src = {"configMap": {"name": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]}}
            else:
                src = {"secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]}}
            volumes.append({"name": f"ca-bundle{suffix}", **src})
            mounts.append({"name": f"ca-bundle{suffix}", "mountPath": CA_MOUNT + suffix, "readOnly": True})
            env.append({"name": names["ca"], "value": f"{CA_MOUNT}{suffix}/ca.crt"})
    else:
        assert storage.pvc
        volumes.append({"name": f"repository{suffix}", "persistentVolumeClaim": {"claimName": storage.pvc.claim}})
        mounts.append({"name": f"repository{suffix}", "mountPath": TARGET_REPO_MOUNT if target else REPO_MOUNT})
    if storage.encryption_key:
        env.append(secret_env(names["encryption"], storage.encryption_key.name, storage.encryption_key.key))
    return env, volumes, mounts


def _data_path(path: str) -> str:
    return DATA_MOUNT if path in ("", ".") else f"{DATA_MOUNT}/{path}"


# Keys only the chart's jobDefaults may set: a run's spec.job cannot (the CRD has no such fields;
# this also holds for objects written before a schema change).
DEFAULTS_ONLY = ("env", "envFrom", "podLabels", "podAnnotations", "tmpSizeLimit")


def _merge_overrides(defaults: OperatorDefaults, overrides: JobOverrides) -> dict[str, Any]:
    merged = dict(defaults.job_defaults)
    merged.update({k: v for k, v in overrides.raw.items() if v is not None and k not in DEFAULTS_ONLY})
    # Pull Secrets add up: the chart's (the operator image's registry) and the run's.
    secrets = [*(defaults.job_defaults.get("imagePullSecrets") or []),
               *(overrides.raw.get("imagePullSecrets") or [])]
    merged["imagePullSecrets"] = [dict(t) for t in dict.fromkeys(
        tuple(sorted(x.items())) for x in secrets if isinstance(x, dict) and x.get("name"))]
    return merged


def _allowed(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _refuse_unlisted(field: str, value: Any, default: Any, patterns: tuple[str, ...], what: str, key: str) -> None:
    """`value` of spec.job.<field> must be the operator's default or match its allow-list (chart value
    jobOverrides.<key>)."""
    if value and value != default and not _allowed(str(value), patterns):
        plural = f"{what}es" if what.endswith("s") else f"{what}s"
        raise JobPolicyError(f"spec.job.{field} {value!r} is not allowed: the operator allows "
                             + (f"only {plural} matching {', '.join(patterns)}" if patterns else f"no {what} override")
                             + f" (chart value jobOverrides.{key})")


def _check_allow_list(overrides: JobOverrides, defaults: OperatorDefaults) -> None:
    _refuse_unlisted("image", overrides.get("image"), defaults.image, defaults.allowed_images, "image",
                     "allowedImages")
    _refuse_unlisted("serviceAccountName", overrides.get("serviceAccountName"), defaults.service_account,
                     defaults.allowed_service_accounts, "ServiceAccount", "allowedServiceAccounts")
    # A priority class can preempt other pods (system-node-critical evicts workloads for a backup).
    _refuse_unlisted("priorityClassName", overrides.get("priorityClassName"),
                     defaults.job_defaults.get("priorityClassName"), defaults.allowed_priority_classes,
                     "priority class", "allowedPriorityClasses")
    _check_annotations(overrides.get("annotations"), defaults)
    _check_placement(overrides)


# Node labels and taints of control-plane nodes: where the API server's keys and etcd live.
CONTROL_PLANE_KEYS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


def _check_placement(overrides: JobOverrides) -> None:
    """A run's spec.job may steer its pod to nodes, but not onto control-plane nodes: no toleration of
    their taints (nor a blanket one, which tolerates every taint), no node selector or affinity term
    on their role labels. The chart's jobDefaults may (the installer's choice)."""
    for i, toleration in enumerate(overrides.get("tolerations") or []):
        key = str((toleration or {}).get("key") or "")
        if key in CONTROL_PLANE_KEYS or (not key and (toleration or {}).get("operator") == "Exists"):
            raise JobPolicyError(f"spec.job.tolerations[{i}] is not allowed: it tolerates the control-plane "
                                 f"taint{'' if key else ' (an empty key with Exists tolerates every taint)'}")
    node_affinity = (overrides.get("affinity") or {}).get("nodeAffinity") or {}
    required = (node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms")
    terms = [*(required or []), *(p.get("preference") or {} for p in
                                  node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or [])]
    chosen = {str(k) for k in (overrides.get("nodeSelector") or {})} | {
        str(e.get("key")) for t in terms for e in (t or {}).get("matchExpressions") or []
        if e.get("operator") in ("In", "Exists")}  # NotIn/DoesNotExist keep pods away: fine
    for key in CONTROL_PLANE_KEYS:
        if key in chosen:
            raise JobPolicyError(f"spec.job.nodeSelector/affinity on {key} is not allowed: a run never places its "
                                 "Job on control-plane nodes")


# Pod annotations that change the sandbox (AppArmor, seccomp, sysctls, extra networks through Multus,
# the container runtime's own knobs): never from a run's spec, whatever the allow-list says.
SANDBOX_ANNOTATIONS = ("container.apparmor.security.beta.kubernetes.io/", "seccomp.security.alpha.kubernetes.io/",
                       "container.seccomp.security.alpha.kubernetes.io/", "security.alpha.kubernetes.io/",
                       "k8s.v1.cni.cncf.io/", "v1.multus-cni.io/", "io.kubernetes.cri-o.", "io.kubernetes.cri.",
                       "io.containerd.", "io.katacontainers.")
PLAIN_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?$")


def _check_annotations(annotations: Any, defaults: OperatorDefaults) -> None:
    """spec.job.annotations reach the pod. A plain key (`note`, `team`: no '.', no '/') is inert:
    Kubernetes, runtimes and CNIs only read dotted or prefixed keys. Any other key needs the chart's
    allow-list (jobOverrides.allowedAnnotations); SANDBOX_ANNOTATIONS are refused even then."""
    for key in map(str, annotations or {}):
        if key.startswith(SANDBOX_ANNOTATIONS):
            raise JobPolicyError(f"spec.job.annotations[{key!r}] is not allowed: annotations of that prefix "
                                 "change the pod's sandbox")
        if not PLAIN_KEY.match(key) and not _allowed(key, defaults.allowed_annotations):
            raise JobPolicyError(
                f"spec.job.annotations[{key!r}] is not allowed: the operator allows plain keys (no '.' or '/') "
                + (f"and keys matching {', '.join(defaults.allowed_annotations)}" if defaults.allowed_annotations
                   else "only")
                + " (chart value jobOverrides.allowedAnnotations)")


# SELinux types the restricted (and baseline) Pod Security Standard allows; spc_t escapes confinement.
SELINUX_TYPES = ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")


def _refuse_weakening(sc: dict[str, Any], where: str) -> None:
    """The restricted Pod Security Standard's rules that a merge could still break, plus the
    hardened defaults it does not demand (read-only root file system, no group 0)."""
    if sc.get("runAsNonRoot") is False:
        raise JobPolicyError(f"{where}.runAsNonRoot: false is not allowed (the agent runs as non-root)")
    if sc.get("runAsUser") == 0:
        raise JobPolicyError(f"{where}.runAsUser: 0 (root) is not allowed")
    for key in ("runAsGroup", "fsGroup"):
        if sc.get(key) == 0:
            raise JobPolicyError(f"{where}.{key}: 0 (the root group) is not allowed")
    if 0 in (sc.get("supplementalGroups") or []):
        raise JobPolicyError(f"{where}.supplementalGroups: 0 (the root group) is not allowed")
    if sc.get("readOnlyRootFilesystem") is False:
        raise JobPolicyError(f"{where}.readOnlyRootFilesystem: false is not allowed (the agent writes only /tmp)")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type") not in (None, *SELINUX_TYPES) or selinux.get("user") or selinux.get("role"):
        raise JobPolicyError(f"{where}.seLinuxOptions is not allowed beyond type "
                             f"{'/'.join(t for t in SELINUX_TYPES if t)} (no user, no role)")
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        raise JobPolicyError(f"{where}.appArmorProfile.type {apparmor!r} is not allowed (RuntimeDefault or Localhost)")
    if sc.get("sysctls"):
        raise JobPolicyError(f"{where}.sysctls is not allowed (the agent needs none)")
    if sc.get("allowPrivilegeEscalation") is True:
        raise JobPolicyError(f"{where}.allowPrivilegeEscalation: true is not allowed")
    if sc.get("privileged") is True:
        raise JobPolicyError(f"{where}.privileged: true is not allowed")
    if (sc.get("capabilities") or {}).get("add"):
        raise JobPolicyError(f"{where}.capabilities.add is not allowed (the agent drops ALL capabilities)")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp not in (None, "RuntimeDefault", "Localhost"):
        raise JobPolicyError(f"{where}.seccompProfile.type {seccomp!r} is not allowed "
                             "(RuntimeDefault or Localhost)")
    if sc.get("procMount") not in (None, "Default"):
        raise JobPolicyError(f"{where}.procMount {sc['procMount']!r} is not allowed")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        raise JobPolicyError(f"{where}.windowsOptions.hostProcess is not allowed")


def _merge_security(defaults: dict[str, Any], given: Any, where: str) -> dict[str, Any]:
    if given in (None, {}):
        return json.loads(json.dumps(defaults))
    if not isinstance(given, dict):
        raise JobPolicyError(f"{where} must be an object")
    _refuse_weakening(given, where)
    merged = {**json.loads(json.dumps(defaults)), **given}
    if "capabilities" in defaults:
        drop = list((given.get("capabilities") or {}).get("drop") or [])
        merged["capabilities"] = {"drop": ["ALL", *[d for d in drop if d != "ALL"]]}
    return merged


def security_contexts(o: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod, container) security contexts: the given ones merged onto the hardened defaults."""
    pod = _merge_security(POD_SECURITY_DEFAULTS, o.get("securityContext"), "spec.job.securityContext")
    container = _merge_security(CONTAINER_SECURITY_DEFAULTS, o.get("containerSecurityContext"),
                                "spec.job.containerSecurityContext")
    return pod, container


def _user_labels(labels: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (labels or {}).items()
            if k not in RESERVED_LABELS and not str(k).startswith(RESERVED_LABEL_PREFIXES)}


def check_overrides(overrides: JobOverrides, defaults: OperatorDefaults) -> None:
    """Raise JobPolicyError when a run's spec.job is not allowed (before anything is started)."""
    _check_allow_list(overrides, defaults)
    security_contexts(_merge_overrides(defaults, overrides))


def _with_ephemeral_request(resources: Any) -> dict[str, Any]:
    """The agent's resources, with an ephemeral-storage request (its /tmp) unless one is set."""
    out = json.loads(json.dumps(resources or {}))
    requests = out.setdefault("requests", {})
    requests.setdefault("ephemeral-storage", DEFAULT_EPHEMERAL_REQUEST)
    return out


def build_job(*, owner: Owner, action: str, args: list[str], env: list[dict[str, Any]],
              volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], overrides: JobOverrides,
              defaults: OperatorDefaults, name_suffix: str | None = None) -> dict[str, Any]:
    """The Job manifest. `args` follow `mobackup agent <action>`; they must hold no secret.
    Raises JobPolicyError when `overrides` ask for what the operator does not allow."""
    _check_allow_list(overrides, defaults)
    o = _merge_overrides(defaults, overrides)
    pod_sc, container_sc = security_contexts(o)
    name = job_name(owner, name_suffix or action)
    own_labels = {MANAGED_BY: MANAGER, L_KIND: owner.kind.lower(), L_NAME: owner.name[:63].rstrip("-."),
                  L_UID: owner.uid, L_ACTION: action,
                  "app.kubernetes.io/name": "mobackup-agent", "app.kubernetes.io/component": action,
                  "app.kubernetes.io/instance": owner.name[:63].rstrip("-."),
                  "app.kubernetes.io/part-of": "mo-backup-operator"}
    # The operator's labels win: it finds its Jobs (and their owner) by them.
    labels = {**_user_labels(o.get("labels")), **own_labels}
    annotations = {str(k): str(v) for k, v in (o.get("annotations") or {}).items()}
    pod_labels = {**_user_labels(o.get("podLabels")), **labels}
    pod_annotations = {**{str(k): str(v) for k, v in (o.get("podAnnotations") or {}).items()}, **annotations}
    # No --kind/--name: the agent patches nothing (no API token); its result is the termination message.
    common_args = ["--termination-log", TERMINATION_LOG]
    own_env = [{"name": "HOME", "value": TMP_MOUNT}, {"name": "TMPDIR", "value": TMP_MOUNT},
               {"name": "MOBACKUP_JOB_NAME", "value": name}, *env]
    taken = {e["name"] for e in own_env}
    # The chart's env (proxy settings...) first; it cannot shadow what the operator sets.
    extra_env = [e for e in o.get("env") or [] if isinstance(e, dict) and e.get("name") not in taken]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": o.get("image") or defaults.image,
        "command": [*defaults.command, "agent", action],
        "args": [*common_args, *args],
        "env": [*extra_env, *own_env],
        "volumeMounts": [{"name": "tmp", "mountPath": TMP_MOUNT}, *mounts],
        "securityContext": container_sc,
        "resources": _with_ephemeral_request(o.get("resources")),
        "terminationMessagePath": TERMINATION_LOG,
        # The result JSON is in the file; the log tail is the fallback when the agent died early.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if o.get("envFrom"):
        container["envFrom"] = list(o["envFrom"])
    if o.get("imagePullPolicy"):
        container["imagePullPolicy"] = o["imagePullPolicy"]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": str(o.get("tmpSizeLimit") or DEFAULT_TMP_SIZE_LIMIT)}},
                    *volumes],
        "securityContext": pod_sc,
        # Nothing in a Job talks to the API: a token would let it forge the status the operator acts on.
        "automountServiceAccountToken": False,
    }
    sa = o.get("serviceAccountName") or defaults.service_account
    if sa:
        pod_spec["serviceAccountName"] = sa
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        if o.get(key):
            pod_spec[key] = o[key]
    job_spec: dict[str, Any] = {
        "backoffLimit": int(o.get("backoffLimit", 1)),
        "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations}, "spec": pod_spec},
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


def lock_args(storage: StorageSpec, flag: str = "--") -> list[str]:
    """spec.objectLock as the agent's flags: a repository the run creates gets it, an existing one
    must have been created with it (engine/objectlock.py setting_mismatch)."""
    lock = storage.object_lock
    return [] if lock is None else [f"{flag}lock-days", repr(lock.days), f"{flag}lock-mode", lock.mode]


def backup_job(owner: Owner, spec: BackupSpec, storage: StorageSpec, *, base_id: str | None,
               defaults: OperatorDefaults, claim: str | None = None,
               mo_version: str | None = None, online: OnlinePlacement | None = None,
               pitr_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """`claim` replaces the source PVC (the clone of a VolumeSnapshot). `online`: MatrixOne's BACKUP
    stages into the volume, which the Job then writes (stores and removes the staging)."""
    env, volumes, mounts = storage_env_and_volumes(storage)
    read_only = online is None
    volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": claim or spec.volume.claim,
                                                              "readOnly": read_only}})
    mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": read_only})
    args = ["--repo", repo_url(storage), "--data-dir", _data_path(spec.volume.path),
            "--source", spec.source_name, "--type", spec.type.lower(),
            "--compression", storage.compression, *lock_args(storage)]
    if online is not None and spec.sql is not None:
        args += ["--online", "--sql-host", spec.sql.host, "--sql-port", str(spec.sql.port),
                 "--sql-user", spec.sql.user, "--server-data-dir", online.server_data_dir]
        env.append(secret_env("MOBACKUP_SQL_PASSWORD", spec.sql.password.name, spec.sql.password.key))
    if spec.parallelism:
        args += ["--parallelism", str(spec.parallelism)]
    if base_id:
        args += ["--base", base_id]
    if spec.bandwidth_limit:
        args += ["--bandwidth-limit", str(spec.bandwidth_limit)]
    if mo_version:
        args += ["--mo-version", mo_version]
    if pitr_record is not None:  # the PITR windows, read before MatrixOne was stopped (k8s/pointintime.py)
        args += ["--pitr-record", json.dumps(pitr_record, separators=(",", ":"))]
    job = build_job(owner=owner, action="backup", args=args, env=env, volumes=volumes, mounts=mounts,
                    overrides=spec.job, defaults=defaults)
    if online is not None and online.pod_labels:
        # A ReadWriteOnce volume is usable only on the node of MatrixOne's pod: run there.
        pod = job["spec"]["template"]["spec"]
        affinity = pod.setdefault("affinity", {}).setdefault("podAffinity", {})
        affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(
            {"labelSelector": {"matchLabels": dict(online.pod_labels)}, "topologyKey": "kubernetes.io/hostname"})
    return job


# ------------------------------------------------------------- MatrixOne with table data in S3

# How the MatrixOne operator names the keys in a sharedStorage.s3.secretRef Secret.
SHARED_KEY_ID, SHARED_SECRET_KEY = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"
STAGING_DIR = "mobackup-staging"


def staging_url(spec: BackupSpec, shared: SharedS3) -> str:
    """Where MatrixOne's BACKUP stages: spec.source.staging.path, else <bucket>/<folder>/mobackup-staging
    (the cluster's own bucket, beside its data/ and etl/, so its keys can write there)."""
    if spec.staging_path:
        bucket, prefix = spec.staging_path
        return f"s3://{bucket}/{prefix}".rstrip("/")
    return shared.url(STAGING_DIR)


def _shared_s3_args(flag: str, shared: SharedS3) -> list[str]:
    args = [f"--{flag}-region", shared.region]
    if shared.endpoint:
        args += [f"--{flag}-endpoint", shared.endpoint]
    if shared.path_style:
        args.append(f"--{flag}-path-style")
    return args


def _shared_env(prefix: str, shared: SharedS3) -> list[dict[str, Any]]:
    return [secret_env(f"{prefix}ACCESS_KEY_ID", shared.secret, SHARED_KEY_ID),
            secret_env(f"{prefix}SECRET_ACCESS_KEY", shared.secret, SHARED_SECRET_KEY)]


S3_STEPS = ("backup", "stage", "ingest", "commit")


def s3_backup_job(owner: Owner, spec: BackupSpec, storage: StorageSpec, shared: SharedS3, sql: SqlEndpoint | None,
                  *, step: str, defaults: OperatorDefaults, base_id: str | None = None,
                  run_id: str | None = None, pitr_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """One step of the backup of table data in S3. `backup`: all in one pod (parallelPods 1).
    Scaled out: `stage` (MatrixOne's BACKUP into the staging prefix, the run record), `ingest` (an
    Indexed Job of parallelPods pods, each storing its shard of the staged objects), `commit` (lists
    the backup once every shard's part is there). No volume; only `backup`/`stage` talk SQL."""
    assert step in S3_STEPS
    env, volumes, mounts = storage_env_and_volumes(storage)
    env += _shared_env("MOBACKUP_STAGING_", shared)
    args = ["--repo", repo_url(storage), "--staging", staging_url(spec, shared), *_shared_s3_args("staging", shared)]
    if spec.staging_server_endpoint:
        args += ["--staging-server-endpoint", spec.staging_server_endpoint]
    if step in ("backup", "stage"):
        assert sql is not None
        args += ["--source", spec.source_name, "--type", spec.type.lower(), "--compression", storage.compression,
                 *lock_args(storage), "--sql-host", sql.host, "--sql-port", str(sql.port), "--sql-user", sql.user]
        env.append(secret_env("MOBACKUP_SQL_PASSWORD", sql.password.name, sql.password.key))
        if base_id:
            args += ["--base", base_id]
        if step == "stage":
            args.append("--stage-only")
        if pitr_record is not None and step == "backup":  # the windows (k8s/pointintime.py); the history is
            # read from the cluster's SHARED prefix with the cluster's keys (engine/pitr_history_s3.py)
            args += ["--pitr-record", json.dumps(pitr_record, separators=(",", ":")), "--shared-s3",
                     shared.data_url, *_shared_s3_args("shared-s3", shared)]
            env += _shared_env("MOBACKUP_SHARED_", shared)
    if step in ("ingest", "commit"):
        assert run_id
        args += ["--run", run_id, "--shards", str(spec.parallel_pods)]
    if spec.parallelism and step != "commit":
        args += ["--parallelism", str(spec.parallelism)]
    if spec.bandwidth_limit and step in ("backup", "ingest"):
        args += ["--bandwidth-limit", str(spec.bandwidth_limit)]
    job = build_job(owner=owner, action="commit" if step == "commit" else "backup", args=args, env=env,
                    volumes=volumes, mounts=mounts, overrides=spec.job, defaults=defaults, name_suffix=step)
    if step == "ingest":
        _indexed(job, spec.parallel_pods)
    return job


S3_RESTORE_STEPS = ("restore", "shards", "finalize")


def s3_restore_job(owner: Owner, spec: RestoreSpec, storage: StorageSpec, backup_id: str, shared: SharedS3,
                   check_stopped: list[str], defaults: OperatorDefaults, step: str = "restore") -> dict[str, Any]:
    """Restore into the SHARED key prefix; the ID allocator state into the log service's volume
    (target.logVolume), which with overwrite also loses its old log. `restore`: all in one pod.
    Scaled out: `shards` (an Indexed Job of parallelPods pods, each uploading its shard of the
    objects) then `finalize` (every object there, the others removed, hk_data written)."""
    assert step in S3_RESTORE_STEPS
    env, volumes, mounts = storage_env_and_volumes(storage)
    env += _shared_env("MOBACKUP_TARGET_", shared)
    args = ["--repo", repo_url(storage), "--backup-id", backup_id, "--target-s3", shared.data_url,
            *_shared_s3_args("target-s3", shared)]
    for where in check_stopped:
        args += ["--check-stopped", where]
    if step == "shards":
        args += ["--shards", str(spec.parallel_pods)]
    else:
        args += ["--hk-data-s3", shared.url("hk_data")]
    if step == "finalize":
        args.append("--finalize")
    if spec.log_volume is not None and step != "shards":
        volumes.append({"name": "log", "persistentVolumeClaim": {"claimName": spec.log_volume.claim}})
        mounts.append({"name": "log", "mountPath": DATA_MOUNT})
        args += ["--local-fs-dir", _data_path(spec.log_volume.path), "--reset-local-fs"]
    if spec.parallelism:
        args += ["--parallelism", str(spec.parallelism)]
    if spec.overwrite:
        args.append("--overwrite")
    if spec.point_in_time is not None:  # the repository's own record must agree before an object is written
        args += ["--to-time", spec.point_in_time.isoformat()]
    job = build_job(owner=owner, action="restore", args=args, env=env, volumes=volumes, mounts=mounts,
                    overrides=spec.job, defaults=defaults, name_suffix=step)
    if step == "shards":
        _indexed(job, spec.parallel_pods)
    return job


def _indexed(job: dict[str, Any], pods: int) -> None:
    """Each pod takes the shard of its completion index (the Job controller sets
    JOB_COMPLETION_INDEX); a failed shard is retried on its own and the others keep theirs."""
    js = job["spec"]
    js.update({"completionMode": "Indexed", "completions": pods, "parallelism": pods,
               "backoffLimitPerIndex": js.pop("backoffLimit"), "maxFailedIndexes": 0})


@dataclass(frozen=True)
class OnlinePlacement:
    """Where an online backup's staging is: the data directory as MatrixOne sees it, and the labels of
    MatrixOne's pods (the Job runs on their node)."""

    server_data_dir: str
    pod_labels: dict[str, str]


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
    if spec.point_in_time:  # the agent checks the repository's record of the backup before writing
        args += ["--to-time", spec.point_in_time.isoformat()]
    return build_job(owner=owner, action="restore", args=args, env=env, volumes=volumes, mounts=mounts,
                     overrides=spec.job, defaults=defaults)


def delete_job(owner: Owner, storage: StorageSpec, backup_id: str, overrides: JobOverrides,
               defaults: OperatorDefaults, *, source: str | None = None,
               not_before: str | None = None) -> dict[str, Any]:
    """`source`/`not_before`: the agent deletes the backup only if the repository says it is of
    this source and started after this time (the MOBackup's creation): a backup ID is data a Job
    reported, checked against the repository before anything is deleted."""
    env, volumes, mounts = storage_env_and_volumes(storage)
    args = ["--repo", repo_url(storage), "--backup-id", backup_id]
    if source:
        args += ["--source", source]
    if not_before:
        args += ["--not-before", not_before]
    return build_job(owner=owner, action="delete", args=args, env=env, volumes=volumes, mounts=mounts,
                     overrides=overrides, defaults=defaults)


def _copy_step(target: str) -> str:
    return "copy-" + hashlib.sha256(target.encode()).hexdigest()[:8]


def copy_job_name(owner: Owner, target: str) -> str:
    """The copy Job of one backup to one target (derived: the only name the operator follows)."""
    return job_name(owner, _copy_step(target))


def copy_job(owner: Owner, source: StorageSpec, target: StorageSpec, target_name: str, backup_id: str,
             overrides: JobOverrides, defaults: OperatorDefaults) -> dict[str, Any]:
    """`mobackup agent copy`: the source repository's settings as for any Job, the target's under
    TARGET_ENV names (both credentials only as env from their Secrets)."""
    env, volumes, mounts = storage_env_and_volumes(source)
    tenv, tvolumes, tmounts = storage_env_and_volumes(target, target=True)
    args = ["--repo", repo_url(source), "--to", repo_url(target, TARGET_REPO_MOUNT), "--backup-id", backup_id,
            "--compression", target.compression, *lock_args(target, "--to-")]
    job = build_job(owner=owner, action="copy", args=args, env=env + tenv, volumes=volumes + tvolumes,
                    mounts=mounts + tmounts, overrides=overrides, defaults=defaults,
                    name_suffix=_copy_step(target_name))
    job["metadata"]["labels"]["mobackup.io/copy-target"] = target_name[:63].rstrip("-.")
    job["spec"]["template"]["metadata"]["labels"]["mobackup.io/copy-target"] = target_name[:63].rstrip("-.")
    return job


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


def memory_kill(pod: dict[str, Any]) -> str | None:
    """Why a container of the pod was killed for exceeding its memory limit, naming the limit
    (the agent had no chance to write a result: the kernel killed it); None if none was."""
    pst = pod.get("status") or {}
    spec = pod.get("spec") or {}
    for cs in (pst.get("initContainerStatuses") or []) + (pst.get("containerStatuses") or []):
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
        if term.get("reason") != "OOMKilled":
            continue
        name = cs.get("name")
        limit = next(((c.get("resources") or {}).get("limits", {}).get("memory")
                      for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
                      if c.get("name") == name), None)
        if limit:
            return (f"container {name} was killed for exceeding its memory limit of {limit} (exit code "
                    f"{term.get('exitCode')}): raise spec.job.resources.limits.memory, or the chart's "
                    "jobDefaults.resources.limits.memory")
        return (f"container {name} was killed out of memory (exit code {term.get('exitCode')}; no memory "
                "limit set: the node ran short of memory)")
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
