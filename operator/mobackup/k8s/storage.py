"""MOBackupStorage: reference checks (Secrets, ConfigMaps, PVC) and the reachability check.

Credentials are read from the Secret into memory only for the check and never logged or written.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from mobackup.engine.errors import MobackupError

from .jobs import L_UID
from .kube import Kube, NotFound
from .models import SecretKey, StorageSpec


class MissingInput(Exception):
    """A referenced Secret/ConfigMap/PVC/key is missing; `reason` is a CamelCase reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def secret_value(kube: Kube, ns: str, ref: SecretKey) -> str:
    try:
        sec = kube.get_secret(ns, ref.name)
    except NotFound:
        raise MissingInput("SecretNotFound", f"Secret {ns}/{ref.name} not found") from None
    data = sec.get("data") or {}
    if ref.key in data:
        return base64.b64decode(data[ref.key]).decode()
    if ref.key in (sec.get("stringData") or {}):
        return str(sec["stringData"][ref.key])
    raise MissingInput("SecretKeyNotFound", f"Secret {ns}/{ref.name} has no key {ref.key!r}")


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


def read_credentials(kube: Kube, ns: str, st: StorageSpec) -> Credentials:
    """Every Secret/ConfigMap the storage references must exist, with its keys (checked before a Job)."""
    access = secret = ca = None
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


def _s3_options(st: StorageSpec, creds: Credentials, ca_path: str | None) -> Any:
    from mobackup.engine.repository import RepositoryOptions

    assert st.s3
    url = f"s3://{st.s3.bucket}/{st.s3.prefix}".rstrip("/")
    return RepositoryOptions(url=url, s3_endpoint=st.s3.endpoint, s3_region=st.s3.region,
                             s3_path_style=st.s3.path_style, s3_ca_bundle=ca_path,
                             s3_access_key_id=creds.access_key, s3_secret_access_key=creds.secret_key,
                             encryption_key=creds.encryption_key)


def open_repo(kube: Kube, ns: str, st: StorageSpec) -> Any:
    """The repository of an S3 storage, opened by the operator itself (credentials from the Secret,
    in memory only); None for a PVC repository (only Jobs mount it) or a custom CA bundle."""
    if not st.s3 or st.s3.ca_configmap or st.s3.ca_secret:
        return None
    from mobackup.engine.repository import open_repository

    return open_repository(_s3_options(st, read_credentials(kube, ns, st), None))


def check(kube: Kube, ns: str, st: StorageSpec) -> CheckResult:
    """Reachable, credentials accepted, the encryption key right, and how many backups it lists."""
    from mobackup.engine.errors import EncryptionKeyError, RepositoryFormatError, RepositoryNotFound
    from mobackup.engine.repository import make_backend, open_repository

    try:
        creds = read_credentials(kube, ns, st)
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
        try:
            # Opening checks the encryption key; backup_ids() is one LIST of the published summaries.
            count = len(open_repository(opts).backup_ids())
            note = ""
        except RepositoryNotFound:
            count, note = 0, "; no repository yet (the first backup creates it)"
        return CheckResult(True, "Reachable", f"{backend.location} is reachable and the credentials work{note}",
                           count)
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
