"""The "local node": a TEST DOUBLE for the kubelet and the container runtime.

The test control plane is real (etcd, kube-apiserver, kube-controller-manager) but has no
scheduler, no kubelet and no container runtime, and this machine has no Docker. This module
stands in for those three, so that the pods the real controllers create (Job pods, the pods of a
StatefulSet or Deployment standing for MatrixOne) actually run:

- it registers a Node and binds every unscheduled pod to it (the scheduler's job);
- it runs each container's command + args as a local process (images are IGNORED: the command
  runs on this machine; a command named `mobackup` runs the repository's .venv/bin/mobackup,
  and .venv/bin is first on PATH), with the pod's env (value, valueFrom secretKeyRef /
  configMapKeyRef / fieldRef / resourceFieldRef, envFrom, $(VAR) expansion), workingDir, and its
  volumes bound at their mountPaths in a private mount namespace (bubblewrap:
  `bwrap --bind / / --bind SRC DST ...`): PVC -> the bound PV's hostPath/local path, secret,
  configMap, emptyDir, hostPath, downwardAPI, projected (service-account token from the
  TokenRequest API, ca.crt, namespace); KUBERNETES_SERVICE_HOST/PORT point at the local
  kube-apiserver, so in-cluster clients work;
- it reports phase, conditions, container states, exit codes, restart counts and termination
  messages (terminationMessagePath, FallbackToLogsOnError) in the pod status, so the real Job
  controller completes/fails Jobs and honours backoffLimit and activeDeadlineSeconds;
- restartPolicy Always/OnFailure restart exited containers (1 s backoff doubling to 10 s, shorter
  than the kubelet's 10 s..5 min so tests stay fast); pod activeDeadlineSeconds is enforced;
- deleting a pod kills its process groups (SIGTERM, SIGKILL after the grace period), reports
  the final status and removes the pod object, as the kubelet does;
- PVCs that nobody pre-bound get a hostPath PV under the PV root (a stand-in dynamic
  provisioner for the default StorageClass "local-node"); released PVs it provisioned are deleted.

Not emulated: images, networking (all pods share the host network: 127.0.0.1), resource limits,
securityContext (processes run as the test user), probes (a running container is Ready), pod logs
through the API (each container's stdout/stderr is in STATE/pods/<ns>_<pod>_<uid>/<container>.log),
token rotation (tokens are requested once, for 1 h or the requested expiry). Mount points that do
not exist on the host (e.g. /mo-data) are created there as empty directories and left in place
(removing one would detach it inside other pods' mount namespaces).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster.kube_api import ApiError, KubeApi

log = logging.getLogger("local-node")

NODE_NAME = "local-node"
STORAGE_CLASS = "local-node"
PROVISIONER = "mobackup.test/local-node"
PROVISIONED_ANNOTATION = "mobackup.test/provisioned-by"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_TERMINATION_MESSAGE = 4096
TERMINAL = ("Succeeded", "Failed")


class NotReady(Exception):
    """A referenced object (Secret, ConfigMap, PVC...) is not there yet: retry, pod stays Pending."""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: $$ escapes, unknown references stay as they are."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            if value[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if value[i + 1] == "(":
                j = value.find(")", i + 2)
                if j != -1:
                    name = value[i + 2 : j]
                    out.append(env[name] if name in env else value[i : j + 1])
                    i = j + 1
                    continue
        out.append(value[i])
        i += 1
    return "".join(out)


_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
             "T": 10**12, "m": 0.001}


def parse_quantity(q: str | int | float) -> float:
    s = str(q)
    for suf, mult in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(suf):
            return float(s[: -len(suf)]) * mult
    return float(s)


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool = False
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    next_start: float = 0.0
    backoff: float = 1.0
    log_offset: int = 0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> dict[str, Any]:
        running = "running" in self.state
        return {
            "name": self.name, "image": self.spec.get("image", ""), "imageID": "local://ignored",
            "containerID": f"local://{self.proc.pid}" if self.proc else "",
            "ready": running and not self.init, "started": running, "restartCount": self.restart_count,
            "state": self.state, "lastState": self.last_state,
        }


class PodRunner(threading.Thread):
    """Runs one pod to its end; all API writes about the pod happen here."""

    def __init__(self, node: LocalNode, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.node, self.pod = node, pod
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = node.state_dir / "pods" / f"{self.ns}_{self.pod_name}_{self.uid[:8]}"
        self.stop_event = threading.Event()
        self.deleted = False    # the object is gone already (no status to write)
        self.done = threading.Event()
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers", [])]
        self.containers = [Container(c) for c in spec.get("containers", [])]
        self.start_time = now_iso()
        self.phase = "Pending"
        self.reason = ""
        self.message = ""
        self.volumes: dict[str, Path] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self.deadline_at: float | None = None

    @property
    def hostname(self) -> str:
        # Like the kubelet: spec.hostname or the pod name, truncated to 63 characters.
        return str(self.pod["spec"].get("hostname") or self.pod_name)[:63].rstrip("-.")

    # ---- control from the watch loop -------------------------------------------------------
    def terminate(self, deleted: bool = False) -> None:
        self.deleted = self.deleted or deleted
        self.stop_event.set()

    # ---- main ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # the node must survive any one pod's failure
            log.exception("pod %s/%s: runner failed", self.ns, self.pod_name)
            self._kill_all(0)
            self.phase, self.reason, self.message = "Failed", "LocalNodeError", str(e)[:1000]
            self._report()
        finally:
            if self.stop_event.is_set() and not self.deleted:
                self._finish_deletion()
            shutil.rmtree(self.dir / "volumes", ignore_errors=True)
            self.done.set()

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._report()
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        self.deadline_at = time.monotonic() + deadline if deadline else None
        # Volumes and env may reference objects created a moment later: keep trying, like the kubelet.
        while not self._stopping():
            stage = "ContainerCreating"
            try:
                self._prepare_volumes()
                stage = "CreateContainerConfigError"
                self.envs = {c.name: self._container_env(c.spec)
                             for c in self.init_containers + self.containers}
                break
            except NotReady as e:
                self._set_waiting(stage, str(e))
                self.stop_event.wait(1.0)
        if self._stopping():
            return self._stop_for_deletion_or_deadline()

        for c in self.init_containers:
            while True:
                code = self._run_to_end(c)
                if code is None:
                    return self._stop_for_deletion_or_deadline()
                if code == 0:
                    break
                if self.restart_policy == "Never":
                    self.phase, self.reason = "Failed", ""
                    return self._report()
                self._backoff_sleep(c)
        self.phase = "Running"
        for c in self.containers:
            self._start(c)
        self._report()
        while True:
            if self._stopping():
                return self._stop_for_deletion_or_deadline()
            changed = False
            for c in self.containers:
                if c.proc is not None and c.proc.poll() is not None:
                    self._record_exit(c)
                    changed = True
                if c.proc is None and "terminated" in c.state and self._should_restart(c) \
                        and time.monotonic() >= c.next_start:
                    c.last_state = {"terminated": c.state["terminated"]}
                    c.restart_count += 1
                    self._start(c)
                    changed = True
            if all(c.proc is None and "terminated" in c.state and not self._should_restart(c)
                   for c in self.containers):
                failed = any(c.state["terminated"]["exitCode"] != 0 for c in self.containers)
                self.phase = "Failed" if failed else "Succeeded"
                return self._report()
            if changed:
                self._report()
            self.stop_event.wait(0.1)

    # ---- processes -------------------------------------------------------------------------
    def _should_restart(self, c: Container) -> bool:
        if self.restart_policy == "Always":
            return True
        return self.restart_policy == "OnFailure" and c.state["terminated"]["exitCode"] != 0

    def _backoff_sleep(self, c: Container) -> None:
        self.stop_event.wait(c.backoff)
        c.backoff = min(c.backoff * 2, 10.0)
        c.last_state = {"terminated": c.state.get("terminated", {})}
        c.restart_count += 1

    def _run_to_end(self, c: Container) -> int | None:
        self._start(c)
        self._report()
        while c.proc is not None and c.proc.poll() is None:
            if self._stopping():
                return None
            self.stop_event.wait(0.1)
        self._record_exit(c)
        self._report()
        return int(c.state["terminated"]["exitCode"])

    def _start(self, c: Container) -> None:
        spec = c.spec
        env = self.envs[c.name]
        argv = [expand(a, env) for a in spec.get("command", []) + spec.get("args", [])]
        if not spec.get("command"):
            raise RuntimeError(f"container {c.name}: no command (the local node ignores images and "
                               "runs only explicit commands)")
        if os.path.basename(argv[0]) == "mobackup":
            argv[0] = str(self.node.venv_bin / "mobackup")
        cdir = self.dir / c.name
        cdir.mkdir(parents=True, exist_ok=True)
        term = cdir / "termination-log"
        term.write_bytes(b"")
        term_path = spec.get("terminationMessagePath") or "/dev/termination-log"
        # --die-with-parent: if the local node dies, its containers die with it (no orphans).
        bwrap = ["bwrap", "--die-with-parent", "--bind", "/", "/", "--dev", "/dev", "--unshare-uts",
                 "--hostname", self.hostname]
        mounts = list(self._mounts(c.spec, env))
        for mount_path, src, ro in mounts:
            bwrap += ["--ro-bind" if ro else "--bind", str(src), mount_path]
        # The project (its .venv and, through the editable install, its sources) plays the image: it
        # must stay visible when a volume is mounted over a directory holding it, e.g. the Job's
        # emptyDir at /tmp over a clone under /tmp. Bind it back on top, read-only.
        project = str(self.node.venv_bin.parent.parent)
        if any(project.startswith(mount_path.rstrip("/") + "/") for mount_path, _, _ in mounts):
            bwrap += ["--ro-bind", project, project]
        bwrap += ["--bind", str(term), os.path.realpath(term_path)]
        workdir = spec.get("workingDir")
        if workdir:
            bwrap += ["--chdir", workdir]
            # Like a runtime, create a missing working dir (on the host unless it is under a mount).
            with contextlib.suppress(OSError):
                self._host_path_for(workdir, c.spec, env).mkdir(parents=True, exist_ok=True)
        bwrap += ["--", *argv]
        log_path = self.dir / f"{c.name}.log"
        with open(log_path, "ab") as lf:
            c.log_offset = lf.tell()
            lf.write(f"--- {now_iso()} local-node: starting {c.name} (restart {c.restart_count}): "
                     f"{argv!r}\n".encode())
            lf.flush()
            c.proc = subprocess.Popen(bwrap, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, cwd="/", start_new_session=True)
        c.started_at = now_iso()
        c.state = {"running": {"startedAt": c.started_at}}
        log.info("pod %s/%s: started %s pid %d", self.ns, self.pod_name, c.name, c.proc.pid)

    def _record_exit(self, c: Container) -> None:
        assert c.proc is not None
        rc = c.proc.wait()
        code = 128 - rc if rc < 0 else rc     # killed by signal N -> 128+N, as runtimes report
        term_path = self.dir / c.name / "termination-log"
        message = ""
        with contextlib.suppress(OSError):
            message = term_path.read_bytes()[:MAX_TERMINATION_MESSAGE].decode("utf-8", "replace")
        if not message and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = self._log_tail(c)
        terminated: dict[str, Any] = {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_at, "finishedAt": now_iso(), "containerID": f"local://{c.proc.pid}",
        }
        if rc < 0:
            terminated["signal"] = -rc
        if message:
            terminated["message"] = message
        c.state = {"terminated": terminated}
        log.info("pod %s/%s: %s exited %d", self.ns, self.pod_name, c.name, code)
        c.proc = None
        if code != 0:
            c.next_start = time.monotonic() + c.backoff
            c.backoff = min(c.backoff * 2, 10.0)
        else:
            c.next_start = time.monotonic() + 1.0

    def _log_tail(self, c: Container) -> str:
        try:
            with open(self.dir / f"{c.name}.log", "rb") as f:
                f.seek(c.log_offset)
                lines = f.read().decode("utf-8", "replace").splitlines()[1:]  # skip our header
        except OSError:
            return ""
        return "\n".join(lines[-80:])[-2048:]

    def running_pids(self) -> list[int]:
        return [c.proc.pid for c in self.init_containers + self.containers if c.proc is not None]

    def _kill_all(self, grace: float) -> None:
        running = [c for c in self.init_containers + self.containers if c.proc is not None]
        kill_groups([c.proc.pid for c in running], grace)  # type: ignore[union-attr]
        for c in running:
            self._record_exit(c)

    def _stopping(self) -> bool:
        if self.stop_event.is_set():
            return True
        if self.deadline_at is not None and time.monotonic() >= self.deadline_at:
            self.reason = "DeadlineExceeded"
            self.message = "Pod was active on the node longer than the specified deadline"
            return True
        return False

    def _stop_for_deletion_or_deadline(self) -> None:
        grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        if self.pod["metadata"].get("deletionGracePeriodSeconds") is not None:
            grace = min(grace, self.pod["metadata"]["deletionGracePeriodSeconds"])
        self._kill_all(float(grace) if self.stop_event.is_set() else 0.0)
        if self.deleted:
            return
        ok = all("terminated" in c.state and c.state["terminated"]["exitCode"] == 0
                 for c in self.containers) and self.restart_policy != "Always"
        self.phase = "Succeeded" if ok else "Failed"
        for c in self.init_containers + self.containers:
            if "terminated" not in c.state:
                c.state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                          "message": "The container could not be located when the pod "
                                          "was terminated", "startedAt": c.started_at or None,
                                          "finishedAt": now_iso()}}
        self._report()

    def _finish_deletion(self) -> None:
        """The kubelet's last act for a deleted pod: remove the object (grace period 0)."""
        with contextlib.suppress(ApiError):
            self.node.api.delete(f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}",
                                 {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})

    # ---- status ----------------------------------------------------------------------------
    def _set_waiting(self, reason: str, message: str) -> None:
        for c in self.init_containers + self.containers:
            c.state = {"waiting": {"reason": reason, "message": message}}
        self._report()

    def _report(self) -> None:
        if self.deleted:
            return
        running = self.phase == "Running"
        all_ready = running and all("running" in c.state for c in self.containers)
        init_done = self.phase != "Pending" or not self.init_containers
        t = now_iso()

        def cond(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
            c: dict[str, Any] = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None,
                                 "lastTransitionTime": t}
            if reason:
                c["reason"] = reason
            return c

        done_reason = "PodCompleted" if self.phase in TERMINAL else ""
        status: dict[str, Any] = {
            "phase": self.phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", True),
                cond("Initialized", init_done, done_reason),
                cond("ContainersReady", all_ready, done_reason),
                cond("Ready", all_ready, done_reason),
                cond("PodScheduled", True),
            ],
            "containerStatuses": [c.status() for c in self.containers],
            "qosClass": self.pod.get("status", {}).get("qosClass", "BestEffort"),
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        if self.reason:
            status["reason"] = self.reason
        if self.message:
            status["message"] = self.message
        try:
            self.node.api.request("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status",
                                  {"status": status}, content_type="application/strategic-merge-patch+json")
        except ApiError as e:
            if e.status == 404:
                self.deleted = True
                self.stop_event.set()
            else:
                log.warning("pod %s/%s: status update failed: %s", self.ns, self.pod_name, e)

    # ---- env -------------------------------------------------------------------------------
    def _get(self, kind: str, name: str, optional: bool) -> dict[str, Any] | None:
        try:
            return self.node.api.get(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")  # type: ignore[no-any-return]
        except ApiError as e:
            if e.status == 404:
                if optional:
                    return None
                raise NotReady(f"{kind[:-1]} {self.ns}/{name} not found") from e
            raise

    @staticmethod
    def _data(obj: dict[str, Any], kind: str) -> dict[str, bytes]:
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": NODE_NAME, "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
            "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1", "status.podIPs": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in simple:
            return simple[path]
        for prefix, key in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
            if path.startswith(prefix + "['") and path.endswith("']"):
                return str((meta.get(key) or {}).get(path[len(prefix) + 2 : -2], ""))
            if path == prefix:
                return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(key) or {}).items()))
        raise RuntimeError(f"local node: unsupported fieldRef {path!r}")

    def _resource(self, spec: dict[str, Any], ref: dict[str, Any]) -> str:
        res = ref["resource"]
        kind, _, what = res.partition(".")
        value = (spec.get("resources", {}).get(kind) or {}).get(what)
        if value is None:   # unset limits report the node's allocatable, as the kubelet does
            value = str(os.cpu_count() or 1) if what == "cpu" else str(_mem_bytes())
        divisor = parse_quantity(ref.get("divisor", "1"))
        import math

        return str(math.ceil(parse_quantity(value) / divisor))

    def _container_env(self, spec: dict[str, Any]) -> dict[str, str]:
        api_port = str(self.node.api_port)
        env: dict[str, str] = {
            "PATH": f"{self.node.venv_bin}:{SYSTEM_PATH}", "HOME": "/root", "LANG": "C.UTF-8",
            # This checkout's sources, whatever checkout the (possibly shared) .venv's editable install names.
            "PYTHONPATH": str(self.node.venv_bin.parent.parent / "operator"),
            "HOSTNAME": self.hostname,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": api_port,
            "KUBERNETES_SERVICE_PORT_HTTPS": api_port, "KUBERNETES_PORT": f"tcp://127.0.0.1:{api_port}",
        }
        for src in spec.get("envFrom", []):
            prefix = src.get("prefix", "")
            for kind, key in (("secrets", "secretRef"), ("configmaps", "configMapRef")):
                if key in src:
                    obj = self._get(kind, src[key]["name"], bool(src[key].get("optional")))
                    if obj is not None:
                        for k, v in self._data(obj, kind).items():
                            env[prefix + k] = v.decode("utf-8", "replace")
        for item in spec.get("env", []):
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = expand(item.get("value", ""), env)
                continue
            vf = item["valueFrom"]
            if "fieldRef" in vf:
                env[name] = self._field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[name] = self._resource(spec, vf["resourceFieldRef"])
            else:
                for kind, key in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
                    if key in vf:
                        ref = vf[key]
                        obj = self._get(kind, ref["name"], bool(ref.get("optional")))
                        if obj is None:
                            break
                        data = self._data(obj, kind)
                        if ref["key"] not in data:
                            if ref.get("optional"):
                                break
                            raise NotReady(f"env {name}: key {ref['key']!r} not in {kind[:-1]} {ref['name']}")
                        env[name] = data[ref["key"]].decode("utf-8", "replace")
        return env

    # ---- volumes ---------------------------------------------------------------------------
    def _prepare_volumes(self) -> None:
        vroot = self.dir / "volumes"
        for vol in self.pod["spec"].get("volumes", []):
            name = vol["name"]
            if name in self.volumes and ("emptyDir" in vol or "persistentVolumeClaim" in vol
                                         or "hostPath" in vol):
                continue
            target = vroot / name
            if "emptyDir" in vol:
                target.mkdir(parents=True, exist_ok=True)
                self.volumes[name] = target
            elif "hostPath" in vol:
                hp = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                    hp.mkdir(parents=True, exist_ok=True)
                self.volumes[name] = hp
            elif "persistentVolumeClaim" in vol:
                self.volumes[name] = self._pvc_path(vol["persistentVolumeClaim"]["claimName"])
            else:
                files = self._volume_files(vol)
                if files is None:
                    continue
                _write_files(target, files, vol)
                self.volumes[name] = target

    def _pvc_path(self, claim: str) -> Path:
        pvc = self._get("persistentvolumeclaims", claim, optional=False)
        assert pvc is not None
        pv_name = pvc["spec"].get("volumeName")
        if not pv_name:
            raise NotReady(f"persistentvolumeclaim {self.ns}/{claim} is not bound")
        pv = self.node.api.get(f"/api/v1/persistentvolumes/{pv_name}")
        src = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not src:
            raise RuntimeError(f"PV {pv_name}: only hostPath and local volumes can be mounted by the local node")
        path = Path(src["path"])
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _volume_files(self, vol: dict[str, Any]) -> dict[str, tuple[bytes, int | None]] | None:
        """Files (relative path -> content, mode) of a secret/configMap/downwardAPI/projected volume."""
        if "secret" in vol:
            s = vol["secret"]
            return self._object_files("secrets", s["secretName"], s.get("items"), bool(s.get("optional")))
        if "configMap" in vol:
            c = vol["configMap"]
            return self._object_files("configmaps", c["name"], c.get("items"), bool(c.get("optional")))
        if "downwardAPI" in vol:
            return self._downward_files(vol["downwardAPI"].get("items", []))
        if "projected" in vol:
            files: dict[str, tuple[bytes, int | None]] = {}
            for src in vol["projected"].get("sources", []):
                if "serviceAccountToken" in src:
                    t = src["serviceAccountToken"]
                    files[t["path"]] = (self._token(t).encode(), None)
                elif "secret" in src:
                    s = src["secret"]
                    files.update(self._object_files("secrets", s["name"], s.get("items"),
                                                    bool(s.get("optional"))) or {})
                elif "configMap" in src:
                    c = src["configMap"]
                    files.update(self._object_files("configmaps", c["name"], c.get("items"),
                                                    bool(c.get("optional"))) or {})
                elif "downwardAPI" in src:
                    files.update(self._downward_files(src["downwardAPI"].get("items", [])))
            return files
        raise RuntimeError(f"volume {vol['name']}: type not supported by the local node: "
                           f"{sorted(k for k in vol if k != 'name')}")

    def _object_files(self, kind: str, name: str, items: list[dict[str, Any]] | None,
                      optional: bool) -> dict[str, tuple[bytes, int | None]] | None:
        obj = self._get(kind, name, optional)
        if obj is None:
            return {}
        data = self._data(obj, kind)
        if not items:
            return {k: (v, None) for k, v in data.items()}
        out: dict[str, tuple[bytes, int | None]] = {}
        for it in items:
            if it["key"] not in data:
                if optional:
                    continue
                raise NotReady(f"key {it['key']!r} not in {kind[:-1]} {self.ns}/{name}")
            out[it["path"]] = (data[it["key"]], it.get("mode"))
        return out

    def _downward_files(self, items: list[dict[str, Any]]) -> dict[str, tuple[bytes, int | None]]:
        out: dict[str, tuple[bytes, int | None]] = {}
        for it in items:
            if "fieldRef" in it:
                out[it["path"]] = (self._field(it["fieldRef"]["fieldPath"]).encode(), it.get("mode"))
        return out

    def _token(self, src: dict[str, Any]) -> str:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": int(src.get("expirationSeconds", 3600)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid},
        }
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        resp = self.node.api.create(
            f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return str(resp["status"]["token"])

    def _mounts(self, spec: dict[str, Any], env: dict[str, str]) -> list[tuple[str, Path, bool]]:
        mounts: list[tuple[str, Path, bool]] = []
        for m in spec.get("volumeMounts", []):
            if m["name"] not in self.volumes:
                raise RuntimeError(f"volumeMount {m['name']!r}: no such volume in the pod")
            src = self.volumes[m["name"]]
            sub = m.get("subPath") or expand(m.get("subPathExpr", ""), env)
            if sub:
                src = src / sub
                if not src.exists():
                    src.mkdir(parents=True, exist_ok=True)
            # bwrap cannot create mount points through symlinks (/var/run -> /run): resolve them.
            mounts.append((os.path.realpath(m["mountPath"]), src, bool(m.get("readOnly"))))
        # Parents before children, so that a nested mount is not hidden by its parent.
        return sorted(mounts, key=lambda t: t[0].rstrip("/").count("/"))

    def _host_path_for(self, path: str, spec: dict[str, Any], env: dict[str, str]) -> Path:
        best: tuple[str, Path] | None = None
        for mount_path, src, _ in self._mounts(spec, env):
            mp = mount_path.rstrip("/") or "/"
            if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best[0])):
                best = (mp, src)
        if best is None:
            return Path(path)
        return best[1] / os.path.relpath(path, best[0])


def kill_groups(pids: list[int], grace: float) -> None:
    """SIGTERM each container's process group, SIGKILL what is left after the grace period."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _write_files(target: Path, files: dict[str, tuple[bytes, int | None]], vol: dict[str, Any]) -> None:
    src = next((vol[k] for k in ("secret", "configMap", "downwardAPI", "projected") if k in vol), {})
    default_mode = src.get("defaultMode", 0o644)
    target.mkdir(parents=True, exist_ok=True)
    for rel, (content, mode) in files.items():
        p = target / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(content)
        tmp.chmod(mode if mode is not None else default_mode)
        tmp.replace(p)


def _mem_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 8 * 2**30


class LocalNode:
    def __init__(self, api: KubeApi, api_port: int, state_dir: Path, pv_root: Path, venv_bin: Path) -> None:
        self.api, self.api_port = api, api_port
        self.state_dir, self.pv_root, self.venv_bin = state_dir, pv_root, venv_bin
        self.runners: dict[str, PodRunner] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    # ---- node and storage class ------------------------------------------------------------
    def register(self) -> None:
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME,
                                                       "kubernetes.io/os": "linux",
                                                       "kubernetes.io/arch": "amd64"}},
        }
        with contextlib.suppress(ApiError):
            self.api.create("/api/v1/nodes", node)
        # TaintNodesByCondition adds not-ready taints; no node-lifecycle controller removes them.
        self.api.merge_patch(f"/api/v1/nodes/{NODE_NAME}", {"spec": {"taints": None}})
        cap = {"cpu": str(os.cpu_count() or 1), "memory": str(_mem_bytes()), "pods": "250",
               "ephemeral-storage": "100Gi"}
        t = now_iso()
        self.api.request("PATCH", f"/api/v1/nodes/{NODE_NAME}/status", {"status": {
            "capacity": cap, "allocatable": cap,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": NODE_NAME}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "local node (test double) is ready", "lastHeartbeatTime": t,
                            "lastTransitionTime": t}],
            "nodeInfo": {"kubeletVersion": "local-node", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "local://bwrap",
                         "osImage": "", "kernelVersion": os.uname().release, "machineID": "",
                         "systemUUID": "", "bootID": ""},
        }}, content_type="application/merge-patch+json")
        sc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
              "metadata": {"name": STORAGE_CLASS,
                           "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
              "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}
        with contextlib.suppress(ApiError):
            self.api.create("/apis/storage.k8s.io/v1/storageclasses", sc)

    # ---- pods ------------------------------------------------------------------------------
    def handle(self, event_type: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        phase = pod.get("status", {}).get("phase", "Pending")
        with self.lock:
            runner = self.runners.get(uid)
            if runner is not None and runner.done.is_set() and event_type == "DELETED":
                del self.runners[uid]
        if event_type == "DELETED":
            if runner is not None:
                runner.terminate(deleted=True)
            return
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp") and phase == "Pending":
                self._bind(pod)
            return
        if node != NODE_NAME:
            return
        if runner is not None:
            runner.pod = pod   # latest deletion grace period etc.
            if meta.get("deletionTimestamp"):
                runner.terminate()
            return
        if meta.get("deletionTimestamp"):
            # Not ours to run (e.g. from before a node restart): finish the deletion.
            with contextlib.suppress(ApiError):
                self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
            return
        if phase in TERMINAL:
            return
        runner = PodRunner(self, pod)
        with self.lock:
            self.runners[uid] = runner
        runner.start()

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.api.create(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
            })
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("bind %s/%s: %s", meta["namespace"], meta["name"], e)

    def watch_pods(self) -> None:
        self._watch_loop("/api/v1/pods", self.handle)

    def _watch_loop(self, path: str, handler: Callable[[str, dict[str, Any]], None]) -> None:
        while not self.stopping.is_set():
            try:
                listing = self.api.get(path)
                for item in listing["items"]:
                    item.setdefault("apiVersion", "v1")
                    handler("ADDED", item)
                rv = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for ev in self.api.watch(path, rv):
                        if ev["type"] == "ERROR":
                            raise ApiError(int(ev["object"].get("code", 500)), str(ev["object"]), "WATCH", path)
                        rv = ev["object"]["metadata"]["resourceVersion"]
                        if ev["type"] != "BOOKMARK":
                            handler(ev["type"], ev["object"])
            except Exception as e:
                if self.stopping.is_set():
                    return
                if not (isinstance(e, ApiError) and e.status == 410):
                    log.warning("watch %s: %s; re-listing", path, e)
                time.sleep(0.2)

    # ---- stand-in dynamic provisioner ------------------------------------------------------
    def provision_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self._provision_once()
            except Exception as e:
                log.warning("provisioner: %s", e)
            self.stopping.wait(0.5)

    def _provision_once(self) -> None:
        for pvc in self.api.get("/api/v1/persistentvolumeclaims")["items"]:
            meta, spec = pvc["metadata"], pvc["spec"]
            if spec.get("volumeName") or meta.get("deletionTimestamp"):
                continue
            if spec.get("storageClassName") not in (STORAGE_CLASS, None):
                continue
            host = self.pv_root / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
            host.mkdir(parents=True, exist_ok=True)
            pv = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": f"pvc-{meta['uid']}",
                             "annotations": {PROVISIONED_ANNOTATION: NODE_NAME,
                                             "pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {
                    "capacity": {"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.get("storageClassName") or "",
                    "hostPath": {"path": str(host), "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                },
            }
            if spec.get("volumeMode"):
                pv["spec"]["volumeMode"] = spec["volumeMode"]
            try:
                self.api.create("/api/v1/persistentvolumes", pv)
                log.info("provisioned %s for pvc %s/%s at %s", pv["metadata"]["name"], meta["namespace"],
                         meta["name"], host)
            except ApiError as e:
                if e.status != 409:
                    raise
        for pv in self.api.get("/api/v1/persistentvolumes")["items"]:
            if (pv["metadata"].get("annotations") or {}).get(PROVISIONED_ANNOTATION) != NODE_NAME:
                continue
            if pv.get("status", {}).get("phase") == "Released":   # reclaim policy "Delete", done by us
                self.api.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
                shutil.rmtree(pv["spec"]["hostPath"]["path"], ignore_errors=True)

    # ---- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        self.register()
        threading.Thread(target=self.provision_loop, name="provisioner", daemon=True).start()
        self.watch_pods()

    def shutdown(self) -> None:
        self.stopping.set()
        with self.lock:
            runners = list(self.runners.values())
        for r in runners:
            r.deleted = True     # do not write statuses while the control plane goes away
            r.stop_event.set()
        kill_groups([pid for r in runners for pid in r.running_pids()], 2.0)


def load_kubeconfig(path: Path) -> tuple[str, str, str]:
    cfg = yaml.safe_load(path.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    return cluster["server"], cfg["users"][0]["user"]["token"], cluster["certificate-authority"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig (token + CA file)")
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--pv-root", type=Path, required=True)
    ap.add_argument("--venv-bin", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    server, token, ca = load_kubeconfig(args.kubeconfig)
    node = LocalNode(KubeApi(server, token, ca), int(server.rsplit(":", 1)[1]), args.state_dir,
                     args.pv_root, args.venv_bin)

    def on_term(signum: int, frame: Any) -> None:
        node.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    node.run()


if __name__ == "__main__":
    main()
