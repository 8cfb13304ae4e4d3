"""Spec models of the four kinds, parsed from the resource dicts, with readable validation errors.

The CRD schema already rejects most bad input at the API server; these checks repeat the essentials
(an operator may meet objects written before a schema change) and add what a schema cannot say
(cron syntax, time zones, durations, quantities).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mobackup.engine.guards import s3_contains, s3_overlap
from mobackup.engine.prune import RetentionPolicy

from . import cron

GROUP = "mobackup.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|Ki|M|Mi|G|Gi|T|Ti)?$")
_MULT = {None: 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
         "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


class SpecError(ValueError):
    """Bad input; str() says which field and why (shown in status and in an Event)."""



def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)

def _need(d: dict[str, Any], key: str, where: str) -> Any:
    v = d.get(key)
    if v in (None, "", {}):
        raise SpecError(f"{where}.{key} is required")
    return v


def _name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not DNS.match(v) or len(v) > 253:
        raise SpecError(f"{where} must be a DNS name (lower case letters, digits, '-', '.'), got {v!r}")
    return v


def _rel_path(v: Any, where: str) -> str:
    if not isinstance(v, str) or v.startswith("/") or ".." in v.split("/") or "\x00" in v:
        raise SpecError(f"{where} must be a relative path inside the volume without '..', got {v!r}")
    return v.strip("/") or "."


def parse_quantity(text: str | int | None) -> int | None:
    """'50Mi' -> 52428800; None/'' -> None."""
    if text in (None, ""):
        return None
    if isinstance(text, int):
        return text
    m = QUANTITY.match(str(text))
    if not m:
        raise SpecError(f"bandwidthLimit {text!r} is not a quantity like 50Mi or 100M")
    return int(float(m.group(1)) * _MULT[m.group(2)])


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


def _secret_key(d: Any, where: str, default_key: str) -> SecretKey:
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be an object with name and key")
    return SecretKey(_name(_need(d, "name", where), f"{where}.name"), str(d.get("key") or default_key))


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str


def _workload(d: Any, where: str) -> Workload | None:
    if not d:
        return None
    kind = d.get("kind", "StatefulSet")
    if kind not in ("StatefulSet", "Deployment"):
        raise SpecError(f"{where}.kind must be StatefulSet or Deployment, got {kind!r}")
    return Workload(kind, _name(_need(d, "name", where), f"{where}.name"))


@dataclass(frozen=True)
class Volume:
    claim: str
    path: str


def _volume(d: Any, where: str, default_path: str) -> Volume:
    if not isinstance(d, dict):
        raise SpecError(f"{where} is required")
    return Volume(_name(_need(d, "claimName", where), f"{where}.claimName"),
                  _rel_path(d.get("path", default_path), f"{where}.path"))


@dataclass(frozen=True)
class SqlEndpoint:
    host: str
    port: int
    user: str
    password: SecretKey
    timeout_seconds: int = 300
    database: str | None = None


def _sql(d: Any, where: str) -> SqlEndpoint | None:
    if not d:
        return None
    port = int(d.get("port", 6001))
    if not 1 <= port <= 65535:
        raise SpecError(f"{where}.port {port} is not a TCP port")
    return SqlEndpoint(str(_need(d, "host", where)), port, str(d.get("user") or "dump"),
                       _secret_key(_need(d, "passwordSecretRef", where), f"{where}.passwordSecretRef",
                                   "password"),
                       int(d.get("timeoutSeconds", 300)), d.get("database") or None)


# ------------------------------------------------------------------------------------------ storage

@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False
    ca_configmap: SecretKey | None = None
    ca_secret: SecretKey | None = None
    credentials_secret: str | None = None
    access_key_key: str = "AWS_ACCESS_KEY_ID"
    secret_key_key: str = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class ObjectLockSpec:
    """spec.objectLock: the S3 Object Lock a repository is created with (engine/objectlock.py)."""

    days: float
    mode: str = "COMPLIANCE"


def _object_lock(d: Any, has_s3: bool) -> ObjectLockSpec | None:
    from mobackup.engine.objectlock import MAX_DAYS, MODES

    if d in (None, {}):
        return None
    if not has_s3:
        raise SpecError("spec.objectLock needs spec.s3 (S3 Object Lock is a property of a bucket)")
    days, mode = d.get("days") if isinstance(d, dict) else None, (d or {}).get("mode", "COMPLIANCE")
    if not isinstance(days, (int, float)) or isinstance(days, bool) or not 0 < days <= MAX_DAYS:
        raise SpecError(f"spec.objectLock.days must be a number of days in (0, {MAX_DAYS}], got {days!r}")
    if mode not in MODES:
        raise SpecError(f"spec.objectLock.mode must be one of {', '.join(MODES)}, got {mode!r}")
    return ObjectLockSpec(float(days), mode)


@dataclass(frozen=True)
class StorageSpec:
    s3: S3Target | None
    pvc: Volume | None
    encryption_key: SecretKey | None
    compression: str
    check_interval: int
    copy_to: tuple[str, ...] = ()  # names of target MOBackupStorages
    object_lock: ObjectLockSpec | None = None

    @property
    def location(self) -> str:
        """The repository URL without credentials, as shown in status."""
        if self.s3:
            prefix = self.s3.prefix.strip("/")
            return f"s3://{self.s3.bucket}/{prefix}" if prefix else f"s3://{self.s3.bucket}"
        assert self.pvc
        return f"pvc://{self.pvc.claim}/{self.pvc.path}"


def parse_storage(spec: dict[str, Any]) -> StorageSpec:
    s3d, pvcd = spec.get("s3"), spec.get("pvc")
    if bool(s3d) == bool(pvcd):
        raise SpecError("spec: set exactly one of s3 or pvc")
    s3 = None
    if s3d:
        bucket = str(_need(s3d, "bucket", "spec.s3"))
        ca = s3d.get("caBundle") or {}
        creds = s3d.get("credentialsSecretRef") or {}
        if ca and bool(ca.get("configMapRef")) == bool(ca.get("secretRef")):
            raise SpecError("spec.s3.caBundle needs exactly one of configMapRef or secretRef")
        endpoint = s3d.get("endpoint") or None
        if endpoint and not re.match(r"^https?://", endpoint):
            raise SpecError(f"spec.s3.endpoint must start with http:// or https://, got {endpoint!r}")
        s3 = S3Target(
            bucket=bucket, prefix=str(s3d.get("prefix") or "").strip("/"), endpoint=endpoint,
            region=str(s3d.get("region") or "us-east-1"), path_style=bool(s3d.get("pathStyle", False)),
            ca_configmap=_secret_key(ca["configMapRef"], "spec.s3.caBundle.configMapRef", "ca.crt")
            if ca.get("configMapRef") else None,
            ca_secret=_secret_key(ca["secretRef"], "spec.s3.caBundle.secretRef", "ca.crt")
            if ca.get("secretRef") else None,
            credentials_secret=_name(creds["name"], "spec.s3.credentialsSecretRef.name")
            if creds.get("name") else None,
            access_key_key=str(creds.get("accessKeyIDKey") or "AWS_ACCESS_KEY_ID"),
            secret_key_key=str(creds.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY"),
        )
    pvc = _volume(pvcd, "spec.pvc", "mobackup") if pvcd else None
    enc = spec.get("encryption") or {}
    compression = spec.get("compression", "zstd")
    if compression not in ("none", "zstd"):
        raise SpecError(f"spec.compression must be none or zstd, got {compression!r}")
    copy_to = spec.get("copyTo") or []
    if not isinstance(copy_to, list):
        raise SpecError("spec.copyTo must be a list of {name}")
    targets = tuple(dict.fromkeys(_name(_need(t, "name", f"spec.copyTo[{i}]") if isinstance(t, dict) else None,
                                        f"spec.copyTo[{i}].name") for i, t in enumerate(copy_to)))
    return StorageSpec(s3, pvc,
                       _secret_key(enc["keySecretRef"], "spec.encryption.keySecretRef", "key")
                       if enc.get("keySecretRef") else None,
                       compression, int(spec.get("checkIntervalSeconds", 300)), targets,
                       _object_lock(spec.get("objectLock"), s3 is not None))


# ------------------------------------------------------------------- MatrixOne with table data in S3

BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
S3_KEY_PREFIX = re.compile(r"^[A-Za-z0-9!_.*()/-]+$")
MO_CLUSTER_GROUP, MO_CLUSTER_VERSION, MO_CLUSTER_PLURAL = "core.matrixorigin.io", "v1alpha1", "matrixoneclusters"


def _s3_path(v: Any, where: str) -> tuple[str, str]:
    """'bucket/folder' -> (bucket, folder) as a MatrixOneCluster's sharedStorage.s3.path splits it."""
    if not isinstance(v, str) or not v.strip("/"):
        raise SpecError(f"{where} must be BUCKET/FOLDER, got {v!r}")
    bucket, _, folder = v.strip("/").partition("/")
    if not BUCKET.match(bucket):
        raise SpecError(f"{where}: {bucket!r} is not an S3 bucket name")
    folder = folder.strip("/")
    if folder and (not S3_KEY_PREFIX.match(folder) or any(p in ("", ".", "..") for p in folder.split("/"))):
        raise SpecError(f"{where}: folder {folder!r} must be a key prefix without '.', '..' or empty parts")
    return bucket, folder


def _endpoint(v: Any, where: str) -> str | None:
    if v in (None, ""):
        return None
    if not isinstance(v, str) or not re.match(r"^https?://[^\s'\"]+$", v):
        raise SpecError(f"{where} must start with http:// or https://, got {v!r}")
    return v.rstrip("/")


@dataclass(frozen=True)
class SharedS3:
    """Where a MatrixOne keeps its table data in S3: a MatrixOneCluster's
    spec.logService.sharedStorage.s3, or the same fields given directly.

    As the MatrixOne operator lays it out, `path` bucket/folder holds the SHARED file service at
    folder/data (the table data), the ETL one at folder/etl, and the BACKUP one at folder/."""

    bucket: str
    folder: str
    key_prefix: str  # of the SHARED file service
    endpoint: str | None
    region: str
    path_style: bool  # type minio
    secret: str  # Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the MatrixOne operator's keys)

    @property
    def data_url(self) -> str:
        return f"s3://{self.bucket}/{self.key_prefix}"

    def key(self, name: str) -> str:
        """The key of `name` in the cluster's folder (hk_data: where a new cluster reads it)."""
        return "/".join(p for p in (self.folder, name) if p)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"


def parse_shared_s3(d: Any, where: str, *, region_default: str = "us-west-2") -> SharedS3:
    """The MatrixOneCluster's shape (path, type, endpoint, region, secretRef), plus keyPrefix to name
    the SHARED key prefix of a MatrixOne configured by hand (default folder/data)."""
    if not isinstance(d, dict):
        raise SpecError(f"{where} is required")
    bucket, folder = _s3_path(_need(d, "path", where), f"{where}.path")
    kind = d.get("type") or "aws"
    if kind not in ("aws", "minio"):
        raise SpecError(f"{where}.type must be aws or minio, got {kind!r}")
    key_prefix = d.get("keyPrefix") or "/".join(p for p in (folder, "data") if p)
    _s3_path(f"{bucket}/{key_prefix}", f"{where}.keyPrefix")
    secret = (d.get("secretRef") or {}).get("name")
    if not secret:
        raise SpecError(f"{where}.secretRef.name is required (the Secret with AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY: MatrixOne's BACKUP needs the keys)")
    return SharedS3(bucket, folder, str(key_prefix).strip("/"), _endpoint(d.get("endpoint"), f"{where}.endpoint"),
                    str(d.get("region") or region_default), kind == "minio", _name(secret, f"{where}.secretRef.name"))


# ----------------------------------------------------------------------- a run against its storage

def storage_overlap(storage: StorageSpec, storage_name: str, *, claims: dict[str, str | None] | None = None,
                    writes: dict[str, tuple[str, str]] | None = None,
                    staging: tuple[str, str] | None = None) -> str | None:
    """Why a run would destroy its own repository, or None. `claims`: what it mounts as data (field ->
    PVC): the storage's PVC there is one volume mounted twice, and the engine's restore or reset
    then replaces the repository. `writes`: S3 places it writes and empties (what -> (bucket,
    prefix)), which may not share keys with the repository. `staging`: the root under which stale
    staging prefixes are removed, which may not contain it."""
    label = f"MOBackupStorage {storage_name}"
    for field_, claim in (claims or {}).items():
        if storage.pvc is not None and claim == storage.pvc.claim:
            return (f"{field_} {claim} is the PVC of {label} (its repository): one volume would be both the run's "
                    "data and the repository, which it would overwrite; use another PVC")
    if storage.s3 is None:
        return None
    repo = (storage.s3.bucket, storage.s3.prefix)
    for what, (bucket, prefix) in (writes or {}).items():
        if s3_overlap(bucket, prefix, *repo):
            return (f"{what} s3://{bucket}/{prefix} is, contains or lies inside the repository of {label} "
                    f"({storage.location}): the restore would overwrite it; use another prefix")
    if staging is not None and staging[0] == repo[0] and s3_contains(staging[1], repo[1]):
        return (f"the staging root s3://{staging[0]}/{staging[1]} contains the repository of {label} "
                f"({storage.location}): stale staging prefixes under it are removed; stage elsewhere "
                "(spec.source.staging.path)")
    return None


# ------------------------------------------------------------------------------------------- backup

@dataclass(frozen=True)
class JobOverrides:
    raw: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


CONSISTENCIES = ("Online", "Stop", "Snapshot", "None")


@dataclass(frozen=True)
class BackupSpec:
    volume: Volume | None  # None: table data in S3 (cluster or shared)
    workload: Workload | None
    source_name: str
    sql: SqlEndpoint | None
    storage: str
    type: str  # "Full" | "Incremental"
    base_name: str | None
    base_id: str | None
    consistency: str  # "Online" | "Stop" | "Snapshot" | "None"
    parallelism: int | None  # None: the engine's default for the storage
    bandwidth_limit: int | None
    deletion_policy: str
    job: JobOverrides
    snapshot_class: str | None = None
    # Online: the data directory's absolute path inside the MatrixOne container (None: derive it
    # from the workload's pod template).
    server_data_dir: str | None = None
    # Table data in S3: a MatrixOneCluster by name, or its sharedStorage.s3 given directly.
    cluster: str | None = None
    shared: SharedS3 | None = None
    staging_path: tuple[str, str] | None = None  # (bucket, prefix); default <bucket>/<folder>/mobackup-staging
    staging_server_endpoint: str | None = None
    parallel_pods: int = 1
    pitr_window: float | None = None  # seconds of spec.pointInTime.window (k8s/pointintime.py)

    @property
    def lease_key(self) -> str:
        """One backup or restore at a time per source: its PVC, MatrixOneCluster or S3 data prefix."""
        return lease_key(self.volume, self.cluster, self.shared)


def lease_key(volume: Volume | None, cluster: str | None, shared: SharedS3 | None) -> str:
    if volume is not None:
        return volume.claim
    if cluster:
        return f"matrixonecluster-{cluster}"
    assert shared is not None
    return shared.data_url


def default_source_name(namespace: str, claim: str) -> str:
    return f"{namespace}/{claim}"


def parse_backup(spec: dict[str, Any], namespace: str, *, template: bool = False) -> BackupSpec:
    src = spec.get("source")
    if not isinstance(src, dict):
        raise SpecError("spec.source is required")
    given = [k for k in ("pvc", "cluster", "sharedStorage") if src.get(k)]
    if len(given) != 1:
        raise SpecError("spec.source: set exactly one of pvc (a data volume), cluster (a MatrixOneCluster) or "
                        f"sharedStorage (table data in S3){f', got {given}' if given else ''}")
    if given[0] != "pvc":
        return _parse_s3_backup(spec, src, namespace, template)
    volume = _volume(src.get("pvc"), "spec.source.pvc", "mo-data")
    workload = _workload(src.get("workload"), "spec.source.workload")
    common = _common_backup_fields(spec, template)
    sql = _sql(src.get("sql"), "spec.source.sql")
    # Online (MatrixOne's own BACKUP, no downtime) whenever MatrixOne can be reached over SQL.
    consistency = spec.get("consistency") or ("Online" if sql else "Stop")
    if consistency not in CONSISTENCIES:
        raise SpecError(f"spec.consistency must be one of {', '.join(CONSISTENCIES)}, got {consistency!r}")
    if consistency == "Stop" and workload is None:
        raise SpecError("spec.consistency Stop needs spec.source.workload (the workload to scale down)")
    if consistency == "Online" and sql is None:
        raise SpecError("spec.consistency Online needs spec.source.sql (MatrixOne runs the backup)")
    server_data_dir = src.get("serverDataDir") or None
    if server_data_dir is not None and (not isinstance(server_data_dir, str) or not server_data_dir.startswith("/")
                                        or "'" in server_data_dir or "/../" in f"{server_data_dir}/"):
        raise SpecError(f"spec.source.serverDataDir must be an absolute path, got {server_data_dir!r}")
    if consistency == "Online" and server_data_dir is None and workload is None:
        raise SpecError("spec.consistency Online needs spec.source.serverDataDir or spec.source.workload "
                        "(to find where MatrixOne mounts the volume)")
    window = pitr_window(spec)
    if window is not None and sql is None:
        raise SpecError("spec.pointInTime.window needs spec.source.sql (the PITR is made over SQL before the copy)")
    return BackupSpec(
        volume=volume, workload=workload,
        source_name=str(src.get("name") or default_source_name(namespace, volume.claim)),
        sql=sql, consistency=consistency, snapshot_class=spec.get("snapshotClassName") or None,
        server_data_dir=server_data_dir, pitr_window=window, **common)


def pitr_window(spec: dict[str, Any]) -> float | None:
    """spec.pointInTime.window in seconds (None when unset)."""
    text = (spec.get("pointInTime") or {}).get("window")
    if not text:
        return None
    try:
        seconds = cron.parse_duration(str(text)).total_seconds()
    except ValueError as e:
        raise SpecError(f"spec.pointInTime.window: {e}") from None
    if seconds <= 0:
        raise SpecError("spec.pointInTime.window must be positive")
    return seconds


def _common_backup_fields(spec: dict[str, Any], template: bool) -> dict[str, Any]:
    storage = _name(_need(_need(spec, "storageRef", "spec"), "name", "spec.storageRef"), "spec.storageRef.name")
    btype = "Full" if template else spec.get("type", "Full")
    if btype not in ("Full", "Incremental"):
        raise SpecError(f"spec.type must be Full or Incremental, got {btype!r}")
    base_name, base_id = spec.get("baseBackupName"), spec.get("baseBackupID")
    if base_name and base_id:
        raise SpecError("spec: set at most one of baseBackupName or baseBackupID")
    if (base_name or base_id) and btype != "Incremental":
        raise SpecError("spec: a base backup is only meaningful for type Incremental")
    parallelism = _optional_int(spec.get("parallelism"))
    if parallelism is not None and not 1 <= parallelism <= 64:
        raise SpecError(f"spec.parallelism must be 1-64, got {parallelism}")
    policy = spec.get("deletionPolicy", "Retain")
    if policy not in ("Retain", "Delete"):
        raise SpecError(f"spec.deletionPolicy must be Retain or Delete, got {policy!r}")
    return {"storage": storage, "type": btype, "base_name": base_name, "base_id": base_id,
            "parallelism": parallelism, "bandwidth_limit": parse_quantity(spec.get("bandwidthLimit")),
            "deletion_policy": policy, "job": JobOverrides(dict(spec.get("job") or {}))}


def _parse_s3_backup(spec: dict[str, Any], src: dict[str, Any], namespace: str, template: bool) -> BackupSpec:
    """A MatrixOne whose table data lives in S3: always Online (MatrixOne's BACKUP into an S3 staging
    prefix), no volume."""
    consistency = spec.get("consistency") or "Online"
    if consistency != "Online":
        raise SpecError(f"spec.consistency {consistency} needs a data volume: a source whose table data lives in "
                        "S3 is backed up Online (MatrixOne's BACKUP)")
    for key in ("workload", "serverDataDir"):
        if src.get(key):
            raise SpecError(f"spec.source.{key} applies to a data volume (source.pvc), not to table data in S3")
    cluster = _name(_need(src["cluster"], "name", "spec.source.cluster"), "spec.source.cluster.name") \
        if src.get("cluster") else None
    shared = None if cluster else parse_shared_s3((src["sharedStorage"] or {}).get("s3"),
                                                  "spec.source.sharedStorage.s3")
    sql = _sql(src.get("sql"), "spec.source.sql")
    if shared is not None and sql is None:
        raise SpecError("spec.source.sharedStorage needs spec.source.sql (MatrixOne runs the backup)")
    staging = src.get("staging") or {}
    staging_path = _s3_path(staging["path"], "spec.source.staging.path") if staging.get("path") else None
    pods = int(spec.get("parallelPods", 1))
    if not 1 <= pods <= 64:
        raise SpecError(f"spec.parallelPods must be 1-64, got {pods}")
    window = pitr_window(spec)
    if window is not None and pods != 1:
        raise SpecError("spec.pointInTime.window with table data in S3 needs parallelPods 1: the one-pod run takes "
                        "the PITR history (the objects of the cluster's prefix that BACKUP leaves out); a run staged "
                        "for shards does not")
    default_name = f"{namespace}/{cluster}" if cluster else f"s3://{shared.bucket}/{shared.folder}".rstrip("/")
    return BackupSpec(
        volume=None, workload=None, source_name=str(src.get("name") or default_name), sql=sql,
        consistency="Online", snapshot_class=None, cluster=cluster, shared=shared, staging_path=staging_path,
        staging_server_endpoint=_endpoint(staging.get("serverEndpoint"), "spec.source.staging.serverEndpoint"),
        parallel_pods=pods, pitr_window=window, **_common_backup_fields(spec, template))


# ------------------------------------------------------------------------------------------ restore

@dataclass(frozen=True)
class RestoreSpec:
    backup_name: str | None
    backup_id: str | None
    storage: str | None
    volume: Volume | None  # None: into S3 (cluster or shared)
    workload: Workload | None
    overwrite: bool
    sql_check: SqlEndpoint | None
    parallelism: int | None  # None: the engine's default for the storage
    job: JobOverrides
    hostname: str | None = None
    # Into the S3 prefix of a MatrixOneCluster or of a MatrixOne's SHARED file service.
    cluster: str | None = None
    shared: SharedS3 | None = None
    # The log service's volume: the ID allocator state (hk_data) goes to the root of its LOCAL file
    # service there, and with overwrite the old log (WAL) there is removed.
    log_volume: Volume | None = None
    parallel_pods: int = 1
    point_in_time: datetime | None = None  # spec.pointInTime (k8s/pointintime.py)

    @property
    def lease_key(self) -> str:
        return lease_key(self.volume, self.cluster, self.shared)

    @property
    def target_label(self) -> str:
        if self.volume is not None:
            return f"{self.volume.claim}/{self.volume.path}"
        return f"MatrixOneCluster {self.cluster}" if self.cluster else (self.shared.data_url if self.shared else "")


def parse_restore(spec: dict[str, Any]) -> RestoreSpec:
    name, bid = spec.get("backupName"), spec.get("backupID")
    at = point_in_time(spec)
    if at is not None:
        if bid:
            raise SpecError("spec.pointInTime takes backupName or no backup (the operator picks one), not backupID")
    elif bool(name) == bool(bid):
        raise SpecError("spec: set exactly one of backupName or backupID")
    storage = (spec.get("storageRef") or {}).get("name")
    if bid and not storage:
        raise SpecError("spec.backupID needs spec.storageRef")
    target = spec.get("target")
    if not isinstance(target, dict):
        raise SpecError("spec.target is required")
    given = [k for k in ("pvc", "cluster", "sharedStorage") if target.get(k)]
    if len(given) != 1:
        raise SpecError("spec.target: set exactly one of pvc (a data volume), cluster (a MatrixOneCluster) or "
                        f"sharedStorage (table data in S3){f', got {given}' if given else ''}")
    workload = _workload(target.get("workload"), "spec.target.workload")
    common = {"backup_name": _name(name, "spec.backupName") if name else None, "backup_id": bid,
              "storage": _name(storage, "spec.storageRef.name") if storage else None,
              "overwrite": bool(spec.get("overwrite", False)),
              "sql_check": _sql(spec.get("sqlCheck"), "spec.sqlCheck"),
              "parallelism": _optional_int(spec.get("parallelism")), "job": JobOverrides(dict(spec.get("job") or {}))}
    if at is not None and common["sql_check"] is None:
        raise SpecError("spec.pointInTime needs spec.sqlCheck: the PITR restore runs through that endpoint (a "
                        "sys-account user such as root)")
    if given[0] != "pvc":
        if at is not None and int(spec.get("parallelPods", 1)) != 1:
            raise SpecError("spec.pointInTime with table data in S3 restores in one pod (parallelPods 1)")
        if target.get("hostname"):
            raise SpecError("spec.target.hostname applies to a data volume (target.pvc)")
        if given[0] == "cluster" and workload is not None:
            raise SpecError("spec.target.workload: stop a MatrixOneCluster through its own spec (every set's "
                            "replicas to 0); the MatrixOne operator would undo a scale of its StatefulSets")
        cluster = _name(_need(target["cluster"], "name", "spec.target.cluster"), "spec.target.cluster.name") \
            if given[0] == "cluster" else None
        shared = None if cluster else parse_shared_s3((target["sharedStorage"] or {}).get("s3"),
                                                      "spec.target.sharedStorage.s3")
        log = target.get("logVolume")
        pods = int(spec.get("parallelPods", 1))
        if not 1 <= pods <= 64:
            raise SpecError(f"spec.parallelPods must be 1-64, got {pods}")
        return RestoreSpec(volume=None, workload=workload, cluster=cluster, shared=shared,
                           log_volume=_volume(log, "spec.target.logVolume", "data") if log else None,
                           parallel_pods=pods, point_in_time=at, **common)
    # MatrixOne's log directory is named after the pod's hostname: a StatefulSet's first pod is <name>-0.
    hostname = target.get("hostname") or (f"{workload.name}-0" if workload and workload.kind == "StatefulSet"
                                          else None)
    if target.get("logVolume") or int(spec.get("parallelPods", 1)) != 1:
        raise SpecError("spec.target.logVolume and spec.parallelPods apply to table data in S3 (target.cluster or "
                        "sharedStorage)")
    return RestoreSpec(volume=_volume(target.get("pvc"), "spec.target.pvc", "mo-data"), workload=workload,
                       hostname=hostname, point_in_time=at, **common)


def point_in_time(spec: dict[str, Any]) -> datetime | None:
    """spec.pointInTime, RFC 3339 with a zone."""
    text = spec.get("pointInTime")
    if not text:
        return None
    from mobackup.engine.errors import MobackupError
    from mobackup.engine.pitr_restore import parse_time

    try:
        return parse_time(str(text))
    except MobackupError as e:
        raise SpecError(f"spec.pointInTime: {e}") from None


# ----------------------------------------------------------------------------------------- schedule

@dataclass(frozen=True)
class ScheduleSpec:
    full: cron.Cron
    incremental: cron.Cron | None
    tz_name: str
    suspend: bool
    concurrency: str
    starting_deadline: int
    template_spec: dict[str, Any]
    template_labels: dict[str, str]
    template_annotations: dict[str, str]
    retention: RetentionPolicy  # the engine's, so that `prune` and schedules keep the same backups
    successful_limit: int
    failed_limit: int


def parse_schedule(spec: dict[str, Any], namespace: str) -> ScheduleSpec:
    def cron_of(key: str) -> cron.Cron:
        try:
            return cron.parse(str(spec[key]))
        except cron.CronError as e:
            raise SpecError(f"spec.{key}: {e}") from None

    full = cron_of("fullSchedule") if spec.get("fullSchedule") else None
    if full is None:
        raise SpecError("spec.fullSchedule is required")
    incr = cron_of("incrementalSchedule") if spec.get("incrementalSchedule") else None
    tz_name = spec.get("timeZone") or "UTC"
    try:
        cron.zone(tz_name)
    except cron.CronError as e:
        raise SpecError(f"spec.timeZone: {e}") from None
    tmpl = spec.get("template")
    if not isinstance(tmpl, dict) or not isinstance(tmpl.get("spec"), dict):
        raise SpecError("spec.template.spec is required")
    try:
        window = {"pointInTime": spec["pointInTime"]} if spec.get("pointInTime") else {}  # wins over the template's
        parse_backup({**tmpl["spec"], **window}, namespace, template=True)
    except SpecError as e:
        raise SpecError(f"template: {e}") from None
    r = spec.get("retention") or {}
    within = None
    if r.get("keepWithin"):
        try:
            within = cron.parse_duration(str(r["keepWithin"]))
        except ValueError as e:
            raise SpecError(f"spec.retention.keepWithin: {e}") from None
    for k in ("keepLast", "keepDaily", "keepWeekly", "keepMonthly"):
        if r.get(k) is not None and int(r[k]) < 0:
            raise SpecError(f"spec.retention.{k} must be >= 0")
    concurrency = spec.get("concurrencyPolicy", "Forbid")
    if concurrency not in ("Forbid", "Allow"):
        raise SpecError(f"spec.concurrencyPolicy must be Forbid or Allow, got {concurrency!r}")
    meta = tmpl.get("metadata") or {}
    return ScheduleSpec(
        full=full, incremental=incr, tz_name=tz_name, suspend=bool(spec.get("suspend", False)),
        concurrency=concurrency, starting_deadline=int(spec.get("startingDeadlineSeconds", 3600)),
        template_spec=dict(tmpl["spec"]), template_labels=dict(meta.get("labels") or {}),
        template_annotations=dict(meta.get("annotations") or {}),
        retention=RetentionPolicy(r.get("keepLast"), r.get("keepDaily"), r.get("keepWeekly"), r.get("keepMonthly"),
                                  within),
        successful_limit=int(spec.get("successfulBackupsHistoryLimit", 10)),
        failed_limit=int(spec.get("failedBackupsHistoryLimit", 3)),
    )
