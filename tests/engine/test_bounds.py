"""Hostile sizes and depths in a repository: a small zstd frame that declares gigabytes, a tree
nested thousands of levels deep, a short file list that describes terabytes. Each is refused with
the engine's own error, without allocating what it claims and without leaving a staging directory.
The repositories are altered as tests/engine/tamper.py does (section 4-6 of the format)."""

from __future__ import annotations

import os
import struct
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from tamper import read_entries, tamper, write_entries

from conftest import small_backup
from mobackup.engine.backup import run_backup
from mobackup.engine.errors import CorruptDataError, MobackupError, RepositoryFormatError
from mobackup.engine.manifest import MAX_PATH_DEPTH
from mobackup.engine.online_s3_sharded import _load_run
from mobackup.engine.repository import (
    CONFIG_KEY,
    MAX_META_SIZE,
    Repository,
    RepositoryOptions,
    blob_key,
    files_key,
    open_repository,
    summary_key,
)
from mobackup.engine.restore import STAGING_PREFIX, run_restore
from mobackup.engine.verify import verify_backup
from mobackup.engine.walk import remove_tree

GIB = 1 << 30


def _bomb(size: int, declared: bool = True) -> bytes:
    """One zstd frame of `size` zero bytes (a few kilobytes per GiB), built without holding them."""
    compressor = zstandard.ZstdCompressor(write_content_size=declared).compressobj(size=size if declared else -1)
    block = bytes(1 << 20)
    frame = b"".join(compressor.compress(block) for _ in range(size >> 20))
    return frame + compressor.flush()


def _stored(frame: bytes) -> bytes:
    """The stored form of a compressed payload in an unencrypted repository (section 4)."""
    return b"\x01" + frame


@pytest.fixture
def zstd_repo(tmp_path: Path) -> tuple[Repository, str]:
    """small_backup in a compressed (so framed) repository without encryption: whoever can write to
    it can write any stored form."""
    return small_backup(tmp_path, compression="zstd")


@pytest.fixture
def peak_memory() -> Iterator[Callable[[], int]]:
    """The peak of Python's (and zstandard's) allocations since the test began, in bytes."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _assert_nothing_restored(tmp_path: Path) -> None:
    assert list((tmp_path / "target").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


# ---- 2a: decompression is bounded by what the caller expects ----------------------------------------

@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_blob_bomb_is_refused_without_inflating(zstd_repo: tuple[Repository, str], tmp_path: Path,
                                                peak_memory: Callable[[], int], declared: bool) -> None:
    """A blob replaced by a 40 KB frame of 1 GiB: its file says 3000 bytes, and no more is inflated."""
    repo, backup_id = zstd_repo
    top = next(e for e in repo.entries(repo.load_summary(backup_id)) if e["path"] == "top")
    repo.backend.write(blob_key(top["chunks"][0]), _stored(_bomb(GIB, declared)))
    result = verify_backup(repo, backup_id)
    assert not result.ok and result.problem_count == 1
    assert "more than the 3000 expected" in result.problems[0] or "within the 3000 bytes" in result.problems[0]
    with pytest.raises(CorruptDataError, match="3000"):
        run_restore(repo, backup_id, tmp_path / "target")
    _assert_nothing_restored(tmp_path)
    assert peak_memory() < 32 << 20


def test_summary_bomb_is_a_damaged_backup(zstd_repo: tuple[Repository, str], tmp_path: Path,
                                          peak_memory: Callable[[], int]) -> None:
    """`list` reads every summary: one that inflates to 1 GiB is damaged, the others are listed."""
    repo, bomb_id = zstd_repo
    good = run_backup(repo, tmp_path / "mo-data", source="db")
    tracemalloc.reset_peak()
    repo.backend.write(summary_key(bomb_id), _stored(_bomb(GIB)))
    damaged: dict[str, str] = {}
    assert [s.id for s in repo.list_backups(damaged=damaged)] == [good.id]
    assert f"more than the {MAX_META_SIZE} expected" in damaged[bomb_id]
    assert peak_memory() < 32 << 20


@pytest.mark.parametrize("bomb", ["zstd-frame", "frame-length"])
def test_file_list_bomb_is_refused_without_allocating(zstd_repo: tuple[Repository, str], tmp_path: Path,
                                                      peak_memory: Callable[[], int], bomb: str) -> None:
    """A file-list frame that inflates to 1 GiB, or whose length field says 4 GiB (of a 10-byte
    rest): verify and restore refuse it and allocate neither."""
    repo, backup_id = zstd_repo
    if bomb == "zstd-frame":
        frame = _stored(_bomb(GIB))
        content, reason = struct.pack(">I", len(frame)) + frame, f"more than the {MAX_META_SIZE} expected"
    else:
        content, reason = struct.pack(">I", 0xFFFFFFFF) + bytes(10), "larger than any writer makes"
    (Path(repo.location) / files_key(backup_id)).write_bytes(content)
    result = verify_backup(repo, backup_id)
    assert not result.ok and reason in result.problems[0]
    with pytest.raises(CorruptDataError, match=reason):
        run_restore(repo, backup_id, tmp_path / "target")
    _assert_nothing_restored(tmp_path)
    assert peak_memory() < 32 << 20


def test_run_record_bomb_is_refused(zstd_repo: tuple[Repository, str], peak_memory: Callable[[], int]) -> None:
    """The records of a sharded online backup are metadata too: bounded (at 1 GiB) like the rest."""
    repo, _ = zstd_repo
    repo.backend.write("runs/r1/run.json", _stored(_bomb(2 * GIB)))
    with pytest.raises(CorruptDataError, match="more than the 1073741824 expected"):
        _load_run(repo, "r1")
    assert peak_memory() < 32 << 20


# ---- 2b: no recursion over depth; nothing left behind ------------------------------------------------

def _nested(entries: list[dict[str, Any]], depth: int) -> list[dict[str, Any]]:
    path, out = "", list(entries)
    for _ in range(depth):
        path = f"{path}/n" if path else "n"
        out.append({"path": path, "type": "dir", "mode": 0o755, "mtime_ns": 0})
    return out


def test_list_deeper_than_the_limit_is_refused(plain: tuple[Repository, str], tmp_path: Path) -> None:
    repo, backup_id = plain
    entries = read_entries(Path(repo.location), backup_id)
    tamper(Path(repo.location), backup_id, lambda e: _nested(e, MAX_PATH_DEPTH))  # exactly the limit: valid
    assert verify_backup(repo, backup_id).ok
    write_entries(Path(repo.location), backup_id, _nested(entries, 3000))
    result = verify_backup(repo, backup_id)
    assert not result.ok and f"more than {MAX_PATH_DEPTH} path components" in result.problems[0]
    with pytest.raises(CorruptDataError, match=f"more than {MAX_PATH_DEPTH} path components"):
        run_restore(repo, backup_id, tmp_path / "target")
    _assert_nothing_restored(tmp_path)


def test_backup_of_a_tree_deeper_than_the_limit_fails(tmp_path: Path) -> None:
    """A backup that no restore would accept is refused when it is taken, not found out later."""
    data = tmp_path / "mo-data"
    deep = data.joinpath(*["n"] * (MAX_PATH_DEPTH + 1))
    deep.mkdir(parents=True)
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)
    with pytest.raises(MobackupError, match=f"more than {MAX_PATH_DEPTH} path components"):
        run_backup(repo, data, source="db")
    assert repo.list_backups() == []


def _deep_tree(root: Path, depth: int) -> None:
    """`root`/n/n/.../n/file, `depth` levels: deeper than PATH_MAX, so built through descriptors."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("n", dir_fd=fd)
            child = os.open("n", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("file", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["leftover-beside", "leftover-inside", "old-tree"])
def test_deep_trees_on_disk_never_break_a_restore(plain: tuple[Repository, str], tmp_path: Path,
                                                  where: str) -> None:
    """Trees a thousand levels deep (from an older version, or put there by hand) in a killed
    restore's leftovers or in the tree a forced restore replaces: removed, and the restore completes
    (shutil.rmtree recursed per level: RecursionError, and the leftover broke every later restore)."""
    repo, backup_id = plain
    target = tmp_path / "target"
    target.mkdir()
    deep = {"leftover-beside": tmp_path / f"{STAGING_PREFIX}target-0123456789ab",
            "leftover-inside": target / f"{STAGING_PREFIX}0123456789ab",
            "old-tree": target / "old"}[where]
    try:
        _deep_tree(deep, 1500)
        for _ in range(2):  # the second one replaces the first one's tree
            result = run_restore(repo, backup_id, target, force=True)
            assert result.file_count == 2
            assert sorted(p.name for p in target.iterdir()) == ["d", "top"]
            assert sorted(p.name for p in tmp_path.iterdir()) == ["mo-data", "repo", "target"]
    finally:
        subprocess.run(["rm", "-rf", str(deep)], check=True)  # GNU rm does not recurse either


def test_remove_tree_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    tree = tmp_path / "tree"
    _deep_tree(tree, 2000)
    (tree / "n" / "link").symlink_to(outside)
    (tree / "n" / "n" / "file-link").symlink_to(outside / "keep")
    remove_tree(tree)
    assert not tree.exists() and (outside / "keep").read_text() == "precious"
    link = tmp_path / "just-a-link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.is_symlink() and outside.exists()
    remove_tree(tmp_path / "absent")  # nothing to do


@pytest.mark.parametrize("where", ["config", "summary", "entry"])
def test_deeply_nested_json_is_damage_not_a_crash(plain: tuple[Repository, str], where: str) -> None:
    """json.loads recurses per level: a million `[` raise RecursionError, which no caller expected."""
    repo, backup_id = plain
    nested = "[" * 1_000_000
    root = Path(repo.location)
    if where == "config":
        (root / CONFIG_KEY).write_text(nested)
        with pytest.raises(RepositoryFormatError, match="not valid JSON"):
            Repository.open(repo.options)
    elif where == "summary":
        (root / summary_key(backup_id)).write_text(nested)
        damaged: dict[str, str] = {}
        assert repo.list_backups(damaged=damaged) == [] and "unreadable summary" in damaged[backup_id]
    else:
        entries = read_entries(root, backup_id)
        write_entries(root, backup_id, entries)
        raw = (root / files_key(backup_id)).read_bytes()
        payload = raw[5:] + nested.encode() + b"\n"
        (root / files_key(backup_id)).write_bytes(struct.pack(">I", len(payload) + 1) + b"\x00" + payload)
        result = verify_backup(repo, backup_id)
        assert not result.ok and f"unreadable entry {len(entries) + 1}" in result.problems[0]


# ---- 2c: a restore that cannot fit is refused before it writes ----------------------------------------

def _free_space(monkeypatch: pytest.MonkeyPatch, free: int) -> list[str]:
    """os.statvfs as the restore sees it, with `free` bytes available; returns the paths asked about."""
    real, asked = os.statvfs, []

    def statvfs(path: Any) -> os.statvfs_result:
        asked.append(str(path))
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, free // st.f_frsize,
                                  st.f_files, st.f_ffree, st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, "statvfs", statvfs)
    return asked


def test_restore_that_cannot_fit_is_refused_before_writing(plain: tuple[Repository, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One real blob listed 16384 times: 128 GiB described by a list of about a megabyte (a few
    kilobytes compressed), restored onto 1 GiB of free space."""
    repo, backup_id = plain
    top = next(e for e in read_entries(Path(repo.location), backup_id) if e["path"] == "top")
    count = (128 * GIB) // repo.chunk_size
    tamper(Path(repo.location), backup_id,
           lambda e: [*e, {**top, "path": "huge", "size": count * repo.chunk_size, "chunks": top["chunks"] * count}])
    asked = _free_space(monkeypatch, GIB)
    with pytest.raises(MobackupError, match=r"needs 1\d\d\.\d GiB .* has 1\.0 GiB free"):
        run_restore(repo, backup_id, tmp_path / "target")
    assert str(tmp_path / "target") in asked
    _assert_nothing_restored(tmp_path)


def test_holes_and_hard_links_take_no_space_in_the_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """200 MiB of which 1 MiB is data, and two more names of it: fits in 100 MiB."""
    data = tmp_path / "mo-data"
    data.mkdir()
    with open(data / "sparse", "wb") as out:
        out.seek(100 << 20)
        out.write(os.urandom(1 << 20))
        out.truncate(200 << 20)
    os.link(data / "sparse", data / "second")
    os.link(data / "sparse", data / "third")
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)
    summary = run_backup(repo, data, source="db")
    assert summary.size_bytes == 600 << 20
    _free_space(monkeypatch, 100 << 20)
    assert run_restore(repo, summary.id, tmp_path / "target").file_count == 3
