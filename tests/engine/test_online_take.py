"""Online backups store MatrixOne's staged files while BACKUP still writes the others (issue 22,
engine/online_take.py): what is stored is what was checked, and a file that changes after it was
stored still fails the run."""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
from pathlib import Path

import pytest
from fake_matrixone import FakeMatrixOne

from mobackup.engine.errors import MobackupError
from mobackup.engine.online import disk_content, run_online_backup
from mobackup.engine.online_s3 import disk_frame
from mobackup.engine.online_take import DiskContentSha256
from mobackup.engine.repository import Repository, RepositoryOptions, open_repository
from mobackup.engine.restore import run_restore


def _repo(tmp_path: Path) -> Repository:
    return open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)


def test_the_sha256_of_framed_content_is_the_same_whatever_the_pieces() -> None:
    rng = random.Random(22)
    for size in (0, 3, 4, 5, 2047, 2048, 2049, 2048 * 600 + 17):
        framed = rng.randbytes(size)
        expected = hashlib.sha256(b"".join(disk_content(io.BytesIO(framed)))).hexdigest()
        for _ in range(4):
            digest, done = DiskContentSha256(), 0
            while done < size:
                step = rng.choice([1, 3, 4, 2044, 2048, 2049, 100_000, 2048 * 512 + 3])
                digest.update(memoryview(framed)[done:done + step])
                done += step
            assert digest.hexdigest() == expected, size


def _objects() -> dict[str, bytes]:
    return {f"0198{i:04x}-0000-7000-8000-000000000000_00000": os.urandom(300_000 + i * 1000) for i in range(4)} | {
        "ckp/meta_1-0_2-0.ckp": os.urandom(5000)}


def test_staged_files_are_stored_while_backup_writes_and_restore_as_staged(tmp_path: Path) -> None:
    data = tmp_path / "mo-data"
    data.mkdir()
    objects = _objects()
    summary = run_online_backup(_repo(tmp_path), data, FakeMatrixOne(objects, pause=0.15), source="mo")
    # The taker polls every 20 ms and each file comes 150 ms after the last: most are taken while
    # BACKUP runs, the rest right after it returned; every one in one read.
    assert summary.extra["taken_while_staging"] >= 3
    assert summary.extra["taken_files"] == len(objects)
    restored = tmp_path / "restored"
    run_restore(_repo(tmp_path), summary.id, restored)
    for rel, content in objects.items():
        assert (restored / "shared" / rel).read_bytes() == disk_frame(content), rel


def test_a_file_changed_after_it_was_stored_fails_the_run_and_nothing_is_published(tmp_path: Path) -> None:
    data = tmp_path / "mo-data"
    data.mkdir()
    repo = _repo(tmp_path)
    objects = _objects()
    victim = sorted(objects)[0]

    def damage(staging: Path) -> None:
        """After BACKUP wrote everything (and the victim, first written, has long been stored): a bit
        flipped in place, as a failing disk or another writer would."""
        path = staging / "tae" / victim
        deadline = time.monotonic() + 10
        while not list((tmp_path / "repo" / "blobs").glob("*/*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        framed = bytearray(path.read_bytes())
        framed[5000] ^= 0xFF
        with open(path, "r+b") as out:
            out.write(framed)

    with pytest.raises(MobackupError, match=f"{victim} does not match its SHA-256"):
        run_online_backup(repo, data, FakeMatrixOne(objects, pause=0.05, after=damage), source="mo")
    assert repo.list_backups() == []
    assert not list(data.iterdir()), "the staging directory stays behind"


def test_every_blob_copied_in_the_kernel_starts_its_writeback_before_it_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """So that publishing's syncfs finds the backup's writes on disk or under way (measured at 1M rows:
    publish 0.19 s -> 0.025 s), not all still dirty: each new blob's descriptor is handed to
    sync_file_range while it is still the unnamed temporary, and the blob restores whole."""
    from mobackup.engine import backup, storage

    data = tmp_path / "mo-data"
    data.mkdir()
    objects = _objects()
    started: list[tuple[int, int]] = []  # (size, result of the real call)

    def watched(fd: int) -> None:
        started.append((os.fstat(fd).st_size, storage.start_writeback(fd)))

    monkeypatch.setattr(backup, "start_writeback", watched)
    summary = run_online_backup(_repo(tmp_path), data, FakeMatrixOne(objects, pause=0.01), source="mo")
    large = sorted(len(disk_frame(c)) for c in objects.values() if len(disk_frame(c)) >= storage.KERNEL_COPY_MIN)
    assert large and sorted(size for size, _ in started) == large
    assert all(result == 0 for _, result in started)  # the kernel took each request
    restored = tmp_path / "restored"
    run_restore(_repo(tmp_path), summary.id, restored)
    assert {rel: (restored / "shared" / rel).read_bytes() for rel in objects} == {
        rel: disk_frame(content) for rel, content in objects.items()}


def test_writeback_is_only_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where sync_file_range is missing (or refuses the descriptor, e.g. a pipe), nothing fails."""
    from mobackup.engine import storage

    read, write = os.pipe()
    try:
        assert storage.start_writeback(read) == -1  # ESPIPE: refused, not raised
    finally:
        os.close(read)
        os.close(write)
    monkeypatch.setattr(storage, "_sync_file_range", False)
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY)
    try:
        os.write(fd, b"x" * 10)
        assert storage.start_writeback(fd) is None
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"x" * 10
