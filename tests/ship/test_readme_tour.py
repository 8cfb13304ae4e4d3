"""The README's "Back up and restore MatrixOne with `kubectl apply`" tour, run as written, command by
command, with a real kubectl (the API server's version) against the test cluster with the chart
installed and a MatrixOne stand-in (StatefulSet `mo` on PVC `mo-data-mo-0`, namespace `matrixone`).

Every command of the README's block runs through bash, exactly as printed, except that
`deploy/examples/storage-s3.yaml` is the copy a user edits first (endpoint, bucket, Secrets: here
the test S3 server's). `-w` commands are read until the object they watch is done, then stopped. Each
command's output is checked for what a user is promised (the printer columns, one row for
`get mobackup NAME`, no `<invalid>` times, the backup count), and the restore for its data.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import paths
from ship import tools
from ship.test_e2e import stand_in_workload

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

NS = "matrixone"  # as written in the README and the examples
README = tools.REPO / "README.md"
SECTION = "## Back up and restore MatrixOne with `kubectl apply`"
GROUP = "/apis/mobackup.io/v1alpha1"


def tour_commands() -> list[str]:
    text = README.read_text()
    section = text[text.index(SECTION):]
    block = section[section.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    return [line for line in block.splitlines() if line.strip()]


def columns(header: str) -> list[str]:
    """kubectl's table header split on its column gaps (two or more spaces)."""
    return re.split(r"\s{2,}", header.strip())


def rows(out: str) -> list[dict[str, str]]:
    lines = [line for line in out.splitlines() if line.strip()]
    head = columns(lines[0])
    starts = [lines[0].index(h) for h in head]
    result = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        result.append(dict(zip(head, cells, strict=True)))
    return result


class Tour:
    def __init__(self, cluster: Any, env: dict[str, str], storage_file: Path) -> None:
        self.cluster, self.env, self.storage_file = cluster, env, storage_file

    def command(self, line: str) -> str:
        return line.replace("deploy/examples/storage-s3.yaml", str(self.storage_file))

    def run(self, line: str, timeout: float = 60) -> str:
        proc = subprocess.run(["bash", "-c", self.command(line)], cwd=tools.REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)
        assert proc.returncode == 0, f"`{line}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def until(self, line: str, done: Callable[[str], bool], timeout: float = 240) -> str:
        """A user re-running a command until it shows what they wait for."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(line)
            if done(out):
                return out
            assert time.monotonic() < deadline, f"`{line}` never showed the expected state:\n{out}"
            time.sleep(1)

    def watch(self, line: str, done: Callable[[list[str]], bool], timeout: float = 300) -> list[str]:
        """`kubectl ... -w`: read its lines until `done`, then stop it as a user would (Ctrl-C)."""
        proc = subprocess.Popen(["bash", "-c", f"exec {self.command(line)}"], cwd=tools.REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for out_line in proc.stdout:
                lines.put(out_line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while not done(seen):
                try:
                    got = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    got = None
                assert got is not None, f"`{line}` ended or timed out before done:\n" + "\n".join(seen)
                seen.append(got)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        return seen


def watched(name: str, phase: str, fail: str = "Failed") -> Callable[[list[str]], bool]:
    def done(seen: list[str]) -> bool:
        for line in seen[1:]:
            cells = line.split()
            if cells and cells[0] == name:
                assert fail not in cells, "\n".join(seen)
                if phase in cells:
                    return True
        return False
    return done


@pytest.fixture(scope="module")
def tour(kube_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Tour, Path]]:
    from mobackup.sample import generate_mo_data

    kubectl = tools.built_tool("kubectl")
    helm = tools.built_tool("helm")
    tmp = tmp_path_factory.mktemp("tour")
    s3 = kube_cluster.s3
    op_ns = kube_cluster.create_namespace("tour-op")
    kube_cluster.create_namespace(name=NS)
    env = {**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig),
           "PATH": f"{kubectl.parent}{os.pathsep}{os.environ['PATH']}",
           "HELM_CACHE_HOME": str(tmp / "helm-cache"), "HELM_CONFIG_HOME": str(tmp / "helm-config"),
           "HELM_DATA_HOME": str(tmp / "helm-data")}
    data = kube_cluster.make_pvc(NS, "mo-data-mo-0") / "mo-data"
    generate_mo_data(data, seed=11)
    kube_cluster.apply(stand_in_workload("mo", "mo-data-mo-0"), namespace=NS)
    # The README's install, with the ports of a shared test host (the local node runs pods there).
    subprocess.run([str(helm), "install", "tour", str(tools.CHART), "--namespace", op_ns,
                    "--set", f"watchNamespaces={{{NS}}}", "--set", f"health.port={paths.free_port()}",
                    "--set", f"metrics.port={paths.free_port()}", "--wait", "--timeout", "180s"],
                   env=env, check=True, capture_output=True, timeout=300)
    # The user's edit of storage-s3.yaml: the endpoint, bucket and Secrets of their S3 (the test S3 server).
    docs = [d for d in yaml.safe_load_all((tools.DEPLOY / "examples" / "storage-s3.yaml").read_text()) if d]
    for doc in docs:
        if doc["kind"] == "Secret" and "AWS_ACCESS_KEY_ID" in doc["stringData"]:
            doc["stringData"] = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        elif doc["kind"] == "Secret":
            doc["stringData"] = {"key": secrets.token_urlsafe(32)}
        elif doc["kind"] == "MOBackupStorage":
            doc["spec"]["s3"].update(endpoint=s3.endpoint, bucket=s3.bucket, region=s3.region,
                                     prefix=f"tour-{secrets.token_hex(3)}")
    storage_file = tmp / "storage-s3.yaml"
    storage_file.write_text(yaml.safe_dump_all(docs))
    try:
        yield Tour(kube_cluster, env, storage_file), data
    finally:
        subprocess.run([str(helm), "uninstall", "tour", "-n", op_ns, "--wait"], env=env, capture_output=True,
                       check=False, timeout=120)
        api = kube_cluster.api()
        for plural in ("mobackups", "morestores", "mobackupschedules", "mobackupstorages"):
            for obj in api.get(f"{GROUP}/namespaces/{NS}/{plural}")["items"]:
                if obj["metadata"].get("finalizers"):  # the operator is gone: let the namespace go
                    api.merge_patch(f"{GROUP}/namespaces/{NS}/{plural}/{obj['metadata']['name']}",
                                    {"metadata": {"finalizers": None}})
        kube_cluster.delete_namespace(NS, wait=True)
        kube_cluster.delete_namespace(op_ns)


def test_readme_kubectl_tour(tour: tuple[Tour, Path]) -> None:
    from mobackup.sample import mutate_mo_data, snapshot_tree

    t, data = tour
    before_full = snapshot_tree(data)
    checked: list[str] = []
    for line in tour_commands():
        cmd = line.split("#")[0].strip()
        if "get mobackupstorages" in cmd and not checked.count("storage-available"):
            out = t.until(cmd, lambda o: "Available" in o)
            assert columns(out.splitlines()[0]) == ["NAME", "PHASE", "LOCATION", "BACKUPS", "LAST CHECKED", "AGE"]
            checked.append("storage-available")
        elif "get mobackupstorages" in cmd:
            # Refreshed when the backup ended, not at the next periodic check (300 s).
            out = t.until(cmd, lambda o: rows(o)[0]["BACKUPS"] == "1", timeout=30)
            checked.append("storage-count")
        elif "get mobackups -w" in cmd:
            seen = t.watch(cmd, watched("mo-full-1", "Completed"))
            assert columns(seen[0]) == ["NAME", "PHASE", "TYPE", "BACKUP ID", "SIZE", "BACKUPTS", "DURATION",
                                      "RECOVERABLE TO", "AGE"]
            checked.append("mobackups-watch")
            mutate_mo_data(data, seed=12)  # MatrixOne goes on writing after the full backup
        elif "get mobackup mo-full-1" in cmd:
            out = t.run(cmd)
            got = rows(out)
            assert len(got) == 1 and got[0]["NAME"] == "mo-full-1" and got[0]["PHASE"] == "Completed", out
            if "-o wide" in cmd:
                assert {"BASE", "SOURCE", "PROGRESS", "MESSAGE"} <= set(got[0]), out
            checked.append("get-one")
        elif "describe mobackup mo-full-1" in cmd:
            out = t.run(cmd)
            assert re.search(r"^Name:\s+mo-full-1$", out, re.M) and "Kind:         MOBackup" in out, out
            assert "Phase:" in out and "Completed" in out and "Events:" in out, out
            checked.append("describe")
        elif "get mobackupschedules" in cmd:
            out = t.until(cmd, lambda o: rows(o)[0]["NEXT"] not in ("", "<none>"), timeout=60)
            assert "<invalid>" not in out, out
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows(out)[0]["NEXT"]), out
            checked.append("schedules")
        elif "get morestores -w" in cmd:
            t.watch(cmd, watched("mo-restore-1", "Completed"))
            checked.append("restore")
        elif "get matrixone-backup" in cmd:
            out = t.run(cmd)
            for kind in ("mobackupstorage", "mobackup", "morestore", "mobackupschedule"):
                assert re.search(rf"^{kind}\.mobackup\.io/", out, re.M), out
            checked.append("category")
        elif cmd.startswith("kubectl explain"):
            out = t.run(cmd)
            assert "KIND:" in out and "MOBackup" in out and "storageRef" in out and "source" in out, out
            checked.append("explain")
        else:
            t.run(cmd)  # apply / annotate: must succeed
    assert sorted(checked) == sorted(["storage-available", "storage-count", "mobackups-watch", "get-one",
                                      "describe", "schedules", "restore", "category", "explain"]), checked
    # The restore put back exactly the full backup's tree, over the later writes.
    assert snapshot_tree(data) == before_full
    # The run-now annotation made the schedule back up now.
    api = t.cluster.api()
    deadline = time.monotonic() + 240
    while True:
        items = api.get(f"{GROUP}/namespaces/{NS}/mobackups", labelSelector="mobackup.io/schedule=mo-nightly")["items"]
        phases = [(i.get("status") or {}).get("phase") for i in items]
        if items and all(p in ("Completed", "Failed") for p in phases):
            break
        assert time.monotonic() < deadline, phases
        time.sleep(1)
    assert phases == ["Completed"]
    incr = api.get(f"{GROUP}/namespaces/{NS}/mobackups/mo-incr-1")
    deadline = time.monotonic() + 240
    while (incr.get("status") or {}).get("phase") not in ("Completed", "Failed"):
        assert time.monotonic() < deadline, incr.get("status")
        time.sleep(1)
        incr = api.get(f"{GROUP}/namespaces/{NS}/mobackups/mo-incr-1")
    assert incr["status"]["phase"] == "Completed" and incr["status"]["type"] == "Incremental"
