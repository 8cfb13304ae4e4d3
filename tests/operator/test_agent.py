"""The Job agent, run in-process against the real engine and a real file-system repository
(no Kubernetes: without --kind/--name it reports no progress, everything else is the Job's path)."""

from __future__ import annotations

import json
from pathlib import Path

from mobackup.k8s import agent
from mobackup.sample import generate_mo_data, mutate_mo_data, snapshot_tree


def run(tmp: Path, *args: str) -> tuple[int, dict]:
    term = tmp / "termination-log"
    term.unlink(missing_ok=True)
    code = agent.main([*args[:1], "--termination-log", str(term), *args[1:]])
    return code, json.loads(term.read_text())


def test_backup_incremental_restore_delete(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=7)
    repo = str(tmp_path / "repo")
    code, full = run(tmp_path, "backup", "--repo", repo, "--data-dir", str(data), "--source", "ns/mo",
                     "--type", "full", "--compression", "zstd")
    assert code == 0 and full["ok"] and full["result"]["type"] == "full"
    full_state = snapshot_tree(data)
    mutate_mo_data(data, seed=8)
    code, incr = run(tmp_path, "backup", "--repo", repo, "--data-dir", str(data), "--source", "ns/mo",
                     "--type", "incremental", "--base", full["result"]["id"])
    assert code == 0 and incr["result"]["base_id"] == full["result"]["id"]
    assert incr["result"]["new_bytes"] < full["result"]["new_bytes"]
    assert len(json.dumps(incr)) < 4096  # fits a termination message

    target = tmp_path / "restore"
    code, res = run(tmp_path, "restore", "--repo", repo, "--backup-id", full["result"]["id"], "--target", str(target))
    assert code == 0 and res["result"]["file_count"] == full["result"]["file_count"]
    assert snapshot_tree(target) == full_state

    # A non-empty target without --overwrite: refused, nothing touched.
    before = snapshot_tree(target)
    code, res = run(tmp_path, "restore", "--repo", repo, "--backup-id", incr["result"]["id"], "--target", str(target))
    assert code == 1 and res["reason"] == "TargetNotEmptyError" and snapshot_tree(target) == before
    code, res = run(tmp_path, "restore", "--repo", repo, "--backup-id", incr["result"]["id"], "--target",
                    str(target), "--overwrite")
    assert code == 0 and snapshot_tree(target) == snapshot_tree(data)

    # The full is the incremental's base: deleted all the same (reported as its dependent), and the
    # incremental still restores on its own from its complete file list.
    code, res = run(tmp_path, "delete", "--repo", repo, "--backup-id", full["result"]["id"])
    assert code == 0 and res["ok"], res
    assert res["result"]["deleted"] == [full["result"]["id"]] and res["result"]["dependents"] == [incr["result"]["id"]]
    assert res["result"]["blobs_removed"] > 0  # what only the full referenced
    again = tmp_path / "restore-after-delete"
    code, res = run(tmp_path, "restore", "--repo", repo, "--backup-id", incr["result"]["id"], "--target", str(again))
    assert code == 0 and snapshot_tree(again) == snapshot_tree(data)
    code, res = run(tmp_path, "delete", "--repo", repo, "--backup-id", incr["result"]["id"])
    assert code == 0 and res["ok"] and res["result"]["dependents"] == []
    assert not [p for p in (Path(repo) / "blobs").rglob("*") if p.is_file()]  # and every blob with it


def test_delete_checks_the_backup_in_the_repository(tmp_path: Path) -> None:
    """Issue 18: the operator's delete Job names the run's source and creation time; a backup ID that
    is another source's, older than the run, or only a prefix is refused (DeleteRefused), kept."""
    data = generate_mo_data(tmp_path / "mo-data", seed=3, objects=5)
    repo = str(tmp_path / "repo")
    code, full = run(tmp_path, "backup", "--repo", repo, "--data-dir", str(data), "--source", "ns/mo")
    assert code == 0
    backup_id, started = full["result"]["id"], full["result"]["started_at"]
    for extra, why in ((["--source", "ns/other"], "of source 'ns/mo', not 'ns/other'"),
                       (["--not-before", "2099-01-01T00:00:00Z"], "before the MOBackup existed")):
        code, res = run(tmp_path, "delete", "--repo", repo, "--backup-id", backup_id, *extra)
        assert code == 1 and res["reason"] == "DeleteRefused" and why in res["error"], res
    code, res = run(tmp_path, "delete", "--repo", repo, "--backup-id", backup_id[:8], "--source", "ns/mo")
    assert code == 0 and res["result"]["deleted"] == [], res  # a prefix is no backup of this run
    assert (Path(repo) / "backups" / f"{backup_id}.json").exists()
    code, res = run(tmp_path, "delete", "--repo", repo, "--backup-id", backup_id, "--source", "ns/mo",
                    "--not-before", started)
    assert code == 0 and res["result"]["deleted"] == [backup_id], res


def test_failure_is_a_readable_result(tmp_path: Path) -> None:
    code, res = run(tmp_path, "backup", "--repo", str(tmp_path / "repo"), "--data-dir", str(tmp_path / "missing"),
                    "--source", "s")
    assert code == 1 and res["ok"] is False and "not a directory" in res["error"]


def test_restore_never_empties_the_repository_or_a_system_directory(tmp_path: Path) -> None:
    """The Job's restore flags go through the engine's guards: a log volume that holds the repository
    (one PVC mounted twice), or `/`, is refused before anything is read or removed."""
    data = generate_mo_data(tmp_path / "mo-data", seed=9, objects=4)
    repo = tmp_path / "volume" / "repo"
    code, full = run(tmp_path, "backup", "--repo", str(repo), "--data-dir", str(data), "--source", "ns/mo")
    assert code == 0
    before = snapshot_tree(repo)
    for local, why in ((repo.parent, "the repository"), (Path("/"), "system directory /")):
        code, res = run(tmp_path, "restore", "--repo", str(repo), "--backup-id", full["result"]["id"],
                        "--target-s3", "s3://bucket/cluster/data", "--local-fs-dir", str(local), "--reset-local-fs")
        assert code == 1 and res["reason"] == "MobackupError" and why in res["error"], res
    assert snapshot_tree(repo) == before
