"""End-to-end helpers (used by conftest.py and the e2e tests): the operator as a subprocess with the
chart's RBAC (the restricted operator kubeconfig, never admin), the MatrixOne stand-in workload,
and small waits over the real API."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.kube_api import ApiError, KubeApi

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
G = "/apis/mobackup.io/v1alpha1"
PLURAL = {"MOBackup": "mobackups", "MORestore": "morestores", "MOBackupStorage": "mobackupstorages",
          "MOBackupSchedule": "mobackupschedules", "MORestoreDrill": "morestoredrills"}
JOB_SA = "mo-backup-operator-job"

# The MatrixOne stand-in: generates a realistic mo-data on first start, then applies a change
# (new objects, GC'd objects, a new checkpoint, appended logs: what MatrixOne does between backups)
# whenever the test drops a seed into /data/.change-request. Deterministic, so tests know each state.
STAND_IN = r"""
import os, signal, sys, time
from pathlib import Path
from mobackup.sample import generate_mo_data, mutate_mo_data
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
root = Path("/data/mo-data")
if not (root / "shared").exists():
    generate_mo_data(root, seed=int(os.environ.get("SEED", "1")), objects=int(os.environ.get("OBJECTS", "40")))
Path("/data/.ready").write_text(str(os.getpid()))
req = Path("/data/.change-request")
while True:
    if req.exists():
        seed = int(req.read_text().strip() or "2")
        mutate_mo_data(root, seed=seed)
        req.unlink()
    time.sleep(0.1)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`mobackup operator` as a subprocess, with the chart's RBAC (operator kubeconfig)."""

    def __init__(self, cluster: Any, namespaces: list[str], log: Path, kubeconfig: Path | None = None,
                 job_service_account: str = JOB_SA, resync_seconds: str = "1", health_port: int = 0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.cluster, self.namespaces, self.log_path = cluster, namespaces, log
        self.extra_env = dict(extra_env or {})
        self.kubeconfig = kubeconfig or cluster.operator_kubeconfig
        self.job_service_account = job_service_account
        self.resync_seconds = resync_seconds
        self.health_port = health_port
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
               "MOBACKUP_JOB_SERVICE_ACCOUNT": self.job_service_account,
               "MOBACKUP_AGENT_IMAGE": "mo-backup-operator:test",
               "MOBACKUP_RESYNC_SECONDS": self.resync_seconds, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
               **self.extra_env}
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "KUBERNETES_SERVICE_HOST"):
            env.pop(k, None)  # the operator must get credentials from Secrets only
        args = [str(VENV_BIN / "mobackup"), "operator", "--standalone", "--metrics-port", str(self.metrics_port),
                "--health-port", str(self.health_port)]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"operator exited: {self.log_tail()}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"operator metrics endpoint never came up: {self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def wait_for_blobs(options: Any, timeout: float = 60) -> None:
    """Wait until the repository holds a stored blob: the agent's copy is under way. (Jobs have no API
    access, so the status shows no progress before the run ends.)"""
    from mobackup.engine.repository import make_backend

    backend = make_backend(options)
    deadline = time.monotonic() + timeout
    while next(iter(backend.list("blobs/")), None) is None:
        assert time.monotonic() < deadline, f"no blob stored in {backend.location} within {timeout} s"
        time.sleep(0.2)


@dataclass
class Env:
    """One test's namespace with the operator running on it, and helpers."""

    cluster: Any
    ns: str
    op: OperatorProcess
    s3: Any
    tmp: Path
    api: KubeApi = field(init=False)

    def __post_init__(self) -> None:
        self.api = self.cluster.api()

    # ---- objects
    def path(self, kind: str, name: str = "") -> str:
        p = f"{G}/namespaces/{self.ns}/{PLURAL[kind]}"
        return f"{p}/{name}" if name else p

    def create(self, kind: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
        body = {"apiVersion": "mobackup.io/v1alpha1", "kind": kind,
                "metadata": {"name": name, "namespace": self.ns, **meta}, "spec": spec}
        return self.api.create(self.path(kind), body)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.api.get(self.path(kind, name))

    def exists(self, kind: str, name: str) -> bool:
        try:
            self.get(kind, name)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def wait(self, kind: str, name: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 90,
             what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                obj = self.get(kind, name)
            except ApiError as e:
                if e.status != 404:
                    raise
                obj = {}
            if obj and pred(obj):
                return obj
            time.sleep(0.2)
        raise AssertionError(f"{kind} {name}: timed out waiting for {what or pred}; status="
                             f"{obj.get('status')}\n--- operator log ---\n{self.op.log_tail()}")

    def wait_phase(self, kind: str, name: str, *phases: str, timeout: float = 120) -> dict[str, Any]:
        return self.wait(kind, name, lambda o: (o.get("status") or {}).get("phase") in phases, timeout,
                         f"phase in {phases}")

    def wait_gone(self, kind: str, name: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.exists(kind, name):
                return
            time.sleep(0.2)
        raise AssertionError(f"{kind} {name} still exists: {self.get(kind, name).get('status')}\n"
                             f"{self.op.log_tail()}")

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.api.get(f"/api/v1/namespaces/{self.ns}/events")["items"]
        return [e for e in items if e["involvedObject"].get("name") == name]

    def event_reasons(self, name: str, expected: set[str], timeout: float = 30) -> set[str]:
        """The reasons of `name`'s Events once they include `expected` (an Event is posted just after
        the status patch it reports, so a reader of the status can be a moment early), or as they
        are at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            reasons = {e["reason"] for e in self.events(name)}
            if expected <= reasons or time.monotonic() > deadline:
                return reasons
            time.sleep(0.2)

    # ---- fixtures of the data side
    def secret(self, name: str, data: dict[str, str]) -> None:
        self.api.create(f"/api/v1/namespaces/{self.ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"mobackup.io/credentials": "true"}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    def s3_storage(self, name: str = "s3", prefix: str | None = None, endpoint: str | None = None,
                   secret: str = "s3-creds", encryption: bool = False, wait: str | None = "Available") -> None:
        if not self.exists_secret(secret) and secret == "s3-creds":
            self.secret(secret, {"AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key})
        spec: dict[str, Any] = {"s3": {"endpoint": endpoint or self.s3.endpoint, "bucket": self.s3.bucket,
                                       "prefix": prefix or f"{self.ns}/{name}", "region": self.s3.region,
                                       "pathStyle": True, "credentialsSecretRef": {"name": secret}}}
        if encryption:
            self.secret("enc-key", {"key": "correct horse battery staple"})
            spec["encryption"] = {"keySecretRef": {"name": "enc-key"}}
        self.create("MOBackupStorage", name, spec)
        if wait:
            self.wait_phase("MOBackupStorage", name, wait, timeout=90)

    def exists_secret(self, name: str) -> bool:
        try:
            self.api.get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
            return True
        except ApiError:
            return False

    def repository_options(self, name: str = "s3", encryption: bool = False) -> Any:
        from mobackup.engine.repository import RepositoryOptions

        return RepositoryOptions(
            url=f"s3://{self.s3.bucket}/{self.ns}/{name}", s3_endpoint=self.s3.endpoint, s3_region=self.s3.region,
            s3_path_style=True, s3_access_key_id=self.s3.access_key, s3_secret_access_key=self.s3.secret_key,
            encryption_key="correct horse battery staple" if encryption else None)

    def repository(self, name: str = "s3", encryption: bool = False) -> Any:
        from mobackup.engine.repository import open_repository

        return open_repository(self.repository_options(name, encryption))

    def stand_in(self, name: str = "mo", claim: str = "mo-data", seed: int = 1, objects: int = 40) -> Path:
        """A PVC and the MatrixOne stand-in StatefulSet on it; returns the host dir of mo-data."""
        host = self.cluster.make_pvc(self.ns, claim)
        self.api.create(f"/apis/apps/v1/namespaces/{self.ns}/statefulsets", {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "terminationGracePeriodSeconds": 5,
                         "containers": [{"name": "matrixone", "image": "matrixone-stand-in",
                                         "command": ["python", "-c", STAND_IN],
                                         "env": [{"name": "SEED", "value": str(seed)},
                                                 {"name": "OBJECTS", "value": str(objects)}],
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}}})
        deadline = time.monotonic() + 60
        while not (host / ".ready").exists():
            assert time.monotonic() < deadline, "the MatrixOne stand-in never started"
            time.sleep(0.2)
        return host / "mo-data"

    def change(self, host_data: Path, seed: int) -> None:
        """Ask the running stand-in to change its data, and wait until it did."""
        req = host_data.parent / ".change-request"
        req.write_text(str(seed))
        deadline = time.monotonic() + 30
        while req.exists():
            assert time.monotonic() < deadline, "the stand-in did not apply the change (is it running?)"
            time.sleep(0.1)

    def replicas(self, sts: str = "mo") -> tuple[int, dict[str, str]]:
        obj = self.api.get(f"/apis/apps/v1/namespaces/{self.ns}/statefulsets/{sts}")
        return int(obj["spec"]["replicas"]), obj["metadata"].get("annotations") or {}

    def wait_replicas_running(self, sts: str = "mo", n: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.api.get(f"/api/v1/namespaces/{self.ns}/pods", labelSelector=f"app={sts}")["items"]
            running = [p for p in pods if p["status"].get("phase") == "Running"
                       and not p["metadata"].get("deletionTimestamp")]
            if len(running) == n and self.replicas(sts)[0] == n:
                return
            time.sleep(0.2)
        raise AssertionError(f"{sts}: not {n} running pod(s); replicas={self.replicas(sts)}")


def jobs_run_these_sources(env: Env) -> None:
    """The local node plays the image with the project's .venv, whose editable install may be another
    checkout: the Jobs get the PYTHONPATH this test runs with (as the chart's jobDefaults.env would)."""
    if not os.environ.get("PYTHONPATH"):
        return
    env.op.kill(signal.SIGTERM)
    defaults = {"env": [{"name": "PYTHONPATH", "value": os.environ["PYTHONPATH"]}]}
    env.op = OperatorProcess(env.cluster, [env.ns], env.tmp / "operator-2.log",
                             extra_env={"MOBACKUP_JOB_DEFAULTS": json.dumps(defaults)})
    env.op.start()
