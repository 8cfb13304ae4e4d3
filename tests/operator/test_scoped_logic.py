"""Scoped MORestore builders and parsing (the cluster run with the real MatrixOne is in
test_e2e_scoped.py): the spec's rules, the pod (restore as init container into the scratch PVC, the
scratch MatrixOne beside the loader, passwords only from Secrets, never on a command line), and the
loader's bounded termination message."""

from __future__ import annotations

import json

import pytest

from mobackup.k8s import drill, jobs, models, scoped, scopedload

STORAGE = models.parse_storage({"s3": {"bucket": "bk", "credentialsSecretRef": {"name": "creds"}}})
OWNER = jobs.Owner("MORestore", "orders-back", "db", "uid-9")
DEFAULTS = jobs.OperatorDefaults(image="reg/agent:1", service_account="job-sa")
SQL = {"host": "mo.db.svc", "user": "root", "passwordSecretRef": {"name": "mo-sql"}}


def spec(scope: dict, **more: object) -> dict:
    return {"backupName": "nightly", "scope": scope, "target": {"sql": SQL}, **more}


@pytest.mark.parametrize(("body", "message"), [
    (spec({}), "needs --only|databases/tables"),
    (spec({"tables": ["shop"]}), "not <database>.<table>"),
    (spec({"tables": ["shop.a"], "as": "x.y", "suffix": "_z"}), "as and suffix exclude each other"),
    (spec({"tables": ["shop.a", "shop.b"], "as": "x"}), "as names one target"),
    (spec({"databases": ["shop"], "as": "x.y"}), "as DB.TABLE needs"),
    (spec({"databases": ["mysql"]}), "system database"),
    (spec({"tables": ["shop.__mo_index_x"]}), "hidden tables"),
    (spec({"tables": ["shop.a"]}, overwrite=True), "spec.overwrite does not apply"),
    (spec({"tables": ["shop.a"], "scratch": {"size": "lots"}}), "not a quantity"),
    ({"backupName": "b", "scope": {"tables": ["shop.a"]}, "target": {"sql": SQL, "pvc": {"claimName": "x"}}},
     "takes sql only"),
    ({"backupName": "b", "scope": {"tables": ["shop.a"]}, "target": {"pvc": {"claimName": "x"}}}, "takes sql only"),
])
def test_parse_refuses(body: dict, message: str) -> None:
    with pytest.raises(models.SpecError, match=message):
        scoped.parse_scoped(body)


def test_scoped_job_restores_into_the_scratch_claim_then_runs_matrixone_and_the_loader() -> None:
    parsed = scoped.parse_scoped(spec({"tables": ["shop.orders"], "databases": ["audit"], "suffix": "_before",
                                       "copyMethod": "load",
                                       "scratch": {"size": "2Gi"}, "timeoutSeconds": 300}))
    assert parsed.only == ("audit", "shop.orders") and parsed.sql.port == 6001
    mo = drill.MatrixOneSettings.from_env({"MOBACKUP_DRILL_SQL_SOCKET": "/run/mo/mysql.sock"})
    job = scoped.scoped_job(OWNER, parsed, STORAGE, "backup-1", None, DEFAULTS, mo)
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["name"] == jobs.job_name(OWNER, "scoped") in jobs.run_job_names(OWNER)
    assert job["metadata"]["labels"][jobs.L_KIND] == "morestore" and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 300 + drill.RESTORE_ALLOWANCE_SECONDS
    (restore,) = pod["initContainers"]
    matrixone, loader = pod["containers"]
    assert restore["args"][restore["args"].index("--target") + 1] == "/data/mo-data"
    # load: the scratch MatrixOne exports into the pod's own emptyDir, which the loader reads.
    export = {"name": "export", "mountPath": scoped.EXPORT_PATH}
    assert matrixone["volumeMounts"] == [{"name": "data", "mountPath": "/mo-data", "subPath": "mo-data"}, export]
    assert export in loader["volumeMounts"] and {"name": "export", "emptyDir": {}} in pod["volumes"]
    assert loader["args"][loader["args"].index("--export-dir") + 1] == scoped.EXPORT_PATH
    assert loader["command"] == ["python", "-m", "mobackup.k8s.scopedload"]
    args = loader["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--only"] == ["audit", "shop.orders"]
    assert args[args.index("--suffix") + 1] == "_before" and "--replace" not in args and "--as" not in args
    assert args[args.index("--into-sql-host") + 1] == "mo.db.svc"
    assert args[args.index("--scratch-socket") + 1] == "/run/mo/mysql.sock"
    assert args[args.index("--copy-method") + 1] == "load"
    assert "data" not in {m["name"] for m in loader["volumeMounts"]}  # it talks SQL only
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in loader["env"] if "valueFrom" in e}
    assert refs["MOBACKUP_INTO_SQL_PASSWORD"] == refs["MOBACKUP_SQL_PASSWORD"] == "mo-sql"
    assert "password" not in " ".join(args).lower()
    pvc = drill.scratch_claim(OWNER, parsed.size, parsed.storage_class)
    assert pvc["metadata"]["labels"][jobs.L_KIND] == "morestore"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"


def test_scope_with_a_time_takes_backup_name_or_none_and_the_loader_brings_the_scratch_to_it() -> None:
    at = "2026-12-01T10:00:00+01:00"
    with pytest.raises(models.SpecError, match="not backupID"):
        scoped.parse_scoped({"backupID": "b-1", "storageRef": {"name": "s3"}, "pointInTime": at,
                             "scope": {"tables": ["shop.a"]}, "target": {"sql": SQL}})
    with pytest.raises(models.SpecError, match=r"spec\.pointInTime"):
        scoped.parse_scoped(spec({"tables": ["shop.a"]}, pointInTime="yesterday"))
    chosen = scoped.parse_scoped({"pointInTime": at, "scope": {"tables": ["shop.a"]}, "target": {"sql": SQL}})
    assert chosen.backup_name is None and chosen.point_in_time is not None
    named = scoped.parse_scoped(spec({"tables": ["shop.a"]}, pointInTime=at))
    assert named.backup_name == "nightly"
    job = scoped.scoped_job(OWNER, named, STORAGE, "backup-1", None, DEFAULTS, drill.MatrixOneSettings.from_env({}))
    args = job["spec"]["template"]["spec"]["containers"][1]["args"]
    assert args[args.index("--to-time") + 1] == "2026-12-01T09:00:00Z"  # UTC
    assert "--export-dir" not in args  # insert: no export volume
    assert "volumes" not in job["spec"]["template"]["spec"] or all(
        v["name"] != "export" for v in job["spec"]["template"]["spec"]["volumes"])
    plain = scoped.scoped_job(OWNER, scoped.parse_scoped(spec({"tables": ["shop.a"]})), STORAGE, "backup-1", None,
                              DEFAULTS, drill.MatrixOneSettings.from_env({}))
    assert "--to-time" not in plain["spec"]["template"]["spec"]["containers"][1]["args"]


def test_the_loaders_message_stays_within_the_kubelets_limit() -> None:
    tables = [{"source": f"shop.t{i}", "target": f"shop.t{i}_restored_20261202010203", "rows": i,
               "checksum": "f" * 64, "seconds": 1.5, "rows_per_second": 1.0, "bytes_sent": 10} for i in range(100)]
    text = scopedload.compact({"ok": True, "result": {"backup_id": "b", "tables": tables, "skipped": []}})
    doc = json.loads(text)
    assert len(text) <= scopedload.MAX_MESSAGE and doc["ok"]
    kept = doc["result"]["tables"]
    assert 0 < len(kept) < 100 and doc["result"]["tables_left_out"] == 100 - len(kept)
    assert "rows_per_second" not in kept[0] and kept[0]["checksum"] == "f" * 64
    status = scoped.table_status(kept[0])
    assert set(status) == {"source", "target", "rows", "checksum", "seconds"}
