"""The chart-installed operator (`helm install`) with the real MatrixOne: the seed's example 1 from
the user's side. MatrixOne (mo-service (MatrixOne's 1.3 line)) runs as the StatefulSet `mo` on PVC `mo-data-mo-0`;
`deploy/examples/backup-online.yaml` backs it up online while it runs, db1 is dropped and db3
created, `deploy/examples/restore.yaml` (with `sqlCheck`) restores in place, and `show databases`
and the row checksums are read back from the pod's MatrixOne. The examples are applied as a user
would after editing them: the SQL host is 127.0.0.1 here (the local node's pods share the host
network), the storage points at the test S3 server."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from cluster import paths
from mo_server import (
    DEFAULT_VERSION,
    PASSWORD,
    ServerLock,
    SqlClient,
    checksums,
    create_db,
    install,
    statefulset,
    user_databases,
    wait_ports_free,
    wait_sql,
)
from ship import tools

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

GROUP = "/apis/mobackup.io/v1alpha1"
EXAMPLES = tools.DEPLOY / "examples"


def example(name: str, ns: str, s3: Any = None) -> list[dict[str, Any]]:
    """An example as the user edits it for this cluster."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = ns
        spec = doc.get("spec") or {}
        if doc["kind"] == "Secret" and "AWS_ACCESS_KEY_ID" in doc.get("stringData", {}):
            doc["stringData"] = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        elif doc["kind"] == "Secret":
            doc["stringData"] = {"key": secrets.token_urlsafe(32)}
        elif doc["kind"] == "MOBackupStorage":
            spec["s3"].update(endpoint=s3.endpoint, bucket=s3.bucket, region=s3.region,
                              prefix=f"chart-mo-{secrets.token_hex(3)}")
        for sql in (spec.get("source", {}).get("sql"), spec.get("sqlCheck")):
            if sql is not None:
                sql.update(host="127.0.0.1", user="root")
        if doc["kind"] == "MORestore":
            spec["backupName"] = "mo-online-1"
            spec["sqlCheck"] = {"host": "127.0.0.1", "port": 6001, "user": "root", "timeoutSeconds": 180,
                                "passwordSecretRef": {"name": "mo-credentials", "key": "password"}}
    return docs


def wait_phase(api: Any, path: str, timeout: float = 400) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = api.get(path)
        if (obj.get("status") or {}).get("phase") in ("Completed", "Failed"):
            return obj["status"]
        assert time.monotonic() < deadline, obj.get("status")
        time.sleep(1)


@pytest.fixture
def chart_and_matrixone(kube_cluster: Any, tmp_path: Any) -> Iterator[tuple[str, SqlClient]]:
    helm = tools.built_tool("helm")
    home = install(DEFAULT_VERSION)
    lock = ServerLock()
    lock.acquire()
    op_ns = kube_cluster.create_namespace("chart-mo-op")
    ns = kube_cluster.create_namespace("chart-mo")
    env = {**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "hc"),
           "HELM_CONFIG_HOME": str(tmp_path / "hf"), "HELM_DATA_HOME": str(tmp_path / "hd")}
    api = kube_cluster.api()
    try:
        wait_ports_free()
        subprocess.run([str(helm), "install", "chart-mo", str(tools.CHART), "--namespace", op_ns,
                        "--set", f"watchNamespaces={{{ns}}}", "--set", f"health.port={paths.free_port()}",
                        "--set", f"metrics.port={paths.free_port()}", "--wait", "--timeout", "180s"],
                       env=env, check=True, capture_output=True, timeout=300)
        host = kube_cluster.make_pvc(ns, "mo-data-mo-0", size="5Gi")
        shutil.copytree(home / "etc", host / "etc")
        api.create(f"/apis/apps/v1/namespaces/{ns}/statefulsets", statefulset("mo", "mo-data-mo-0", home))
        wait_sql(180)
        yield ns, SqlClient()
    finally:
        try:
            api.merge_patch(f"/apis/apps/v1/namespaces/{ns}/statefulsets/mo", {"spec": {"replicas": 0}})
            deadline = time.monotonic() + 90
            while api.get(f"/api/v1/namespaces/{ns}/pods", labelSelector="app=mo")["items"]:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            wait_ports_free(90)
        finally:
            lock.release()
            subprocess.run([str(helm), "uninstall", "chart-mo", "-n", op_ns, "--wait"], env=env,
                           capture_output=True, check=False, timeout=120)
            for plural in ("mobackups", "morestores", "mobackupstorages"):
                for obj in api.get(f"{GROUP}/namespaces/{ns}/{plural}")["items"]:
                    if obj["metadata"].get("finalizers"):
                        api.merge_patch(f"{GROUP}/namespaces/{ns}/{plural}/{obj['metadata']['name']}",
                                        {"metadata": {"finalizers": None}})
            kube_cluster.delete_namespace(ns)
            kube_cluster.delete_namespace(op_ns)


def test_chart_operator_backs_up_matrixone_online_and_restores_the_seed_example(
        kube_cluster: Any, chart_and_matrixone: tuple[str, SqlClient]) -> None:
    ns, mo = chart_and_matrixone
    api = kube_cluster.api()
    kube_cluster.apply(example("storage-s3.yaml", ns, kube_cluster.s3), namespace=ns)
    api.create(f"/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret",
                                                    "metadata": {"name": "mo-credentials", "labels": {
                                                        "mobackup.io/credentials": "true"}},
                                                    "stringData": {"password": PASSWORD}})
    create_db(mo, "db1", 3000)
    create_db(mo, "db2", 2000)
    at_backup = checksums(mo, ["db1", "db2"])

    kube_cluster.apply(example("backup-online.yaml", ns), namespace=ns)
    st = wait_phase(api, f"{GROUP}/namespaces/{ns}/mobackups/mo-online-1")
    assert st["phase"] == "Completed" and st["consistency"] == "Online", st
    assert st["stagedBytes"] > 0 and st["moVersion"].startswith("8.0.30-MatrixOne"), st

    mo.sql("drop database db1")
    create_db(mo, "db3", 10)
    kube_cluster.apply(example("restore.yaml", ns), namespace=ns)
    r = wait_phase(api, f"{GROUP}/namespaces/{ns}/morestores/mo-restore-1")
    assert r["phase"] == "Completed", r
    assert "db1" in r["sqlCheck"] and "db3" not in r["sqlCheck"], r["sqlCheck"]
    wait_sql(180)
    assert user_databases(mo) == {"db1", "db2"}
    assert checksums(mo, ["db1", "db2"]) == at_backup
