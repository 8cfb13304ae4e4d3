"""Online backups through MatrixOne's own `BACKUP` statement (what mo_br drives), with no downtime.

MatrixOne writes a consistent, GC-protected copy into a staging directory on its data volume:
`tae/` (objects, `ckp/`, `gc/`, `tae_list`, `tae_sum`), `hakeeper/hk_data` (the ID allocator),
`mo_meta`, `config/`. This module checks that copy against its own list (every file `tae_list`
names is there with the SHA-256 it lists), lays it out as the mo-data MatrixOne restarts from
(`tae/*` -> `shared/`, `hakeeper/hk_data` -> `local/hk_data`, nothing else), and hands that tree to
the ordinary backup run: the same content-addressed repository, manifest and catalogue, so a
restore is the ordinary one-pass restore. The staging directory is always removed; a staging
directory left by a killed run is removed by the next run (its flock is free).

Incremental: `BACKUP ... TYPE 'incremental' TIMESTAMP '<base BACKUPTS>'` stages only files new since
the base; `tae_list` still names every file (needCopy false for those not staged), and those are
taken from the base's file list, so every backup's manifest is complete.

MatrixOne's DISK file service frames files in 2048-byte blocks, each a 4-byte CRC followed by 2044
content bytes; `tae_list` sizes and SHA-256s are of the content, so the check strips the frames.
The staged files are stored as they are (framed): that is what MatrixOne reads from `shared/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MobackupError
from .layout import PathRules
from .model import BackupSummary, utc_now
from .progress import Progress
from .repository import Repository

DISK_BLOCK = 2048
DISK_CRC = 4
STAGING_PREFIX = ".mobackup-staging-online-"
# Staged files that describe the backup itself and are not part of the restored tree.
META_NAMES = ("tae_list", "tae_sum")


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to tae/
    size: int  # content bytes (without the DISK frames)
    sha256: str  # empty for the merged checkpoint meta MatrixOne writes last
    need_copy: bool


@dataclass(frozen=True)
class StagedBackup:
    backup_ts: str
    kind: str  # "full" | "incremental", as tae_sum says
    files: tuple[StagedFile, ...]


def disk_framed_size(content_size: int) -> int:
    """The file size of `content_size` bytes in DISK framing."""
    blocks = -(-content_size // (DISK_BLOCK - DISK_CRC))
    return content_size + DISK_CRC * blocks


def disk_content(path: Path) -> Iterator[bytes]:
    """The content of a DISK-framed file, 1 MiB of frames at a time (the CRCs stripped). Large
    pieces let hashlib release the GIL, so several files hash in parallel."""
    with open(path, "rb") as framed:
        while block := framed.read(DISK_BLOCK * 512):
            view = memoryview(block)
            yield b"".join([view[start + DISK_CRC:start + DISK_BLOCK] for start in range(0, len(block), DISK_BLOCK)])


def read_disk_text(path: Path) -> str:
    try:
        return b"".join(disk_content(path)).decode()
    except (OSError, UnicodeDecodeError) as error:
        raise MobackupError(f"MatrixOne's backup has no readable {path.name}: {error}") from None


def parse_staged(staging: Path) -> StagedBackup:
    """The staged copy's own description, from its DISK-framed tae_sum and tae_list."""
    return parse_staged_text(read_disk_text(staging / "tae" / "tae_sum"), read_disk_text(staging / "tae" / "tae_list"))


def parse_staged_text(summary_text: str, list_text: str) -> StagedBackup:
    """tae_sum (`time,size,backupTS,type`) and tae_list (`path,size,sha256,needCopy,ts` lines), files
    sorted by path; both are input from the server's staging area, checked before use."""
    summary = summary_text.strip().split(",")
    if len(summary) < 3 or not _is_ts(summary[2]):
        raise MobackupError(f"MatrixOne's backup summary tae_sum is malformed: {summary_text.strip()[:200]!r}")
    files: list[StagedFile] = []
    for number, line in enumerate(list_text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) < 4 or not fields[1].isdigit() or fields[3] not in ("true", "false"):
            raise MobackupError(f"MatrixOne's backup list tae_list line {number} is malformed: {line[:200]!r}")
        files.append(StagedFile(_safe_rel(fields[0]), int(fields[1]), fields[2].lower(), fields[3] == "true"))
    if not files:
        raise MobackupError("MatrixOne's backup list tae_list is empty")
    if len({f.path for f in files}) != len(files):
        raise MobackupError("MatrixOne's backup list tae_list names a file twice")
    return StagedBackup(summary[2], (summary[3] if len(summary) > 3 and summary[3] else "full"),
                        tuple(sorted(files, key=lambda f: f.path)))


def _is_ts(value: str) -> bool:
    physical, _, logical = value.partition("-")
    return physical.isdigit() and logical.isdigit()


def _safe_rel(path: str) -> str:
    """A tae_list path is input from the server's staging area: relative, no `..`."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise MobackupError(f"MatrixOne's backup list names an unsafe path {path!r}")
    return path


def verify_staged(staging: Path, staged: StagedBackup, workers: int = 4) -> int:
    """Every staged file tae_list names is present with its size and SHA-256. Returns the staged
    bytes."""
    staged_bytes = check_present(staging / "tae", staging / "hakeeper" / "hk_data", staged)
    check_digests(staging / "tae", staged, workers)
    return staged_bytes


def check_present(tae_dir: Path, hk_data: Path, staged: StagedBackup) -> int:
    """Every staged file tae_list names is there (of its framed size where it has no SHA-256), and
    hk_data too. Returns the staged bytes. Cheap: a stat per file."""
    total = 0
    for item in staged.files:
        if not item.need_copy:
            continue
        try:
            framed = (tae_dir / item.path).stat().st_size
        except FileNotFoundError:
            raise MobackupError(f"MatrixOne's backup is incomplete: {item.path} is listed but was not written "
                                "(an object that vanished during BACKUP); the backup was not stored") from None
        if not item.sha256 and framed != disk_framed_size(item.size):
            raise MobackupError(f"MatrixOne's backup file {item.path} has {framed} bytes, "
                                f"expected {disk_framed_size(item.size)} for {item.size} content bytes")
        total += framed
    if not hk_data.is_file():
        raise MobackupError("MatrixOne's backup has no hakeeper/hk_data (the ID allocator state)")
    return total + hk_data.stat().st_size


def check_digests(tae_dir: Path, staged: StagedBackup, workers: int = 4) -> None:
    """The content of every staged file has the SHA-256 tae_list gives (`workers` files at a time).
    The SHA-256 decides, not the size: for some objects (seen with tombstones under frequent
    checkpoints) tae_list's size is smaller than the file's content, while its SHA-256 is of it all."""

    def check(item: StagedFile) -> None:
        digest = hashlib.sha256()
        for part in disk_content(tae_dir / item.path):
            digest.update(part)
        if digest.hexdigest() != item.sha256:
            raise MobackupError(f"MatrixOne's backup file {item.path} does not match its SHA-256 in tae_list")

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="mobackup-verify") as pool:
        list(pool.map(check, [item for item in staged.files if item.need_copy and item.sha256]))


def arrange_tree(staging: Path, staged: StagedBackup) -> Path:
    """Moves the staged files (renames, same file system) into the mo-data layout MatrixOne restores
    from: `tree/shared/<tae path>`, `tree/local/hk_data`. Returns the tree."""
    tree = staging / "tree"
    shared = tree / "shared"
    (tree / "local").mkdir(parents=True)
    os.rename(staging / "tae", shared)
    for name in os.listdir(shared):
        if name.startswith(META_NAMES):
            os.unlink(shared / name)
    os.rename(staging / "hakeeper" / "hk_data", tree / "local" / "hk_data")
    for item in staged.files:  # the parents of files taken from the base must be directories of the tree
        if not item.need_copy:
            (shared / item.path).parent.mkdir(parents=True, exist_ok=True)
    return tree


# ---- the staging directory's life: created per run, locked while in use, removed always

@contextlib.contextmanager
def staging_area(data_dir: Path) -> Iterator[Path]:
    """A fresh staging path under `data_dir` (MatrixOne creates the directory itself). Held by a
    flock on a sibling lock file for the run; leftovers of killed runs are removed first."""
    remove_stale_staging(data_dir)
    name = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging = data_dir / name
    lock_path = data_dir / f"{name}.lock"
    # Locked before it gets its name, so another run never sees this lock file unlocked.
    locking = data_dir / f"{name}.locking"
    fd = os.open(locking, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(locking, lock_path)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        locking.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def remove_stale_staging(data_dir: Path) -> list[str]:
    """Removes staging directories whose run is gone (its lock file is not locked)."""
    removed: list[str] = []
    for entry in os.scandir(data_dir):
        if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        lock_path = data_dir / f"{entry.name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            fd = -1  # no lock file at all: nobody can own it
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live run
        shutil.rmtree(entry.path, ignore_errors=True)
        if fd >= 0:
            lock_path.unlink(missing_ok=True)
            os.close(fd)
        removed.append(entry.name)
    for lock in data_dir.glob(f"{STAGING_PREFIX}*.lock"):  # orphaned lock files
        if not (data_dir / lock.name[:-5]).exists():
            with contextlib.suppress(OSError):
                fd = os.open(lock, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    lock.unlink()
                except BlockingIOError:
                    pass
                finally:
                    os.close(fd)
    return removed


def choose_online_base(repo: Repository, source: str, backup_type: str | None,
                       base_id: str | None) -> BackupSummary | None:
    """An online incremental needs an online base: MatrixOne's incremental form starts from that
    base's BACKUPTS. Without an explicit base that is the newest online backup of the source; with
    no type given and none there, a full online backup (which stores only content the repository
    lacks anyway)."""
    from .backup import choose_base

    if backup_type == "full" or base_id:
        base = choose_base(repo, source, backup_type, base_id)
        if base is not None and base.extra.get("kind") != "online":
            raise MobackupError(f"backup {base.id} is a cold copy: an online incremental needs an online base "
                                "(run a full online backup first)")
        return base
    candidates = [s for s in repo.list_backups() if s.source == source and s.extra.get("kind") == "online"]
    if candidates:
        return candidates[-1]
    if backup_type == "incremental":
        raise MobackupError(f"no online backup of source {source!r} to base an online incremental on; "
                            "run a full online backup first")
    return None


def run_online_backup(
    repo: Repository,
    data_dir: Path,
    session: Any,  # mosql.MatrixOneSession
    *,
    server_data_dir: str | None = None,
    source: str | None = None,
    backup_type: str | None = None,
    base_id: str | None = None,
    progress: Progress | None = None,
) -> BackupSummary:
    """Back up a running MatrixOne: BACKUP into a staging directory on its data volume `data_dir`
    (at `server_data_dir` as the server sees it; default the same path), check, ingest, remove."""
    from .backup import default_source, run_backup

    data_dir = Path(data_dir).absolute()
    if not data_dir.is_dir():
        raise MobackupError(f"{data_dir}: not a directory (the data volume MatrixOne runs on)")
    source = source or default_source(data_dir)
    server_dir = (server_data_dir or str(data_dir)).rstrip("/")
    if not server_dir.startswith("/"):
        raise MobackupError(f"the server-side data directory must be absolute, not {server_dir!r}")
    base = choose_online_base(repo, source, backup_type, base_id)
    started, clock = utc_now(), time.monotonic()
    with staging_area(data_dir) as staging:
        server_staging = f"{server_dir}/{staging.name}"
        session.backup_to_directory(server_staging, repo.parallelism, base.backup_ts if base else None)
        backup_seconds = time.monotonic() - clock
        if not staging.is_dir():
            raise MobackupError(f"MatrixOne wrote its backup to {server_staging}, but {staging} does not exist: "
                                "is --data-dir the volume MatrixOne runs on, and --server-data-dir its path there?")
        staged = parse_staged(staging)
        staged_bytes = check_present(staging / "tae", staging / "hakeeper" / "hk_data", staged)
        catalog = _catalog(session, staged.backup_ts)
        tree = arrange_tree(staging, staged)
        # The SHA-256 checks run beside the ingest (both read the same, cached, files); the backup is
        # published only after they all passed.
        inherit = frozenset(f"shared/{f.path}" for f in staged.files if not f.need_copy)
        if inherit and base is None:
            raise MobackupError("MatrixOne staged an incremental backup without a base")
        verifier = ThreadPoolExecutor(1, thread_name_prefix="mobackup-verify")
        digests = verifier.submit(check_digests, tree / "shared", staged, repo.parallelism)
        try:
            return run_backup(
                repo, tree, source=source, backup_type="incremental" if base else "full",
                base_id=base.id if base else None, progress=progress, rules=PathRules(excludes=(), volatile=()),
                mo_version=session.version, backup_ts=staged.backup_ts, backup_ts_source="matrixone-backup",
                inherit=inherit, data_dir_label=str(data_dir), began=(started, clock),
                extra={"kind": "online", "staged_bytes": staged_bytes,
                       "staged_files": sum(f.need_copy for f in staged.files),
                       "matrixone_backup_seconds": round(backup_seconds, 3), "catalog": catalog},
                before_publish=digests.result,
            )
        finally:
            verifier.shutdown(wait=False, cancel_futures=True)


def _catalog(session: Any, backup_ts: str) -> dict[str, Any]:
    """What a restore drill checks (engine/catalog.py), as of BACKUPTS; never fails the backup."""
    from .catalog import read_catalog

    connection = getattr(session, "connection", None)
    if connection is None:
        return {"error": "no SQL session to read the catalog from"}
    return read_catalog(connection, backup_ts)
