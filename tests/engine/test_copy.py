"""`mobackup copy`: backups between repositories (directory and the real S3 server, other keys and
compression), only the missing blobs, corrupt sources refused, a killed copy resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from tamper import tamper

from mobackup.engine.backup import run_backup
from mobackup.engine.copy import copy_backups
from mobackup.engine.errors import CorruptDataError, MobackupError
from mobackup.engine.prune import RetentionPolicy, prune
from mobackup.engine.repository import Repository, RepositoryOptions, blob_key, files_key, open_repository
from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import generate_mo_data, mutate_mo_data, snapshot_tree

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def repo_at(url: str, key: str | None = None, compression: str = "none") -> Repository:
    return open_repository(RepositoryOptions.from_env(url, encryption_key=key, compression=compression), create=True)


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_* set for the shared S3 server; returns a fresh s3:// prefix."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.bucket}/copy-{uuid.uuid4().hex[:10]}"


def two_backups(tmp_path: Path, repo: Repository) -> tuple[list[str], list[dict[str, Any]]]:
    data = generate_mo_data(tmp_path / "mo-data", seed=21, objects=12)
    snapshots = [snapshot_tree(data)]
    ids = [run_backup(repo, data, source="db").id]
    mutate_mo_data(data, seed=22, new_objects=3)
    snapshots.append(snapshot_tree(data))
    ids.append(run_backup(repo, data, source="db").id)
    return ids, snapshots


def test_copy_dir_to_s3_to_dir_with_other_keys_and_compression(tmp_path: Path, s3_env: str) -> None:
    plain = repo_at(str(tmp_path / "plain"))
    ids, snapshots = two_backups(tmp_path, plain)
    remote = repo_at(s3_env, key="remote secret", compression="zstd")
    first = copy_backups(plain, remote, [ids[0][:8]])  # a prefix names it
    assert first.copied == [ids[0]] and first.blobs_copied > 0 and first.present == []
    both = copy_backups(plain, remote)  # --all: only the incremental's new blobs travel
    assert both.copied == [ids[1]] and both.present == [ids[0]]
    assert 0 < both.blobs_copied < first.blobs_copied and both.blobs_present > 0
    # Blob names are keyed per repository: none of the plain repository's names is in the encrypted one.
    assert not remote.backend.exists(blob_key(next(remote_names(plain))))

    back = repo_at(str(tmp_path / "back"), key="another secret")
    result = copy_backups(remote, back)
    assert result.copied == ids  # oldest (the base) first
    for backup_id, expected in zip(ids, snapshots, strict=True):
        summary = back.load_summary(backup_id)
        assert summary.extra["copied_from"]["location"] == remote.location
        assert verify_backup(back, backup_id).ok and verify_backup(remote, backup_id).ok
        run_restore(back, backup_id, tmp_path / f"restored-{backup_id}")
        assert snapshot_tree(tmp_path / f"restored-{backup_id}") == expected
    again = copy_backups(remote, back)
    assert again.copied == [] and again.present == ids and again.blobs_copied == 0


def remote_names(repo: Repository) -> Any:
    return (digest for digest, _ in repo.blob_sizes())


def test_copy_to_s3_transfers_only_the_blobs_the_target_lacks(tmp_path: Path, s3_env: str) -> None:
    source = repo_at(str(tmp_path / "src"))
    ids, snapshots = two_backups(tmp_path, source)
    target = repo_at(s3_env)  # plain on both sides: the same blob names
    copy_backups(source, target, [ids[0]])
    have = {d for d, _ in target.blob_sizes()}
    result = copy_backups(source, target, [ids[1]])
    added = {d for d, _ in target.blob_sizes()} - have
    assert result.blobs_copied == len(added) > 0
    run_restore(target, ids[1], tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == snapshots[1]


def test_corrupt_source_is_an_error_naming_the_backup_and_publishes_nothing(tmp_path: Path) -> None:
    source = repo_at(str(tmp_path / "src"))
    ids, _ = two_backups(tmp_path, source)
    target = repo_at(str(tmp_path / "dst"), compression="zstd")
    victim = next(r["chunks"][0] for r in source.entries(source.load_summary(ids[0])) if r.get("chunks"))
    path = tmp_path / "src" / blob_key(victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match=rf"backup {ids[0]} in .* is damaged: .*{victim}"):
        copy_backups(source, target)
    assert target.list_backups() == []
    assert not target.backend.exists(f"backups/{ids[0]}.json")


def test_cli_copy_of_an_encrypted_source_needs_the_target_key_from_the_environment(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=3, objects=3)
    src = tmp_path / "src"
    env = {**os.environ, "MOBACKUP_ENCRYPTION_KEY": "source key"}
    env.pop("MOBACKUP_TO_ENCRYPTION_KEY", None)
    subprocess.run([MOBACKUP, "backup", "--data-dir", str(data), "--repo", str(src), "-q"], env=env, check=True)
    refused = subprocess.run([MOBACKUP, "copy", "--all", "--from", str(src), "--to", str(tmp_path / "dst")],
                             env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "MOBACKUP_TO_ENCRYPTION_KEY" in refused.stderr
    assert not (tmp_path / "dst").exists()  # nothing was created

    env["MOBACKUP_TO_ENCRYPTION_KEY"] = "target key"
    done = subprocess.run([MOBACKUP, "copy", "--all", "--from", str(src), "--to", str(tmp_path / "dst"), "--json"],
                          env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert len(result["copied"]) == 1 and result["blobs_copied"] > 0
    assert "source key" not in done.stdout + done.stderr and "target key" not in done.stdout + done.stderr
    # The target is encrypted with the target's key, and only with it.
    with pytest.raises(MobackupError, match="wrong encryption key"):
        Repository.open(RepositoryOptions(str(tmp_path / "dst"), encryption_key="source key"))
    target = Repository.open(RepositoryOptions(str(tmp_path / "dst"), encryption_key="target key"))
    assert verify_backup(target, result["copied"][0]).ok



def test_another_backup_under_the_same_id_is_never_overwritten(tmp_path: Path) -> None:
    source = repo_at(str(tmp_path / "src"))
    ids, _ = two_backups(tmp_path, source)
    target = repo_at(str(tmp_path / "dst"))
    copy_backups(source, target, [ids[0]])
    planted = tmp_path / "dst" / "backups" / f"{ids[0]}.json"  # a plain summary: JSON anyone can edit
    summary = json.loads(planted.read_text())
    planted.write_text(json.dumps({**summary, "source": "another database"}))
    with pytest.raises(MobackupError, match=f"backup {ids[0]} in .* is not the one in .*different source"):
        copy_backups(source, target)
    assert json.loads(planted.read_text())["source"] == "another database"
    assert [s.id for s in target.list_backups()] == [ids[0]]  # the incremental after it was not copied either


def test_killed_copy_resumes_and_never_lists_a_partial_backup(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=9, objects=30)
    src, dst = tmp_path / "src", tmp_path / "dst"
    env = {**os.environ, "MOBACKUP_ENCRYPTION_KEY": "s", "MOBACKUP_TO_ENCRYPTION_KEY": "t"}
    backup = subprocess.run([MOBACKUP, "backup", "--data-dir", str(data), "--repo", str(src), "--json"],
                            env=env, capture_output=True, text=True, check=True)
    backup_id = json.loads(backup.stdout)["id"]
    expected = snapshot_tree(data)
    # Slowed to about 1 MB/s so that it can be killed half-way (the data is about 4 MB).
    copy = subprocess.Popen([MOBACKUP, "copy", backup_id, "--from", str(src), "--to", str(dst), "-q",
                             "--bandwidth-limit", "1M", "--parallelism", "1"], env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while len(list((dst / "blobs").rglob("*"))) < 15:
        assert copy.poll() is None and time.monotonic() < deadline, "the copy ended before it could be killed"
        time.sleep(0.05)
    os.killpg(copy.pid, signal.SIGKILL)
    copy.wait()
    target = Repository.open(RepositoryOptions(str(dst), encryption_key="t"))
    assert target.list_backups() == [] and not target.backend.exists(f"backups/{backup_id}.json")
    held = sum(1 for _ in target.blob_sizes())
    assert held > 0
    source = Repository.open(RepositoryOptions(str(src), encryption_key="s"))
    result = copy_backups(source, target, [backup_id])  # the dead copy left a shared lock: no obstacle
    total = sum(1 for _ in target.blob_sizes())
    assert result.copied == [backup_id] and result.blobs_copied == total - held and result.blobs_present >= held
    run_restore(target, backup_id, tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == expected


def test_copy_and_prune_on_both_sides_keep_every_retained_backup_restorable(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=31, objects=8)
    a, b = repo_at(str(tmp_path / "a")), repo_at(str(tmp_path / "b"), key="b")
    snapshots = {}
    for step in range(3):
        if step:
            mutate_mo_data(data, seed=40 + step, new_objects=2)
        summary = run_backup(a, data, source="db")
        snapshots[summary.id] = snapshot_tree(data)
        copy_backups(a, b)  # after each backup, as a schedule would
    prune(a, RetentionPolicy(keep_last=1))
    prune(b, RetentionPolicy(keep_last=2))
    assert [s.id for s in a.list_backups()] == list(snapshots)[2:]
    assert [s.id for s in b.list_backups()] == list(snapshots)[1:]
    assert not a.backend.exists(files_key(next(iter(snapshots))))
    for repo in (a, b):
        for summary in repo.list_backups():
            assert verify_backup(repo, summary.id).ok
            target = tmp_path / f"r-{repo.config['id']}-{summary.id}"
            run_restore(repo, summary.id, target)
            assert snapshot_tree(target) == snapshots[summary.id]
    assert copy_backups(a, b).copied == []  # what b kept is there; what it pruned is not sent again
    assert [s.id for s in b.list_backups()] == list(snapshots)[1:]


def test_a_rewritten_file_list_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Whoever can write to a plain repository can rewrite a list and its digest: copy checks the
    whole list as a restore does, before it writes a blob to the target."""
    source = repo_at(str(tmp_path / "src"))
    ids, _ = two_backups(tmp_path, source)
    tamper(Path(source.location), ids[0], lambda entries: [*entries, {**entries[-1], "path": "../escape"}])
    target = repo_at(str(tmp_path / "dst"))
    with pytest.raises(CorruptDataError, match=f"backup {ids[0]} in .*'../escape'"):
        copy_backups(source, target, [ids[0]])
    assert target.list_backups() == [] and list(target.blob_sizes()) == []
