"""MOBackupStorage: reference checks (Secrets, ConfigMaps, PVC) and the reachability check.

Credentials are read from the Secret into memory only for the check and never logged or written.

Whoever may create a mobackup resource in a namespace may not read its Secrets, yet each Secret a
resource names is sent somewhere it chooses (an S3 key to its endpoint, a password to its SQL host).
So the operator uses a Secret, itself or in a Job, only when the Secret's owner opted in with the
label `mobackup.io/credentials: "true"` (L_CREDENTIALS): labelling needs the right to update the
Secret, which reading-and-leaking it does not give. A SubjectAccessReview of the creator would need an
admission webhook (the object does not say who created it), a served certificate and a webhook that
blocks every create when it is down; the label needs nothing running.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from mobackup.engine import objectlock
from mobackup.engine.errors import MobackupError

from .jobs import L_UID
from .kube import Kube, NotFound
from .models import SecretKey, StorageSpec

L_CREDENTIALS = "mobackup.io/credentials"


class MissingInput(Exception):
    """A referenced Secret/ConfigMap/PVC/key is missing; `reason` is a CamelCase reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def usable_secret(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    """The Secret `name`, if its owner let mobackup use it (module docstring)."""
    try:
        sec = kube.get_secret(ns, name)
    except NotFound:
        raise MissingInput("SecretNotFound", f"Secret {ns}/{name} not found") from None
    if ((sec.get("metadata") or {}).get("labels") or {}).get(L_CREDENTIALS) != "true":
        raise MissingInput("SecretNotOptedIn",
                           f"Secret {ns}/{name} is not labelled {L_CREDENTIALS}=true; mobackup uses only the "
                           f"Secrets their owner opts in: kubectl -n {ns} label secret {name} {L_CREDENTIALS}=true")
    return sec


def secret_value(kube: Kube, ns: str, ref: SecretKey) -> str:
    sec = usable_secret(kube, ns, ref.name)
    data = sec.get("data") or {}
    if ref.key in data:
        return base64.b64decode(data[ref.key]).decode()
    if ref.key in (sec.get("stringData") or {}):
        return str(sec["stringData"][ref.key])
    raise MissingInput("SecretKeyNotFound", f"Secret {ns}/{ref.name} has no key {ref.key!r}")


def pod_secrets(pod_spec: dict[str, Any]) -> set[str]:
    """Every Secret a pod spec takes values from: env, envFrom, secret and projected volumes."""
    names: set[str] = set()
    for c in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        for env in c.get("env") or []:
            ref = ((env.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            names.update([ref] if ref else [])
        for env_from in c.get("envFrom") or []:
            ref = (env_from.get("secretRef") or {}).get("name")
            names.update([ref] if ref else [])
    for volume in pod_spec.get("volumes") or []:
        ref = (volume.get("secret") or {}).get("secretName")
        names.update([ref] if ref else [])
        for source in (volume.get("projected") or {}).get("sources") or []:
            ref = (source.get("secret") or {}).get("name")
            names.update([ref] if ref else [])
    return names


def check_job_secrets(kube: Kube, ns: str, job: dict[str, Any], installer_chose: set[str]) -> None:
    """Raise MissingInput unless every Secret the Job's pod reads is usable, apart from those the
    installer gives every Job (`installer_chose`: the chart's jobDefaults) and imagePullSecrets (the
    kubelet sends those only to the registry of the operator's own image)."""
    for name in sorted(pod_secrets(job["spec"]["template"]["spec"]) - installer_chose):
        usable_secret(kube, ns, name)


def configmap_value(kube: Kube, ns: str, ref: SecretKey) -> str:
    try:
        cm = kube.get_configmap(ns, ref.name)
    except NotFound:
        raise MissingInput("ConfigMapNotFound", f"ConfigMap {ns}/{ref.name} not found") from None
    data = cm.get("data") or {}
    if ref.key not in data:
        raise MissingInput("ConfigMapKeyNotFound", f"ConfigMap {ns}/{ref.name} has no key {ref.key!r}")
    return str(data[ref.key])


def pvc_made_for(kube: Kube, ns: str, claim: str, uid: str) -> bool | None:
    """Whether PVC `claim` is one the operator made for the object `uid` (labelled with it: a drill's
    scratch volume, a snapshot's clone); None when there is none. Those names are derived, and a PVC
    someone else gave that name is never restored into, copied or deleted in their stead."""
    try:
        pvc = kube.get_pvc(ns, claim)
    except NotFound:
        return None
    return ((pvc.get("metadata") or {}).get("labels") or {}).get(L_UID) == uid


def require_pvc(kube: Kube, ns: str, claim: str, what: str) -> dict[str, Any]:
    try:
        return kube.get_pvc(ns, claim)
    except NotFound:
        raise MissingInput("PVCNotFound", f"{what} PersistentVolumeClaim {ns}/{claim} not found") from None


@dataclass
class Credentials:
    access_key: str | None
    secret_key: str | None
    encryption_key: str | None
    ca_pem: str | None

    def __repr__(self) -> str:  # never print secrets
        return "Credentials(<redacted>)"


def read_credentials(kube: Kube, ns: str, st: StorageSpec, ambient_buckets: tuple[str, ...] = ()) -> Credentials:
    """Every Secret/ConfigMap the storage references must exist, with its keys (checked before a Job).
    An S3 storage without keys would reach its bucket as whoever the pod is (the node's instance
    role, a workload identity): only for buckets the operator's installer allows (`ambient_buckets`,
    shell patterns; chart value ambientCredentials.buckets)."""
    access = secret = ca = None
    if st.s3 and not st.s3.credentials_secret and not any(fnmatch.fnmatchcase(st.s3.bucket, p)
                                                          for p in ambient_buckets):
        raise MissingInput("AmbientCredentialsNotAllowed",
                           f"spec.s3 names no credentialsSecretRef, and bucket {st.s3.bucket!r} is not in the "
                           "operator's allow-list for its own identity (chart value ambientCredentials.buckets)")
    if st.s3 and st.s3.credentials_secret:
        access = secret_value(kube, ns, SecretKey(st.s3.credentials_secret, st.s3.access_key_key))
        secret = secret_value(kube, ns, SecretKey(st.s3.credentials_secret, st.s3.secret_key_key))
    if st.s3 and st.s3.ca_configmap:
        ca = configmap_value(kube, ns, st.s3.ca_configmap)
    if st.s3 and st.s3.ca_secret:
        ca = secret_value(kube, ns, st.s3.ca_secret)
    enc = secret_value(kube, ns, st.encryption_key) if st.encryption_key else None
    if st.pvc:
        require_pvc(kube, ns, st.pvc.claim, "repository")
    return Credentials(access, secret, enc, ca)


@dataclass
class CheckResult:
    available: bool
    reason: str
    message: str
    backup_count: int | None = None
    object_lock: dict[str, Any] | None = None  # what the repository records (status.objectLock)


def _s3_options(st: StorageSpec, creds: Credentials, ca_path: str | None) -> Any:
    from mobackup.engine.repository import RepositoryOptions

    assert st.s3
    url = f"s3://{st.s3.bucket}/{st.s3.prefix}".rstrip("/")
    return RepositoryOptions(url=url, s3_endpoint=st.s3.endpoint, s3_region=st.s3.region,
                             s3_path_style=st.s3.path_style, s3_ca_bundle=ca_path,
                             s3_access_key_id=creds.access_key, s3_secret_access_key=creds.secret_key,
                             encryption_key=creds.encryption_key)


def open_repo(kube: Kube, ns: str, st: StorageSpec, ambient_buckets: tuple[str, ...] = ()) -> Any:
    """The repository of an S3 storage, opened by the operator itself (credentials from the Secret,
    in memory only); None for a PVC repository (only Jobs mount it) or a custom CA bundle."""
    if not st.s3 or st.s3.ca_configmap or st.s3.ca_secret:
        return None
    from mobackup.engine.repository import open_repository

    return open_repository(_s3_options(st, read_credentials(kube, ns, st, ambient_buckets), None))


STATS_MAX_AGE_SECONDS = 3600


def stats_due(old: dict[str, Any] | None, backup_count: int | None, now_ts: float) -> bool:
    """Recompute status.stats when the backups changed, else at most hourly (it reads every file list)."""
    from .status import parse_iso

    if backup_count is None:
        return False
    computed = parse_iso((old or {}).get("computedAt"))
    return computed is None or (old or {}).get("backups") != backup_count or \
        now_ts - computed.timestamp() >= STATS_MAX_AGE_SECONDS


STATS_SCRATCH_BYTES = 32 << 20
STATS_FIGURES = ("storedBytes", "logicalBytes", "unreferencedBytes", "dedupRatio", "compressionRatio",
                 "growthBytesPerDay")
BYTES_PER_BLOB = 200  # a row and its index entries in the stats database (engine/stats.py)


def stats_scratch_estimate(repo: Any) -> int:
    """Scratch bytes repository_stats would need: a row per blob, and the file lists it downloads
    (decompressed: about 4 times their stored size). Two LISTs."""
    blobs = sum(1 for _ in repo.backend.list("blobs/"))
    metadata = sum(info.size for info in repo.backend.list("backups/"))
    return blobs * BYTES_PER_BLOB + 4 * metadata


def repo_stats(kube: Kube, ns: str, st: StorageSpec, ambient_buckets: tuple[str, ...] = (),
               retention: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """status.stats of an S3 storage the operator can open (engine/stats.py); None otherwise.
    `retention`: source -> the policy its schedules apply (retention.policies_of_storage), which
    gives the bytes by retention class (every class named: a merge patch then removes a gone one)."""
    from mobackup.engine.errors import RepositoryNotFound
    from mobackup.engine.stats import RETENTION_CLASSES, repository_stats

    from .status import iso

    try:
        repo = open_repo(kube, ns, st, ambient_buckets)
    except RepositoryNotFound:
        return None
    if repo is None:
        return None
    # The figures are counted in a scratch database and file lists under the operator's /tmp (an
    # emptyDir of 64Mi in the chart): a repository too large for it is left to `mobackup stats`.
    budget = int(os.environ.get("MOBACKUP_STATS_SCRATCH_BYTES") or STATS_SCRATCH_BYTES)
    need = stats_scratch_estimate(repo)
    if need > budget:
        return {**dict.fromkeys(STATS_FIGURES), "bytesByRetentionClass": None, "backups": len(repo.backup_ids()),
                "computedAt": iso(),
                "message": f"not computed: about {need} bytes of scratch space needed, more than the operator's "
                           f"{budget} (MOBACKUP_STATS_SCRATCH_BYTES); run `mobackup stats` on the repository"}
    s = repository_stats(repo, retention=retention or {})  # a source no schedule backs up is "unmanaged"
    by_class = {c: round(s.bytes_by_retention_class[c]) if c in s.bytes_by_retention_class else None
                for c in RETENTION_CLASSES}
    ratios = {"dedupRatio": s.dedup_ratio, "compressionRatio": s.compression_ratio,
              "growthBytesPerDay": s.growth_bytes_per_day}
    # None (JSON null) removes a figure an earlier computation wrote: a status merge patch merges objects.
    return {"storedBytes": s.stored_bytes, "logicalBytes": s.logical_bytes,
            "unreferencedBytes": s.unreferenced_blob_bytes,
            "bytesByRetentionClass": by_class,
            **{k: None if v is None else round(float(v), 3) for k, v in ratios.items()},
            "backups": len(s.backups) + len(s.damaged), "computedAt": iso(), "message": None}


def check(kube: Kube, ns: str, st: StorageSpec, ambient_buckets: tuple[str, ...] = ()) -> CheckResult:
    """Reachable, credentials accepted, the encryption key right, and how many backups it lists."""
    from mobackup.engine.errors import EncryptionKeyError, RepositoryFormatError, RepositoryNotFound
    from mobackup.engine.repository import make_backend, open_repository

    try:
        creds = read_credentials(kube, ns, st, ambient_buckets)
    except MissingInput as e:
        return CheckResult(False, e.reason, str(e))
    if st.pvc:
        pvc = require_pvc(kube, ns, st.pvc.claim, "repository")
        phase = (pvc.get("status") or {}).get("phase")
        if phase not in ("Bound", "Pending"):
            return CheckResult(False, "PVCNotBound", f"PVC {ns}/{st.pvc.claim} is {phase}")
        return CheckResult(True, "PVCPresent", f"PVC {ns}/{st.pvc.claim} is {phase}; the repository is "
                                               "checked by the first Job that mounts it")
    ca_file = None
    try:
        if creds.ca_pem:
            fd, ca_file = tempfile.mkstemp(prefix="mobackup-ca-", suffix=".pem")
            with os.fdopen(fd, "w") as f:
                f.write(creds.ca_pem)
        opts = _s3_options(st, creds, ca_file)
        backend = make_backend(opts)
        backend.check_access()
        lock = None
        try:
            # Opening checks the encryption key; backup_ids() is one LIST of the published summaries.
            repo = open_repository(opts)
            count = len(repo.backup_ids())
            note = ""
            lock = repo.object_lock.to_config() if repo.object_lock else None
            asked = objectlock.wanted(st.object_lock.days, st.object_lock.mode) if st.object_lock else None
            mismatch = objectlock.setting_mismatch(backend.location, repo.object_lock, asked)
            if mismatch:  # every backup Job would refuse it: say so before one is started
                return CheckResult(False, "ObjectLockMismatch", f"spec.objectLock: {mismatch}", count, lock)
        except RepositoryNotFound:
            count, note = 0, "; no repository yet (the first backup creates it)"
            if st.object_lock and not backend.object_lock_enabled():  # type: ignore[attr-defined]
                return CheckResult(False, "ObjectLockNotEnabled",
                                   f"spec.objectLock: bucket {st.s3.bucket} was not created with Object Lock enabled "
                                   "(ObjectLockEnabledForBucket): the first backup could not lock its objects", 0)
        return CheckResult(True, "Reachable", f"{backend.location} is reachable and the credentials work{note}",
                           count, lock)
    except EncryptionKeyError as e:
        return CheckResult(False, "EncryptionKeyError", str(e))
    except RepositoryFormatError as e:
        return CheckResult(False, "NotARepository", str(e))
    except MobackupError as e:
        return CheckResult(False, "Unreachable", str(e))
    except Exception as e:  # boto3 surprises (bad endpoint URL...) are still a reason, not a crash
        return CheckResult(False, "Unreachable", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        if ca_file:
            os.unlink(ca_file)
