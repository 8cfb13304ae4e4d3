"""Session-scoped pytest fixtures for the real test infrastructure.

Use from a conftest:  `from cluster.fixtures import s3_server, kube_cluster  # noqa: F401`
(or, once for the whole suite, `pytest_plugins = ["cluster.fixtures"]` in tests/conftest.py).

A fixture imported by several conftests gets one pytest definition per conftest; the servers are
therefore shared through a module-level, reference-counted singleton so that one session starts
each server at most once and stops it (by PID) after its last user is torn down.

A component that cannot be built makes the fixture FAIL with a message saying what is missing
(never skip).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from cluster import paths
from cluster.kube_cluster import KubeCluster, start_cluster
from cluster.real_cluster import RealCluster, start_real_cluster
from cluster.s3 import S3Server, start_s3

T = TypeVar("T")


class _Shared(Generic[T]):
    """One instance per process, started on first use, stopped when the last user releases it."""

    def __init__(self, name: str, start: Callable[[Path], T], stop: Callable[[T], None]) -> None:
        self._name, self._start, self._stop = name, start, stop
        self._lock = threading.Lock()
        self._value: T | None = None
        self._state_dir: Path | None = None
        self._users = 0
        self._error: str | None = None

    def acquire(self) -> T:
        with self._lock:
            if self._error is not None:   # do not retry a failed start for every test module
                pytest.fail(self._error, pytrace=False)
            if self._value is None:
                self._state_dir = Path(tempfile.mkdtemp(prefix=f"mobackup-{self._name}-"))
                try:
                    self._value = self._start(self._state_dir)
                except paths.MissingComponent as e:
                    self._error = f"{self._name}: {e}"
                    pytest.fail(self._error, pytrace=False)
                except Exception as e:
                    self._error = f"{self._name} failed to start (state in {self._state_dir}): {e}"
                    pytest.fail(self._error, pytrace=False)
                atexit.register(self.shutdown)
            self._users += 1
            return self._value

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
        self.shutdown()

    def shutdown(self) -> None:
        with self._lock:
            value, self._value = self._value, None
            if value is None:
                return
            self._stop(value)
            # Keep the state (logs) of a failed session for debugging only if asked to.
            if self._state_dir is not None and not _keep_state():
                shutil.rmtree(self._state_dir, ignore_errors=True)


def _keep_state() -> bool:
    import os

    return os.environ.get("MOBACKUP_TEST_KEEP_STATE", "") not in ("", "0")


_s3 = _Shared[S3Server]("s3", lambda d: start_s3(d), lambda s: s.stop())


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) on 127.0.0.1 with random credentials and an empty bucket.

    Attributes: endpoint ("http://127.0.0.1:PORT"), access_key, secret_key, bucket, region,
    data_dir; methods client() (boto3 S3 client) and env() (AWS_* variables for a subprocess).
    """
    value = _s3.acquire()
    try:
        yield value
    finally:
        _s3.release()


def _start_kube(state_dir: Path) -> KubeCluster:
    # One S3 server per session: the cluster reuses the s3_server singleton (and holds a reference).
    s3 = _s3.acquire()
    try:
        return start_cluster(state_dir, with_s3=False, s3=s3)
    except BaseException:
        _s3.release()
        raise


def _stop_kube(cluster: KubeCluster) -> None:
    cluster.s3 = None          # the S3 server belongs to the s3 singleton
    cluster.stop()
    _s3.release()


_kube = _Shared[KubeCluster]("kube", _start_kube, _stop_kube)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """A real Kubernetes control plane (etcd, kube-apiserver with RBAC + service-account tokens,
    kube-controller-manager) with the local node (kubelet/runtime test double) and the S3 server.

    Attributes: kubeconfig (admin Path), operator_kubeconfig (chart-RBAC ServiceAccount Path),
    api_url, ca_file, pv_root, s3 (the S3Server), operator (.namespace, .service_account,
    .source), state_dir. Methods: api() (plain-dict REST client), kubernetes_client(operator=False),
    create_namespace(prefix="t") -> name, delete_namespace(name, wait=False),
    make_pvc(namespace, name, size="1Gi") -> host Path, apply(manifest, namespace=None),
    pod_log(namespace, pod) -> str, env() -> KUBECONFIG/KUBECONFIG_OPERATOR/S3_*/AWS_* variables.
    """
    value = _kube.acquire()
    try:
        yield value
    finally:
        _kube.release()


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace for one test (its "default" ServiceAccount exists); deleted afterwards."""
    name = kube_cluster.create_namespace()
    yield name
    kube_cluster.delete_namespace(name)


def _stop_real(cluster: RealCluster) -> None:
    problems = cluster.stop()
    if problems:   # fail loudly: the machine is not as the node found it
        raise RuntimeError("the real node's tear-down left: " + "; ".join(problems))


_real = _Shared[RealCluster]("real-node", lambda d: start_real_cluster(d), _stop_real)


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    """A control plane with a REAL node (cluster.real_node): containerd + runc, kubelet,
    kube-scheduler, kube-proxy, a CNI bridge; the project's image (built from the Dockerfile for
    this tree) imported under the chart's default name. The same interface as kube_cluster, except
    `operator` is None (install the chart with helm) and make_pvc() makes local PVs."""
    value = _real.acquire()
    try:
        yield value
    finally:
        _real.release()
