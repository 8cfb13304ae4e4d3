"""A MatrixOne whose table data lives in S3, described by a `MatrixOneCluster`, through the operator.

The real mo-service (MatrixOne's 1.3 line) runs as StatefulSet `mo` with its SHARED file service on
the suite's S3 server, SeaweedFS (`mo_cluster_e2e.s3_mo`); a MatrixOneCluster object (the MatrixOne
operator's CRD, which does not run here) describes it as the MatrixOne operator would once Ready. The operator reads the
S3 location, the SQL endpoint and the credentials from that object alone.

- The seed's examples via `source.cluster`: a full backup scaled out over 3 pods (an Indexed Job)
  while a writer commits, a scaled-out backup whose shard is killed for good (Failed, nothing
  listed), an incremental in one pod (the retry) through `source.sharedStorage` + `source.sql`,
  drop/create, a restore in place over 2 pods (refused while the cluster asks for pods or MatrixOne
  answers), start, `show databases`, checksums, the writer's exact prefix, and new IDs after the
  restored ones (hk_data on the log volume).
- A restore into a new, empty prefix for a new cluster: MatrixOne bootstraps from `<folder>/hk_data`
  (`BACKUP://hk_data`, as the MatrixOne operator's `initialConfig.restoreFrom` configures it)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from mo_cluster_e2e import S3MatrixOne, matrixone_cluster, s3_keys, set_cluster_replicas, stop_mo
from mo_e2e import Env

from mo_server import USER, Writer, checksums, create_db, insert_rows, user_databases, wait_sql, writer_rows

pytestmark = pytest.mark.cluster


def start_again(env: Env, name: str = "mo") -> None:
    env.api.merge_patch(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets/{name}", {"spec": {"replicas": 1}})
    wait_sql(180)


def max_table_id(mo: S3MatrixOne) -> int:
    return int(mo.sql("select max(rel_id) from mo_catalog.mo_tables")[0][0])


def test_matrixone_cluster_backup_scaled_out_then_restore_in_place_and_into_a_new_cluster(
        env: Env, s3_mo: Callable[..., S3MatrixOne], mo_cluster_crd: None) -> None:
    mo = s3_mo(folder="c1")
    env.s3_storage()
    matrixone_cluster(env, "mo", mo.bucket, mo.folder, "mo-s3")
    create_db(mo, "db1", 3000)
    create_db(mo, "db2", 2000)
    mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")

    writer = Writer().start()
    committed_before = writer.committed
    env.create("MOBackup", "full", {"source": {"cluster": {"name": "mo"}}, "storageRef": {"name": "s3"},
                                    "parallelPods": 3})
    full = env.wait_phase("MOBackup", "full", "Completed", "Failed", timeout=300)["status"]
    writer.stop()
    assert full["phase"] == "Completed", full
    assert writer.errors == [] and writer.longest_pause < 2.0, (writer.errors, writer.longest_pause)
    assert (full["consistency"], full["step"], full["source"]) == ("Online", "commit", f"{env.ns}/mo"), full
    assert full["sharedStorage"] == f"s3://{mo.bucket}/c1/data" and full["stagedBytes"] > 0, full
    assert full["moVersion"].startswith("8.0.30-MatrixOne"), full
    ingest = env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs", labelSelector="mobackup.io/name=full")["items"]
    indexed = [j for j in ingest if j["spec"].get("completionMode") == "Indexed"]
    assert len(indexed) == 1 and indexed[0]["spec"]["completions"] == 3, [j["metadata"]["name"] for j in ingest]
    assert indexed[0]["status"]["succeeded"] == 3, indexed[0]["status"]
    assert s3_keys(env.s3, mo.bucket, "c1/mobackup-staging") == [], "the staging must be removed"
    reasons = [e["reason"] for e in env.events("full")]
    assert "Staged" in reasons and "ShardsStored" in reasons and "BackupCompleted" in reasons, reasons

    # A shard killed for good (no retry per index): the run fails and lists nothing; the next run is
    # the retry.
    env.create("MOBackup", "killed", {"source": {"cluster": {"name": "mo"}}, "storageRef": {"name": "s3"},
                                      "parallelPods": 2, "bandwidthLimit": "100Ki", "job": {"backoffLimit": 0}})
    st = env.wait("MOBackup", "killed", lambda o: (o.get("status") or {}).get("step") == "ingest", 120,
                  "the ingest step")["status"]
    pods: list[dict] = []
    deadline = time.monotonic() + 60
    while len(pods) < 2 or not all((p.get("status") or {}).get("phase") == "Running" for p in pods):
        assert time.monotonic() < deadline, pods
        pods = env.api.get(f"/api/v1/namespaces/{env.ns}/pods", labelSelector=f"job-name={st['jobName']}")["items"]
        time.sleep(0.3)
    time.sleep(1)
    victim = next(p for p in pods if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
    env.api.delete(f"/api/v1/namespaces/{env.ns}/pods/{victim['metadata']['name']}", {"gracePeriodSeconds": 0})
    killed = env.wait_phase("MOBackup", "killed", "Failed", "Completed", timeout=180)["status"]
    assert killed["phase"] == "Failed" and "the ingest shards" in killed["message"], killed
    assert "nothing was listed" in killed["message"], killed
    assert [b.id for b in env.repository().list_backups()] == [full["backupID"]]

    insert_rows(mo, "db1", 100_001, 700)
    create_db(mo, "db4", 300)
    at_incremental = checksums(mo, ["db1", "db2", "db4"])
    w_rows = writer_rows(mo)
    # The same MatrixOne named without the MatrixOne operator's object: sharedStorage plus sql (and the
    # source name of the cluster's backups, so the full is its base).
    shared = {"path": f"{mo.bucket}/c1", "type": "minio", "endpoint": env.s3.endpoint, "region": env.s3.region,
              "secretRef": {"name": "mo-s3"}}
    env.create("MOBackup", "inc", {"source": {
        "sharedStorage": {"s3": shared}, "name": f"{env.ns}/mo",
        "sql": {"host": "127.0.0.1", "port": 6001, "user": USER, "passwordSecretRef": {"name": "mo-credential"}}},
        "storageRef": {"name": "s3"}, "type": "Incremental"})
    inc = env.wait_phase("MOBackup", "inc", "Completed", "Failed", timeout=300)["status"]
    assert inc["phase"] == "Completed", inc
    assert inc["baseBackupID"] == full["backupID"] and inc["step"] == "backup", inc
    # MatrixOne staged only what is new since the full; the rest of the list is the full's.
    assert 0 < inc["stagedBytes"] < inc["sizeBytes"] and inc["fileCount"] > full["fileCount"], (inc, full)

    mo.sql("drop database db1")
    create_db(mo, "db3", 10)
    restored_max_id = max_table_id(mo)

    # Refused while the MatrixOneCluster asks for pods: nothing touched.
    env.create("MORestore", "while-running", {"backupName": "inc", "overwrite": True,
                                              "target": {"cluster": {"name": "mo"}}})
    r = env.wait_phase("MORestore", "while-running", "Failed", "Completed", timeout=60)["status"]
    assert (r["phase"], r["reason"]) == ("Failed", "ClusterRunning"), r
    assert "logService 1" in r["message"] and "replicas to 0" in r["message"], r
    # The cluster's spec says stopped, but MatrixOne still answers on its endpoint: the Job refuses.
    set_cluster_replicas(env, "mo", 0)
    env.create("MORestore", "still-answering", {"backupName": "inc", "overwrite": True,
                                                "target": {"cluster": {"name": "mo"}}})
    r = env.wait_phase("MORestore", "still-answering", "Failed", "Completed", timeout=120)["status"]
    assert (r["phase"], r["reason"]) == ("Failed", "ClusterRunning"), r
    assert user_databases(mo) == {"db2", "db3", "db4"}

    stop_mo(env, "mo")
    env.create("MORestore", "in-place", {
        "backupName": "inc", "overwrite": True, "parallelPods": 2,
        "target": {"cluster": {"name": "mo"}, "logVolume": {"claimName": mo.claim, "path": "mo-data"}}})
    r = env.wait_phase("MORestore", "in-place", "Completed", "Failed", timeout=300)["status"]
    assert r["phase"] == "Completed" and r["step"] == "finalize", r
    shards = env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs", labelSelector="mobackup.io/name=in-place")
    assert sorted((j["spec"].get("completions"), j["status"].get("succeeded")) for j in shards["items"]) == [
        (1, 1), (2, 2)], shards["items"]
    assert "ShardsRestored" in [e["reason"] for e in env.events("in-place")]
    assert r["sharedStorage"] == f"s3://{mo.bucket}/c1/data" and r["backupID"] == inc["backupID"], r
    logs = mo.host / "mo-data"
    assert (logs / "hk_data").exists() and not (logs / "logservice-data").exists(), sorted(logs.iterdir())
    set_cluster_replicas(env, "mo", 1)
    start_again(env)
    assert user_databases(mo) == {"db1", "db2", "db4"}
    assert checksums(mo, ["db1", "db2", "db4"]) == at_incremental
    rows, max_id, txns = writer_rows(mo)
    assert (rows, max_id, txns) == w_rows and rows == max_id + 1 == txns * 100, (rows, w_rows)
    mo.sql("create database db5", "create table db5.t (id int)")
    assert max_table_id(mo) > restored_max_id, "a table made after the restore reuses an ID"

    # Into a new, empty prefix for a new cluster (created stopped, started after the restore).
    matrixone_cluster(env, "mo2", mo.bucket, "c2", "mo-s3", replicas=0)
    stop_mo(env, "mo")
    env.create("MORestore", "new-cluster", {"backupName": "full", "target": {"cluster": {"name": "mo2"}}})
    r = env.wait_phase("MORestore", "new-cluster", "Completed", "Failed", timeout=300)["status"]
    assert r["phase"] == "Completed", r
    assert "c2/hk_data" in s3_keys(env.s3, mo.bucket, "c2")
    mo2 = s3_mo(name="mo2", claim="mo2-data", folder="c2", restore_from="hk_data")
    assert user_databases(mo2) == {"db1", "db2"}
    assert checksums(mo2, ["db1", "db2"])["db2"][0] == 2000
    rows, max_id, txns = writer_rows(mo2)
    assert rows == max_id + 1 == txns * 100 >= committed_before * 100, (rows, committed_before)


def test_cluster_sources_are_checked_before_anything_runs(env: Env) -> None:
    """Without the MatrixOne operator's CRD, a missing cluster, a spec the CRD's rules refuse: each a
    Failed status (or a refusal by the API server) with a readable reason and an Event; no Job."""
    import yaml
    from mo_cluster_e2e import MO_CRD_FILE, install_matrixone_cluster_crd

    from cluster.kube_api import ApiError

    env.s3_storage()
    crd_name = yaml.safe_load(MO_CRD_FILE.read_text())["metadata"]["name"]
    crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}"
    env.api.delete(crd_path)
    try:
        deadline = time.monotonic() + 60
        while any(g["name"] == "core.matrixorigin.io" for g in env.api.get("/apis")["groups"]):
            assert time.monotonic() < deadline, "the MatrixOneCluster CRD is still served"
            time.sleep(0.3)
        env.create("MOBackup", "no-crd", {"source": {"cluster": {"name": "mo"}}, "storageRef": {"name": "s3"}})
        st = env.wait_phase("MOBackup", "no-crd", "Failed", "Completed", timeout=60)["status"]
        assert st["reason"] == "MatrixOneClusterCRDMissing" and "install the MatrixOne operator's CRDs" in \
            st["message"], st
        assert any(e["reason"] == "MatrixOneClusterCRDMissing" and e["type"] == "Warning" for e in env.events("no-crd"))
    finally:
        install_matrixone_cluster_crd(env.api)
    env.create("MOBackup", "no-cluster", {"source": {"cluster": {"name": "absent"}}, "storageRef": {"name": "s3"}})
    st = env.wait_phase("MOBackup", "no-cluster", "Failed", "Completed", timeout=60)["status"]
    assert (st["reason"], st["message"]) == ("ClusterNotFound", f"MatrixOneCluster {env.ns}/absent not found"), st
    jobs = env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs")["items"]
    assert jobs == [], [j["metadata"]["name"] for j in jobs]
    # A drill starts MatrixOne on a scratch volume: a backup of table data in S3 is refused up front.
    env.api.merge_patch(env.path("MOBackup", "no-cluster") + "/status", {"status": {
        "phase": "Completed", "backupID": "0f0f0f0f-aaaa-bbbb-cccc-000000000000",
        "sharedStorage": "s3://bucket/folder/data"}})
    env.create("MORestoreDrill", "drill-s3", {"backupName": "no-cluster"})
    st = env.wait_phase("MORestoreDrill", "drill-s3", "Failed", "Completed", timeout=60)["status"]
    assert st["reason"] == "DrillUnsupported" and "table data lives in S3" in st["message"], st

    with pytest.raises(ApiError, match="set exactly one of pvc, cluster or sharedStorage"):
        env.create("MOBackup", "both", {"source": {"cluster": {"name": "mo"}, "pvc": {"claimName": "x"}, "sql": {
            "host": "mo", "passwordSecretRef": {"name": "p"}}}, "storageRef": {"name": "s3"}})
    with pytest.raises(ApiError, match="is backed up Online"):
        env.create("MOBackup", "stop", {"source": {"cluster": {"name": "mo"}}, "storageRef": {"name": "s3"},
                                        "consistency": "Stop"})
    with pytest.raises(ApiError, match="sharedStorage needs sql"):
        env.create("MOBackup", "no-sql", {"source": {"sharedStorage": {"s3": {
            "path": "bucket/folder", "secretRef": {"name": "k"}}}}, "storageRef": {"name": "s3"}})
    with pytest.raises(ApiError, match="stop a MatrixOneCluster through its spec"):
        env.create("MORestore", "by-workload", {"backupName": "x", "target": {
            "cluster": {"name": "mo"}, "workload": {"name": "mo"}}})
