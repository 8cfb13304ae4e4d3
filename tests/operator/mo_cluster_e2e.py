"""End-to-end helpers for a MatrixOne whose table data lives in S3 (the suite's S3 server), described by a
`MatrixOneCluster` object (the MatrixOne operator's CRD, core.matrixorigin.io/v1alpha1, from
../shared/matrixone/matrixone-operator-crds). The MatrixOne operator does not run here: the real
mo-service runs as StatefulSet `mo` on PVC `mo-data` (configured so SHARED and ETL are MINIO under
`<bucket>/<folder>/`, the operator's layout for sharedStorage.s3.path `bucket/folder`), and
`matrixone_cluster()` writes the object and its status as the MatrixOne operator would once Ready.

The fixtures are registered for every test of tests/operator by an import in its conftest.py (a test
that imported them itself would trip ruff's F811 on its parameters); a test imports the helpers:

    from mo_cluster_e2e import S3MatrixOne, matrixone_cluster, s3_keys, set_cluster_replicas

Fixtures:
- `mo_cluster_crd` (session): the MatrixOneCluster CRD installed and Established.
- `s3_mo` (function): `start(name="mo", claim="mo-data", bucket=None, folder=None) -> S3MatrixOne`.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from mo_e2e import Env

from cluster.kube_api import KubeApi, object_path
from mo_s3 import configure_s3
from mo_server import (
    DEFAULT_VERSION,
    FAILED_KEY,
    PASSWORD,
    REPO,
    USER,
    MatrixOne,
    ServerLock,
    SqlClient,
    statefulset,
    wait_ports_free,
    wait_sql,
)

MO_CRD_FILE = REPO.parent / "shared" / "matrixone" / "matrixone-operator-crds" / \
    "core.matrixorigin.io_matrixoneclusters.yaml"
MO_GROUP = "core.matrixorigin.io"
MO_API = f"/apis/{MO_GROUP}/v1alpha1"
MO_VERSION = DEFAULT_VERSION


# ---- the CRD
def install_matrixone_cluster_crd(api: KubeApi, timeout: float = 60) -> str:
    """Server-side applies the MatrixOneCluster CRD (idempotent) and waits until it is Established.
    Returns the CRD's name."""
    doc = yaml.safe_load(MO_CRD_FILE.read_text())
    name = doc["metadata"]["name"]
    api.apply(object_path(doc), doc)
    deadline = time.monotonic() + timeout
    while True:
        crd = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
        if conds.get("Established") == "True":
            return str(name)
        assert time.monotonic() < deadline, f"CRD {name} not Established: {conds}"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def mo_cluster_crd(kube_cluster: Any) -> None:
    install_matrixone_cluster_crd(kube_cluster.api())


# ---- MatrixOne on S3 as a StatefulSet
class S3MatrixOne(SqlClient):
    """SQL on the StatefulSet's mo-service (127.0.0.1:6001), and where its data lives."""

    def __init__(self, name: str, claim: str, bucket: str, folder: str, host: Path) -> None:
        self.name, self.claim, self.bucket, self.folder = name, claim, bucket, folder
        self.host = host  # the PVC's host directory (the pod's /data, its working directory)

    @property
    def path(self) -> str:
        """sharedStorage.s3.path of the MatrixOneCluster: `bucket/folder`."""
        return f"{self.bucket}/{self.folder}"

    @property
    def data_prefix(self) -> str:
        """The SHARED file service's key prefix in the bucket (tables, checkpoints)."""
        return f"{self.folder}/data"


def default_bucket(env: Env) -> str:
    return f"mo-{env.ns}"  # namespaces are unique per test (t-<hex>): a valid, per-test bucket name


def ensure_bucket(s3: Any, bucket: str) -> None:
    client = s3.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)


def s3_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    """The object keys under `prefix/` in `bucket`."""
    client = s3.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def stop_mo(env: Env, *names: str, timeout: float = 90) -> None:
    """Scales the StatefulSets to 0 and waits until their pods are gone and MatrixOne's ports free."""
    for name in names:
        env.api.merge_patch(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets/{name}", {"spec": {"replicas": 0}})
    deadline = time.monotonic() + timeout
    for name in names:
        while env.api.get(f"/api/v1/namespaces/{env.ns}/pods", labelSelector=f"app={name}")["items"]:
            assert time.monotonic() < deadline, f"the pods of {name} did not stop"
            time.sleep(0.5)
    wait_ports_free(timeout)


@pytest.fixture
def s3_mo(request: pytest.FixtureRequest, env: Env, mo_install: Callable[[str], Path]
          ) -> Iterator[Callable[..., S3MatrixOne]]:
    """`start(name="mo", claim="mo-data", bucket=None, folder=None) -> S3MatrixOne`: the real mo-service
    (the suite's DEFAULT_VERSION) as a StatefulSet of 1 replica on PVC `claim` (kept if it exists), its
    SHARED file service MINIO (path-style S3) at `<bucket>/<folder>/data` and ETL at
    `<bucket>/<folder>/etl` on the suite's S3 server (bucket default `mo-<namespace>`, created if
    missing; folder default `name`). The S3 server's keys reach the
    server only through its config files in `etc/launch/` on the PVC. Returns when SQL answers; holds
    the suite's MatrixOne lock until teardown, which stops the StatefulSets."""
    lock = ServerLock()
    started: list[str] = []

    def start(name: str = "mo", claim: str = "mo-data", bucket: str | None = None,
              folder: str | None = None, restore_from: str | None = None) -> S3MatrixOne:
        bucket, folder = bucket or default_bucket(env), folder or name
        home = mo_install(MO_VERSION)
        lock.acquire()
        wait_ports_free()
        ensure_bucket(env.s3, bucket)
        host = env.cluster.pv_root / env.ns / claim
        if not host.exists():
            host = env.cluster.make_pvc(env.ns, claim, size="5Gi")
        shutil.copytree(home / "etc", host / "etc", dirs_exist_ok=True)
        configure_s3(MatrixOne(home, host, MO_VERSION), env.s3.endpoint, env.s3.access_key, env.s3.secret_key,
                     bucket, folder)
        if restore_from:
            add_restore_from(host / "etc" / "launch" / "log.toml", env, bucket, folder, restore_from)
        env.api.create(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets", statefulset(name, claim, home))
        started.append(name)
        try:
            wait_sql(180)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- {name}-0 log ---\n{_pod_log_tail(env, f'{name}-0')}") from exc
        return S3MatrixOne(name, claim, bucket, folder, host)

    yield start
    try:
        if started and request.node.stash.get(FAILED_KEY, False):
            for name in started:
                print(f"--- {name}-0 log (tail) ---\n{_pod_log_tail(env, f'{name}-0')}")
        if started:
            stop_mo(env, *started)
    finally:
        lock.release()


def add_restore_from(log_toml: Path, env: Env, bucket: str, folder: str, file: str) -> None:
    """What the MatrixOne operator configures for a cluster created with
    `spec.logService.initialConfig.restoreFrom`: a BACKUP file service at `<bucket>/<folder>/` and the
    log service bootstrapping the ID allocator state from `BACKUP://<file>` (read plain)."""
    text = log_toml.read_text()
    backup_fs = (f'\n[[fileservice]]\nname = "BACKUP"\nbackend = "MINIO"\n\n[fileservice.s3]\nbucket = "{bucket}"\n'
                 f'endpoint = "{env.s3.endpoint}"\nkey-prefix = "{folder}/"\nkey-id = "{env.s3.access_key}"\n'
                 f'key-secret = "{env.s3.secret_key}"\n\n[fileservice.cache]\nmemory-capacity = "1B"\n')
    log_toml.write_text(text + backup_fs + f'\n[logservice.BootstrapConfig.restore]\nfile-path = "BACKUP://{file}"\n')


def _pod_log_tail(env: Env, pod: str, lines: int = 60) -> str:
    try:
        return "\n".join(env.cluster.pod_log(env.ns, pod).splitlines()[-lines:])
    except Exception as exc:  # the log is a diagnostic only
        return f"(no log: {exc})"


# ---- the MatrixOneCluster object
def cluster_path(env: Env, name: str = "") -> str:
    p = f"{MO_API}/namespaces/{env.ns}/matrixoneclusters"
    return f"{p}/{name}" if name else p


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(obj: dict[str, Any], ready: bool) -> dict[str, Any]:
    """The status the MatrixOne operator writes: phase Ready/NotReady and the Ready and Synced conditions."""
    generation = int(obj["metadata"].get("generation", 1))
    now = _now()
    old = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}

    def condition(kind: str, status: str, reason: str) -> dict[str, Any]:
        prev = old.get(kind)
        since = prev["lastTransitionTime"] if prev and prev["status"] == status else now
        return {"type": kind, "status": status, "reason": reason, "message": "", "lastTransitionTime": since,
                "observedGeneration": generation}

    return {"phase": "Ready" if ready else "NotReady",
            "conditions": [condition("Ready", "True", "AllSetsReady") if ready
                           else condition("Ready", "False", "LogServiceNotReady"),
                           condition("Synced", "True", "AllSetsSynced")]}


def matrixone_cluster(env: Env, name: str, bucket: str, folder: str, secret_name: str,
                      replicas: int = 1) -> dict[str, Any]:
    """Creates Secret `secret_name` (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: the S3 server's keys), Secret
    `<name>-credential` (username / password: the suite's MatrixOne user) and the MatrixOneCluster `name`
    with its data at sharedStorage.s3.path `bucket/folder` on the suite's S3 server; then sets its status
    (status subresource) as the MatrixOne operator does once the cluster is Ready: host 127.0.0.1,
    port 6001, credentialRef, phase Ready, conditions Ready/Synced True. Returns the object."""
    if not env.exists_secret(secret_name):
        env.secret(secret_name, {"AWS_ACCESS_KEY_ID": env.s3.access_key, "AWS_SECRET_ACCESS_KEY": env.s3.secret_key})
    credential = f"{name}-credential"
    if not env.exists_secret(credential):
        env.secret(credential, {"username": USER, "password": PASSWORD})
    env.api.create(cluster_path(env), {
        "apiVersion": f"{MO_GROUP}/v1alpha1", "kind": "MatrixOneCluster",
        "metadata": {"name": name, "namespace": env.ns},
        "spec": {
            "version": MO_VERSION,
            "imageRepository": "matrixorigin/matrixone",
            "logService": {
                "replicas": replicas,
                "sharedStorage": {"s3": {"path": f"{bucket}/{folder}", "type": "minio", "endpoint": env.s3.endpoint,
                                         "region": env.s3.region, "secretRef": {"name": secret_name}}},
                "volume": {"size": "5Gi"},
            },
            "tn": {"replicas": replicas},
            "cnGroups": [{"name": "tp", "replicas": replicas}],
        }})
    obj = env.api.get(cluster_path(env, name))
    status = {"host": "127.0.0.1", "port": 6001, "credentialRef": {"name": credential}, **_status(obj, replicas > 0)}
    return dict(env.api.merge_patch(cluster_path(env, name) + "/status", {"status": status}))


def set_cluster_replicas(env: Env, name: str, n: int) -> dict[str, Any]:
    """Patches logService.replicas, tn.replicas (and dn/tp/ap if set) and every cnGroups[].replicas to
    `n` (how a user stops or starts a MatrixOneCluster), then the status: phase Ready (n > 0) or
    NotReady with condition Ready False, as the MatrixOne operator reports. Returns the object."""
    obj = env.api.get(cluster_path(env, name))
    spec = obj["spec"]
    patch: dict[str, Any] = {"logService": {"replicas": n}}
    for key in ("tn", "dn", "tp", "ap"):
        if key in spec:
            patch[key] = {"replicas": n}
    if "cnGroups" in spec:
        patch["cnGroups"] = [{**group, "replicas": n} for group in spec["cnGroups"]]
    obj = env.api.merge_patch(cluster_path(env, name), {"spec": patch})
    return dict(env.api.merge_patch(cluster_path(env, name) + "/status", {"status": _status(obj, n > 0)}))


def get_cluster(env: Env, name: str) -> dict[str, Any]:
    return dict(env.api.get(cluster_path(env, name)))
