"""Special files: FIFOs, sockets and devices are skipped and said to be; hard links stay links; sparse
files stay sparse when restored."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from mobackup.engine.backup import run_backup
from mobackup.engine.repository import RepositoryOptions, open_repository
from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import generate_mo_data, snapshot_tree

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def test_special_files_are_skipped_and_named(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=14, objects=3)
    os.mkfifo(data / "a-fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(data / "local" / "a-socket"))
    os.mknod(data / "a-device", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")}
        result = subprocess.run([MOBACKUP, "backup", "--data-dir", str(data), "--repo", str(tmp_path / "repo"),
                                 "--json"], capture_output=True, text=True, env=env, timeout=120)
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped_count"] == 3
    assert sorted((s["path"], s["type"]) for s in summary["skipped"]) == [
        ("a-device", "character device"), ("a-fifo", "fifo"), ("local/a-socket", "socket")]
    assert "skipped 3 special file(s)" in result.stderr and "a-fifo (fifo)" in result.stderr


@pytest.mark.parametrize("options", [{}, {"encryption_key": "k"}], ids=["plain", "encrypted"])
def test_hard_links_are_kept(tmp_path: Path, options: dict[str, str]) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=15, objects=3)
    (data / "shared" / "linked").write_bytes(os.urandom(300 << 10))
    os.link(data / "shared" / "linked", data / "shared" / "second-name")
    os.link(data / "shared" / "linked", data / "third-name")
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo"), **options), create=True)
    full = run_backup(repo, data, source="db")
    (data / "shared" / "new").write_bytes(b"new")
    incremental = run_backup(repo, data, source="db")
    for summary in (full, incremental):
        records = {r["path"]: r for r in repo.entries(summary)}
        first = next(p for p in ("shared/linked", "shared/second-name", "third-name")
                     if "hardlink_of" not in records[p])
        others = [p for p in ("shared/linked", "shared/second-name", "third-name") if p != first]
        for path in others:  # a link also carries the chunks: an older reader restores a copy
            assert records[path]["hardlink_of"] == first and records[path]["chunks"] == records[first]["chunks"]
        assert verify_backup(repo, summary.id).ok
        target = tmp_path / f"restored-{summary.type}"
        result = run_restore(repo, summary.id, target)
        assert result.file_count == summary.file_count
        inodes = {os.stat(target / p).st_ino for p in ("shared/linked", "shared/second-name", "third-name")}
        assert len(inodes) == 1 and os.stat(target / "third-name").st_nlink == 3
        expected = snapshot_tree(data) if summary is incremental else None
        if expected is not None:
            assert snapshot_tree(target) == expected


@pytest.mark.parametrize("options", [{}, {"compression": "zstd"}], ids=["plain", "zstd"])
def test_sparse_file_stays_sparse(tmp_path: Path, options: dict[str, str]) -> None:
    """1 MiB of data in a 200 MiB file: restored with a few MiB allocated, not 200."""
    data = tmp_path / "mo-data"
    (data / "local").mkdir(parents=True)
    sparse = data / "local" / "sparse"
    payload = os.urandom(1 << 20)
    with open(sparse, "wb") as out:
        out.seek(100 << 20)
        out.write(payload)
        out.truncate(200 << 20)
    assert os.stat(sparse).st_blocks * 512 < 4 << 20
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo"), **options), create=True)
    summary = run_backup(repo, data, source="db")
    target = tmp_path / "restored"
    run_restore(repo, summary.id, target)
    restored = target / "local" / "sparse"
    assert os.stat(restored).st_size == 200 << 20
    assert os.stat(restored).st_blocks * 512 <= 16 << 20  # one or two 8 MiB chunks hold data
    assert blake3.blake3(restored.read_bytes()).digest() == blake3.blake3(sparse.read_bytes()).digest()
