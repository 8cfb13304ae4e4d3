"""A MatrixOne whose table data lives in S3: what a backup or restore needs from a `MatrixOneCluster`
(the MatrixOne operator's kind, core.matrixorigin.io/v1alpha1) or from the fields given directly.

From a MatrixOneCluster (read with `get` only):
- `spec.logService.sharedStorage.s3`: path `bucket/folder` (table data under folder/data), type
  (minio: path-style addressing), endpoint, region, secretRef (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY);
- `status.host` / `status.port`: the SQL endpoint (its CN Service, or the proxy), once Ready;
- `status.credentialRef.name`: the Secret with `username` and `password` the MatrixOne operator made.
An explicit `source.sql` overrides the last two. `sharedStorage.fileSystem` holds no S3 data: refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .kube import Kube, NotFound
from .models import (
    MO_CLUSTER_GROUP,
    MO_CLUSTER_PLURAL,
    MO_CLUSTER_VERSION,
    SecretKey,
    SharedS3,
    SpecError,
    SqlEndpoint,
    parse_shared_s3,
)
from .storage import MissingInput, secret_value


class ClusterError(Exception):
    """The reason (CamelCase) and a readable message (shown in status and in an Event)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ClusterSource:
    shared: SharedS3
    sql: SqlEndpoint | None  # None: the cluster is not Ready yet and no explicit sql was given
    running_sets: tuple[str, ...]  # sets with replicas > 0 ("logService 3", "cnGroups[tp] 2", ...)


def get_cluster(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    try:
        return kube.get_obj(MO_CLUSTER_GROUP, MO_CLUSTER_VERSION, ns, MO_CLUSTER_PLURAL, name)
    except NotFound:
        if not kube.has_api(MO_CLUSTER_GROUP, MO_CLUSTER_VERSION):
            raise ClusterError("MatrixOneClusterCRDMissing",
                               f"this cluster serves no {MO_CLUSTER_GROUP}/{MO_CLUSTER_VERSION} API: install the "
                               "MatrixOne operator's CRDs, or give source.sharedStorage and source.sql") from None
        raise ClusterError("ClusterNotFound", f"MatrixOneCluster {ns}/{name} not found") from None


def running_sets(cluster: dict[str, Any]) -> tuple[str, ...]:
    """The cluster's sets whose spec still asks for pods (a restore in place needs all at 0)."""
    spec = cluster.get("spec") or {}
    out = []
    for key in ("logService", "tn", "dn", "tp", "ap", "proxy", "webui"):
        replicas = int((spec.get(key) or {}).get("replicas") or 0)
        if replicas:
            out.append(f"{key} {replicas}")
    for group in spec.get("cnGroups") or []:
        replicas = int(group.get("replicas") or 0)
        if replicas:
            out.append(f"cnGroups[{group.get('name')}] {replicas}")
    return tuple(out)


def cluster_source(kube: Kube, ns: str, name: str, sql: SqlEndpoint | None) -> ClusterSource:
    cluster = get_cluster(kube, ns, name)
    storage = ((cluster.get("spec") or {}).get("logService") or {}).get("sharedStorage") or {}
    if not storage.get("s3"):
        kinds = ", ".join(sorted(storage)) or "nothing"
        raise ClusterError("UnsupportedSharedStorage",
                           f"MatrixOneCluster {name}: spec.logService.sharedStorage has {kinds}, not s3; only "
                           "table data in S3 can be backed up this way")
    try:
        shared = parse_shared_s3(storage["s3"], f"MatrixOneCluster {name} spec.logService.sharedStorage.s3")
    except SpecError as e:
        raise ClusterError("InvalidCluster", str(e)) from None
    if sql is None:
        st = cluster.get("status") or {}
        credential = (st.get("credentialRef") or {}).get("name")
        if st.get("host") and credential:
            try:
                user = secret_value(kube, ns, SecretKey(credential, "username"))
            except MissingInput as e:
                if e.reason != "SecretKeyNotFound":
                    raise ClusterError(e.reason, f"the cluster's credential: {e}") from None
                user = "dump"  # the user the MatrixOne operator creates
            sql = SqlEndpoint(str(st["host"]), int(st.get("port") or 6001), user, SecretKey(credential, "password"))
    return ClusterSource(shared, sql, running_sets(cluster))
