"""Memory that stays flat with millions of files (issue 22): an online backup keeps what it knows per
staged file on disk (engine/online_index.py), and the small lists a short incremental handles stay in
memory while larger ones spill to SQLite with the same answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_matrixone import FakeMatrixOne

from mobackup.engine.errors import CorruptDataError, MobackupError
from mobackup.engine.index import FileIndex
from mobackup.engine.manifest import ManifestChecker
from mobackup.engine.online import run_online_backup
from mobackup.engine.online_s3 import disk_frame
from mobackup.engine.repository import Repository, RepositoryOptions, open_repository
from mobackup.engine.restore import run_restore

DIGEST = "ab" * 32


def _repo(tmp_path: Path) -> Repository:
    return open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)


def test_an_online_incremental_takes_reused_files_from_its_base_and_restores_whole(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    data = tmp_path / "mo-data"
    data.mkdir()
    objects = {f"obj{i}": bytes([i]) * (3000 + i) for i in range(5)} | {"ckp/meta_1": b"m" * 100}
    full = run_online_backup(repo, data, FakeMatrixOne(objects, pause=0.01), source="mo")
    assert full.extra["taken_files"] == full.extra["staged_files"] == len(objects)  # all through the index
    newer = {**objects, "obj9": b"new" * 500, "ckp/meta_2": b"n" * 50}
    reused = frozenset(objects) - {"ckp/meta_1"}
    incremental = run_online_backup(repo, data, FakeMatrixOne(newer, reused=reused), source="mo")
    assert incremental.type == "incremental" and incremental.extra["staged_files"] == len(newer) - len(reused)
    restored = tmp_path / "restored"
    run_restore(repo, incremental.id, restored)
    for rel, content in newer.items():
        assert (restored / "shared" / rel).read_bytes() == disk_frame(content), rel


def test_a_reused_file_the_base_lacks_fails_the_incremental(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    data = tmp_path / "mo-data"
    data.mkdir()
    run_online_backup(repo, data, FakeMatrixOne({"a": b"a" * 100}), source="mo")
    matrixone = FakeMatrixOne({"a": b"a" * 100, "ghost": b"g" * 10}, reused=frozenset({"a", "ghost"}))
    with pytest.raises(MobackupError, match=r"1 files to take from base backup .* e\.g\. shared/ghost"):
        run_online_backup(repo, data, matrixone, source="mo")
    assert len(repo.list_backups()) == 1


def _entry(path: str, kind: str = "file", **more: object) -> dict[str, object]:
    entry: dict[str, object] = {"path": path, "type": kind, "mode": 0o644, "mtime_ns": 1}
    if kind == "file":
        entry |= {"size": 3, "chunks": [DIGEST]}
    return entry | more


LISTS = {
    "sound": ([_entry("d", "dir"), _entry("d/a"), _entry("d/b", hardlink_of="d/a")], None),
    "twice": ([_entry("a"), _entry("b"), _entry("a")], r"entries 1 and 3 have the same path"),
    "link-forward": ([_entry("b", hardlink_of="a"), _entry("a")], r"hard link to 'a'"),
    "link-to-dir": ([_entry("d", "dir"), _entry("b", hardlink_of="d")], r"hard link to 'd'"),
}


@pytest.mark.parametrize("in_memory", [100, 1, 0], ids=["memory", "spilled", "disk"])
@pytest.mark.parametrize("name", sorted(LISTS))
def test_file_list_checks_answer_the_same_in_memory_and_on_disk(tmp_path: Path, name: str, in_memory: int) -> None:
    entries, error = LISTS[name]
    checker = ManifestChecker(tmp_path, 1 << 20, "backup x", in_memory=in_memory)
    try:
        for entry in entries:
            checker.check(entry)
        if error is None:
            checker.finish()
        else:
            with pytest.raises(CorruptDataError, match=error):
                checker.finish()
    finally:
        checker.close()
    assert (tmp_path / "paths.sqlite").exists() == (len(entries) > in_memory)


@pytest.mark.parametrize("in_memory", [100, 2], ids=["memory", "spilled"])
def test_base_file_index_answers_the_same_in_memory_and_spilled(tmp_path: Path, in_memory: int) -> None:
    index = FileIndex(tmp_path / "base.sqlite", in_memory=in_memory)
    entries = [_entry("d", "dir")] + [_entry(f"d/f{i}", size=i, mtime_ns=i * 10, chunks=[DIGEST] * i) for i in range(5)]
    try:
        assert index.load(entries) == 5
        for i in range(5):
            assert index.get(f"d/f{i}") == (i, i * 10, [DIGEST] * i)
        assert index.get("d") is None and index.get("nothing") is None
        assert (tmp_path / "base.sqlite").exists() == (in_memory < 5)
    finally:
        index.close()
    with pytest.raises(CorruptDataError, match="malformed entry"):
        FileIndex(tmp_path / "other.sqlite").load([{"type": "file", "path": "x"}])


def test_staging_removal_streams_a_large_directory_with_workers(tmp_path: Path) -> None:
    """remove_tree(workers=4) unlinks as it reads, a bounded number at a time (it held a Future per
    file before: 1.3 KB each), and still removes every file, nested directory and link (unfollowed)."""
    from mobackup.engine.walk import remove_tree

    root = tmp_path / "staging"
    (root / "tae" / "ckp").mkdir(parents=True)
    for i in range(3000):
        (root / "tae" / f"obj{i}").write_bytes(b"x")
    for i in range(20):
        (root / "tae" / "ckp" / f"meta{i}").write_bytes(b"m")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    (root / "tae" / "link").symlink_to(outside)
    remove_tree(root, workers=4)
    assert not root.exists()
    assert (outside / "keep").read_bytes() == b"k"


def test_the_takers_name_filter_never_forgets_and_rarely_confuses() -> None:
    """SeenNames (online_take.py): every name added is seen (a file is never taken twice); a new name
    taken for seen only leaves its file to the ingest, and that stays rare."""
    from mobackup.engine.online_take import SeenNames

    seen = SeenNames()
    names = [f"{i:016x}-0000-7000-8000-000000000000_00000" for i in range(50_000)]
    for name in names:
        seen.add(name)
    assert all(seen.has(name) for name in names)
    confused = sum(seen.has(f"new-{i}") for i in range(50_000))
    assert confused < 50  # ~0.0001 expected at this count
