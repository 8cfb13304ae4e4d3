"""Online backups through MatrixOne's own `BACKUP` statement (what mo_br drives), with no downtime.

MatrixOne writes a consistent, GC-protected copy into a staging directory on its data volume:
`tae/` (objects, `ckp/`, `gc/`, `tae_list`, `tae_sum`), `hakeeper/hk_data` (the ID allocator),
`mo_meta`, `config/`. This module checks that copy against its own list (every file `tae_list`
names is there with the SHA-256 it lists), lays it out as the mo-data MatrixOne restarts from
(`tae/*` -> `shared/`, `hakeeper/hk_data` -> `local/hk_data`, nothing else), and hands that tree to
the ordinary backup run: the same content-addressed repository, manifest and catalogue, so a
restore is the ordinary one-pass restore. The staging directory is always removed; a staging
directory left by a killed run is removed by the next run (its flock is free: the kernel drops it
with its holder, in whatever PID namespace, so no PID is ever judged). One without a lock file is
removed only once it has not changed for an hour; one whose lock file cannot be opened is left.

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
import re
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .backup import ChunkStore, TakenFile
from .errors import MobackupError, PlantedLinkError
from .index import FileIndex
from .layout import PathRules
from .model import BackupSummary, utc_now
from .online_index import StagedIndex
from .online_take import DISK_BLOCK, DISK_CRC, META_NAMES, StagedTaker
from .progress import Progress
from .repository import Repository
from .safefs import DirectoryFds, Ident, NotFollowed, identity, make_private_dir, open_dir_at, open_file_at
from .walk import remove_tree
from .workers import BoundedWorkers

STAGING_PREFIX = ".mobackup-staging-online-"
# A staging directory without its lock file is no run's of ours (a run creates the lock file first
# and removes it last), but the missing file is no proof either (removed by hand or by a tool
# sweeping `*.lock`): such a directory goes once nothing in it changed for this long.
ORPHAN_STAGING_SECONDS = 3600.0


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to tae/
    size: int  # content bytes (without the DISK frames)
    sha256: str  # empty for the merged checkpoint meta MatrixOne writes last
    need_copy: bool


class StagedList:
    """tae_list's files in path order, from a StagedIndex (on disk): iterated, never held whole."""

    def __init__(self, index: StagedIndex, where: str = "") -> None:
        self.index = index
        self.where = where

    def __iter__(self) -> Iterator[StagedFile]:
        for row in self.index.staged(self.where):
            yield StagedFile(*row)

    def __len__(self) -> int:
        return self.index.count(self.where)


@dataclass(frozen=True)
class StagedBackup:
    backup_ts: str
    kind: str  # "full" | "incremental", as tae_sum says
    files: tuple[StagedFile, ...] | StagedList  # in path order


def disk_framed_size(content_size: int) -> int:
    """The file size of `content_size` bytes in DISK framing."""
    blocks = -(-content_size // (DISK_BLOCK - DISK_CRC))
    return content_size + DISK_CRC * blocks


def disk_content(framed: BinaryIO) -> Iterator[bytes]:
    """The content of an open DISK-framed file, 1 MiB of frames at a time (the CRCs stripped). Large
    pieces let hashlib release the GIL, so several files hash in parallel."""
    while block := framed.read(DISK_BLOCK * 512):
        view = memoryview(block)
        yield b"".join([view[start + DISK_CRC:start + DISK_BLOCK] for start in range(0, len(block), DISK_BLOCK)])


def read_disk_text(tae: DirectoryFds, name: str) -> str:
    try:
        with open(tae.open_file(name), "rb") as framed:
            return b"".join(disk_content(framed)).decode()
    except (OSError, UnicodeDecodeError) as error:
        raise MobackupError(f"MatrixOne's backup has no readable {name}: {error}") from None


NO_HK_DATA = "MatrixOne's backup has no hakeeper/hk_data (the ID allocator state)"


class StagedCopy:
    """MatrixOne's staged copy, entered without following a symbolic link. The staging directory is
    the server's, writable by whoever runs it: a link there for the directory itself, `tae`,
    `hakeeper`, `hk_data` or `tree` would make this run (often root) move, remove or back up files
    anywhere. So every step acts on descriptors, or on names relative to them (safefs)."""

    def __init__(self, staging: Path) -> None:
        self.path = staging
        self.fd = open_dir_at(None, str(staging), f"MatrixOne's backup staging {staging}")
        self.hk_data: Ident | None = None  # hakeeper/hk_data as check_present saw it
        try:
            self.tae = DirectoryFds(self._enter("tae", "MatrixOne's backup has no tae directory"), f"{staging}/tae",
                                    owned_links_only=True)
        except BaseException:
            os.close(self.fd)
            raise

    def _enter(self, name: str, missing: str) -> int:
        try:
            return open_dir_at(self.fd, name, f"{self.path}/{name}")
        except FileNotFoundError:
            raise MobackupError(missing) from None

    def parse(self, index: StagedIndex | None = None) -> StagedBackup:
        """The staged copy's own description, from its DISK-framed tae_sum and tae_list; with `index`,
        tae_list is streamed into it (memory stays flat with millions of files)."""
        if index is None:
            return parse_staged_text(read_disk_text(self.tae, "tae_sum"), read_disk_text(self.tae, "tae_list"))
        backup_ts, kind = parse_tae_sum(read_disk_text(self.tae, "tae_sum"))
        try:
            with open(self.tae.open_file("tae_list"), "rb") as framed:
                count = index.add_staged(_tae_list_rows(_lines(disk_content(framed))))
        except (OSError, UnicodeDecodeError) as error:
            raise MobackupError(f"MatrixOne's backup has no readable tae_list: {error}") from None
        except ValueError:
            raise MobackupError("MatrixOne's backup list tae_list names a file twice") from None
        if not count:
            raise MobackupError("MatrixOne's backup list tae_list is empty")
        return StagedBackup(backup_ts, kind, StagedList(index))

    def check_present(self, staged: StagedBackup) -> int:
        """check_present, and hk_data (a regular file). Returns the staged bytes."""
        total = check_present(self.tae, staged)
        hakeeper = self._enter("hakeeper", NO_HK_DATA)
        try:
            fd = open_file_at(hakeeper, "hk_data", f"{self.path}/hakeeper/hk_data")
            writer = os.fstat(hakeeper).st_uid
        except FileNotFoundError:
            raise MobackupError(NO_HK_DATA) from None
        finally:
            os.close(hakeeper)
        st = os.fstat(fd)
        os.close(fd)
        if st.st_nlink > 1 and st.st_uid != writer:  # as DirectoryFds(owned_links_only) refuses it
            raise PlantedLinkError(f"{self.path}/hakeeper/hk_data has {st.st_nlink} names and belongs to uid "
                                   f"{st.st_uid}, not to the writer of its directory (uid {writer}): refusing a "
                                   "hard link planted to another user's file")
        self.hk_data = identity(st)
        return total + st.st_size

    def arrange(self, staged: StagedBackup) -> tuple[Path, Ident]:
        """Moves the staged files (renames, same file system) into the mo-data layout MatrixOne
        restores from: `tree/shared/<tae path>`, `tree/local/hk_data`, where `tree` is made here.
        Returns the tree and its (st_dev, st_ino); `self.tae` is then `tree/shared`. Each name moved
        is checked to be what was checked before (a link swapped in meanwhile is refused)."""
        tree_path = self.path / "tree"
        tree = make_private_dir(self.fd, "tree", str(tree_path))  # refused if the name is taken (planted)
        try:
            local = open_dir_at(tree, "local", f"{tree_path}/local", create=True)
            try:
                os.rename("tae", "shared", src_dir_fd=self.fd, dst_dir_fd=tree)
                shared = open_dir_at(tree, "shared", f"{tree_path}/shared")
                moved = identity(os.fstat(shared))
                os.close(shared)
                if moved != identity(os.fstat(self.tae.root_fd)):
                    raise NotFollowed(f"{self.path}/tae was replaced while being arranged: refusing")
                self.tae.shown = f"{tree_path}/shared"
                for name in os.listdir(self.tae.root_fd):
                    if name.startswith(META_NAMES):
                        os.unlink(name, dir_fd=self.tae.root_fd)
                hakeeper = self._enter("hakeeper", NO_HK_DATA)
                try:
                    os.rename("hk_data", "hk_data", src_dir_fd=hakeeper, dst_dir_fd=local)
                finally:
                    os.close(hakeeper)
                os.close(open_file_at(local, "hk_data", f"{tree_path}/local/hk_data", self.hk_data))
            finally:
                os.close(local)
            for item in staged.files:  # the parents of files taken from the base must be directories of the tree
                if not item.need_copy and "/" in item.path:
                    fd, owned = self.tae.open_dir(item.path.rpartition("/")[0], create=True)
                    if owned:
                        os.close(fd)
            return tree_path, identity(os.fstat(tree))
        finally:
            os.close(tree)

    def close(self) -> None:
        self.tae.close()
        os.close(self.fd)

    def __enter__(self) -> StagedCopy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_staged(staging: Path) -> StagedBackup:
    """The staged copy's own description, from its DISK-framed tae_sum and tae_list."""
    with StagedCopy(staging) as copy:
        return copy.parse()


def parse_staged_text(summary_text: str, list_text: str) -> StagedBackup:
    """tae_sum (`time,size,backupTS,type`) and tae_list (`path,size,sha256,needCopy,ts` lines), files
    sorted by path; both are input from the server's staging area, checked before use."""
    backup_ts, kind = parse_tae_sum(summary_text)
    files = [StagedFile(*row) for row in _tae_list_rows(list_text.splitlines())]
    if not files:
        raise MobackupError("MatrixOne's backup list tae_list is empty")
    if len({f.path for f in files}) != len(files):
        raise MobackupError("MatrixOne's backup list tae_list names a file twice")
    return StagedBackup(backup_ts, kind, tuple(sorted(files, key=lambda f: f.path)))


def parse_tae_sum(summary_text: str) -> tuple[str, str]:
    """(BACKUPTS, kind) from tae_sum (`time,size,backupTS,type`)."""
    summary = summary_text.strip().split(",")
    if len(summary) < 3 or not _is_ts(summary[2]):
        raise MobackupError(f"MatrixOne's backup summary tae_sum is malformed: {summary_text.strip()[:200]!r}")
    return summary[2], (summary[3] if len(summary) > 3 and summary[3] else "full")


def _tae_list_rows(lines: Iterable[str]) -> Iterator[tuple[str, int, str, bool]]:
    """(path, content size, SHA-256, needCopy) of each tae_list line (`path,size,sha256,needCopy,ts`)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) < 4 or not _COUNT.fullmatch(fields[1]) or fields[3] not in ("true", "false"):
            raise MobackupError(f"MatrixOne's backup list tae_list line {number} is malformed: {line[:200]!r}")
        yield _safe_rel(fields[0]), int(fields[1]), fields[2].lower(), fields[3] == "true"


def _lines(pieces: Iterable[bytes]) -> Iterator[str]:
    """The lines of a UTF-8 text given in pieces, as str.splitlines() cuts the whole text."""
    rest = b""
    for piece in pieces:
        lines = (rest + piece).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield from line.decode().splitlines() or [""]
    if rest:
        yield from rest.decode().splitlines()


# ASCII digits only, and few of them: str.isdigit() takes "²" (which int() refuses) and int() refuses
# more than 4300 digits; no true size or timestamp part is longer than 20.
_COUNT = re.compile(r"[0-9]{1,20}")


def _is_ts(value: str) -> bool:
    physical, _, logical = value.partition("-")
    return bool(_COUNT.fullmatch(physical) and _COUNT.fullmatch(logical))


def _safe_rel(path: str) -> str:
    """A tae_list path is input from the server's staging area: relative, no `..`."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise MobackupError(f"MatrixOne's backup list tae_list names an unsafe path {path!r}")
    return path


def verify_staged(staging: Path, staged: StagedBackup, workers: int = 4) -> int:
    """Every staged file tae_list names is present with its size and SHA-256. Returns the staged
    bytes."""
    with StagedCopy(staging) as copy:
        staged_bytes = copy.check_present(staged)
        check_digests(copy.tae, staged, workers)
    return staged_bytes


def check_present(tae: DirectoryFds, staged: StagedBackup) -> int:
    """Every staged file tae_list names is there, a regular file (of its framed size where it has no
    SHA-256). Returns their bytes. Cheap: a stat per file."""
    total = 0
    for item in staged.files:
        if not item.need_copy:
            continue
        try:
            st = tae.lstat(item.path)
        except FileNotFoundError:
            raise MobackupError(f"MatrixOne's backup is incomplete: {item.path} is listed but was not written "
                                "(an object that vanished during BACKUP); the backup was not stored") from None
        if not stat.S_ISREG(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise NotFollowed(f"MatrixOne's backup file {tae.shown}/{item.path} is {what}: refusing")
        framed = st.st_size
        if not item.sha256 and framed != disk_framed_size(item.size):
            raise MobackupError(f"MatrixOne's backup file {item.path} has {framed} bytes, "
                                f"expected {disk_framed_size(item.size)} for {item.size} content bytes")
        total += framed
    return total


def check_digests(tae: DirectoryFds, staged: StagedBackup | Iterable[StagedFile], workers: int = 4) -> None:
    """The content of every staged file (of `staged`, or the files given) has the SHA-256 tae_list
    gives (`workers` files at a time). The SHA-256 decides, not the size: for some objects (seen with
    tombstones under frequent checkpoints) tae_list's size is smaller than the file's content, while
    its SHA-256 is of it all."""

    def check(item: StagedFile) -> None:
        digest = hashlib.sha256()
        with open(tae.open_file(item.path), "rb") as framed:
            for part in disk_content(framed):
                digest.update(part)
        if digest.hexdigest() != item.sha256:
            raise MobackupError(f"MatrixOne's backup file {item.path} does not match its SHA-256 in tae_list")

    files = staged.files if isinstance(staged, StagedBackup) else staged
    with BoundedWorkers(workers, "mobackup-verify") as pool:  # bounded: the list may be millions long
        for item in files:
            if pool.failed:
                break
            if item.need_copy and item.sha256:
                pool.submit(check, item)


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
    fd = os.open(locking, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(locking, lock_path)
        yield staging
    finally:
        remove_tree(staging, ignore_errors=True, workers=4)  # on the command's path: 1 s per 300 MB one by one
        locking.unlink(missing_ok=True)
        if not os.path.lexists(staging):  # else its free lock lets the next run try again at once
            lock_path.unlink(missing_ok=True)
        os.close(fd)


def _last_change(directory: Path) -> float:
    """The newest modification time of a directory and of its entries (MatrixOne adds its files to
    `tae/`, `ckp/` ... as it stages, which changes those directories' times)."""
    newest = directory.lstat().st_mtime
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


LOCK_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def remove_stale_staging(data_dir: Path) -> list[str]:
    """Removes staging directories whose run is gone: its lock file is not locked, or there is none
    and the directory is older than ORPHAN_STAGING_SECONDS. A lock file that cannot be opened or
    locked (another user's, a file system without flock) says nothing: the directory stays."""
    removed: list[str] = []
    now = time.time()
    for entry in os.scandir(data_dir):
        if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        lock_path = data_dir / f"{entry.name}.lock"
        try:
            # flock needs no write access; a planted link or FIFO must neither redirect nor block it.
            fd = os.open(lock_path, LOCK_OPEN_FLAGS)
        except FileNotFoundError:
            try:
                if now - _last_change(Path(entry.path)) < ORPHAN_STAGING_SECONDS:
                    continue
            except FileNotFoundError:
                continue  # removed meanwhile
            fd = -1
        except OSError:
            continue
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: a live run
            os.close(fd)
            continue
        try:
            remove_tree(Path(entry.path), ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(entry.name)
                if fd >= 0:  # kept while the directory is there, for the next run to retry
                    lock_path.unlink(missing_ok=True)
        finally:
            if fd >= 0:
                os.close(fd)
    for lock in data_dir.glob(f"{STAGING_PREFIX}*.lock"):  # orphaned lock files
        if not (data_dir / lock.name[:-5]).exists():
            with contextlib.suppress(OSError):
                fd = os.open(lock, LOCK_OPEN_FLAGS)
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
    extra: dict[str, Any] | None = None,
    pitr_history: bool | None = None,
) -> BackupSummary:
    """Back up a running MatrixOne: BACKUP into a staging directory on its data volume `data_dir`
    (at `server_data_dir` as the server sees it; default the same path), check, ingest, remove.
    `extra`: more to record in the summary (the PITR windows, engine/pitr.py). `pitr_history`: also
    take the live objects a PITR restore needs that BACKUP left out (engine/pitr_history.py); by
    default when `extra["pitr"]` lists a PITR window. A BACKUP that fails in a way that may pass on
    its own (mosql.TRANSIENT_BACKUP_REASONS) is tried again in a fresh staging directory, twice at
    most; the summary's `backup_retries` lists such failures."""
    from .backup import default_source
    from .mosql import with_backup_retries

    data_dir = Path(data_dir).absolute()
    if not data_dir.is_dir():
        raise MobackupError(f"{data_dir}: not a directory (the data volume MatrixOne runs on)")
    source = source or default_source(data_dir)
    server_dir = (server_data_dir or str(data_dir)).rstrip("/")
    if not server_dir.startswith("/"):
        raise MobackupError(f"the server-side data directory must be absolute, not {server_dir!r}")
    base = choose_online_base(repo, source, backup_type, base_id)
    started, clock = utc_now(), time.monotonic()
    # The shared lock from the first stored blob on (files are stored while BACKUP runs): a prune
    # meanwhile would take them for unreferenced.
    with repo.lock(exclusive=False, purpose=f"online backup of {source}", wait_seconds=60):
        return with_backup_retries(lambda retries: _attempt_online_backup(
            repo, data_dir, session, server_dir=server_dir, source=source, base=base, began=(started, clock),
            progress=progress, extra={**(extra or {}), **({"backup_retries": retries} if retries else {})},
            pitr_history=pitr_history))


def _attempt_online_backup(repo: Repository, data_dir: Path, session: Any, *, server_dir: str, source: str,
                           base: BackupSummary | None, began: tuple[str, float], progress: Progress | None,
                           extra: dict[str, Any], pitr_history: bool | None) -> BackupSummary:
    """One attempt of run_online_backup, in a staging directory of its own, which it always removes."""
    from .backup import run_backup
    from .pitr import has_windows, with_history

    started, clock = began
    with (staging_area(data_dir) as staging, tempfile.TemporaryDirectory(prefix="mobackup-online-") as scratch,
          contextlib.ExitStack() as stack):
        server_staging = f"{server_dir}/{staging.name}"
        store = ChunkStore(repo)
        index = StagedIndex(Path(scratch))  # what is known per staged file, on disk
        with contextlib.closing(index), StagedTaker(str(staging), store, repo.parallelism, index) as taker:
            statement_seconds = _backup_while_taking(session, server_staging, repo.parallelism,
                                                     base.backup_ts if base else None, taker)
            backup_seconds = time.monotonic() - clock  # and the files written last, stored
            returned_ns = time.time_ns()
            try:
                copy = StagedCopy(staging)
            except FileNotFoundError:
                raise MobackupError(f"MatrixOne wrote its backup to {server_staging}, but {staging} does not exist: "
                                    "is --data-dir the volume MatrixOne runs on, and --server-data-dir its path "
                                    "there?") from None
            with copy:
                staged = copy.parse(index)
                # What a drill checks, read by SQL at BACKUPTS while the rest goes on here; the
                # session is this thread's no more (BACKUP returned), and the read ends before publishing.
                catalog: dict[str, Any] = {}
                reading = ThreadPoolExecutor(1, thread_name_prefix="mobackup-catalog")
                stack.callback(reading.shutdown)  # waits: the session must not close under the read
                catalog_read = reading.submit(lambda: catalog.update(_catalog(session, staged.backup_ts)))
                staged_bytes = copy.check_present(staged)
                tree, tree_ident = copy.arrange(staged)
                taken_files = taker.confirm_taken(copy.tae.lstat)
                mismatched = index.mismatched()
                if mismatched is not None:
                    raise MobackupError(f"MatrixOne's backup file {mismatched} does not match its SHA-256 in tae_list")
                # The files not taken (written last, or changed since) are checked by reading them
                # again, beside the ingest (both read the same, cached, files); the backup is
                # published only after they all passed.
                inherit = _Reused(index)
                if len(inherit) and base is None:
                    raise MobackupError("MatrixOne staged an incremental backup without a base")
                extra = dict(extra)
                base_index = None
                if pitr_history if pitr_history is not None else has_windows(extra.get("pitr")):
                    from .pitr_history import add_history

                    if base is not None:  # loaded once: for the history and for run_backup
                        base_index = stack.enter_context(_loaded_index(repo, base))
                    history = add_history(data_dir, copy.tae, (f.path for f in staged.files), returned_ns,
                                          base_index)
                    inherit.also = history.inherited
                    extra["pitr"] = with_history(extra.get("pitr"), history.record())
                # The checks' own descriptors: they may outlive this run's when it fails first.
                shared = DirectoryFds(os.dup(copy.tae.root_fd), copy.tae.shown, owned_links_only=True)

                def check_shared() -> None:
                    reader = index.reader()  # this thread's own connection
                    try:
                        with shared:
                            check_digests(shared, (StagedFile(*row) for row in reader.unchecked()), repo.parallelism)
                    finally:
                        reader.close()

                verifier = ThreadPoolExecutor(1, thread_name_prefix="mobackup-verify")
                digests = verifier.submit(check_shared)
                try:
                    return run_backup(
                        repo, tree, source=source, backup_type="incremental" if base else "full",
                        base_id=base.id if base else None, progress=progress,
                        rules=PathRules(excludes=(), volatile=()), mo_version=session.version,
                        backup_ts=staged.backup_ts, backup_ts_source="matrixone-backup", inherit=inherit,
                        data_dir_label=str(data_dir), began=(started, clock),
                        extra={**extra, "kind": "online", "staged_bytes": staged_bytes,
                               "staged_files": index.count("WHERE need_copy"),
                               "taken_while_staging": taker.early, "taken_files": taken_files,
                               "matrixone_backup_seconds": round(backup_seconds, 3),
                               "backup_statement_seconds": round(statement_seconds, 3), "catalog": catalog},
                        before_publish=lambda: (digests.result(), catalog_read.result()),
                        root_ident=tree_ident, store=store,
                        taken=_Taken(index), base_index=base_index,
                    )
                finally:
                    verifier.shutdown(wait=False, cancel_futures=True)
                    if digests.cancelled():
                        shared.close()
                    # A check still running keeps its own connection to the index (its file stays
                    # readable once the scratch directory is removed).


class _Reused:
    """The paths an online incremental takes from its base (`shared/<tae path>` with needCopy false,
    and `also`: the PITR history's), looked up on disk."""

    def __init__(self, index: StagedIndex) -> None:
        self.index = index
        self.also: frozenset[str] = frozenset()
        self.count = index.count("WHERE NOT need_copy")

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        if path in self.also:
            return True
        return path.startswith("shared/") and self.index.is_reused(path[len("shared/"):])

    def __len__(self) -> int:
        return self.count + len(self.also)  # disjoint: the history takes files not staged

    def __iter__(self) -> Iterator[str]:
        yield from self.also
        for path, *_ in self.index.staged("WHERE NOT need_copy"):
            yield f"shared/{path}"


class _Taken:
    """The files stored while BACKUP ran, still as taken, by their path in the tree (`shared/...`)."""

    def __init__(self, index: StagedIndex) -> None:
        self.index = index

    def get(self, path: str) -> TakenFile | None:
        return self.index.get_taken(path[len("shared/"):]) if path.startswith("shared/") else None


@contextlib.contextmanager
def _loaded_index(repo: Repository, base: BackupSummary) -> Iterator[FileIndex]:
    """The base backup's file list in a FileIndex of a scratch directory, removed afterwards."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mobackup-base-") as scratch:
        index = FileIndex(Path(scratch) / "base.sqlite")
        try:
            index.load(repo.entries(base))
            yield index
        finally:
            index.close()


def _backup_while_taking(session: Any, path: str, parallelism: int, since_ts: str | None,
                         taker: StagedTaker) -> float:
    """MatrixOne's BACKUP into `path`, its files stored by `taker` as they appear; returns how long
    the statement itself ran. BACKUP runs to its end whatever happens here (a statement cannot be
    taken back), and its failure comes first."""
    done = threading.Event()
    failure: list[BaseException] = []
    statement = [0.0]

    def backup() -> None:
        clock = time.monotonic()
        try:
            session.backup_to_directory(path, parallelism, since_ts)
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)
        finally:
            statement[0] = time.monotonic() - clock
            done.set()

    thread = threading.Thread(target=backup, name="mobackup-matrixone-backup", daemon=True)
    thread.start()
    try:
        taker.run_until(done, lambda: not failure)
    finally:
        thread.join()
        if failure:
            raise failure[0]
    return statement[0]


def _catalog(session: Any, backup_ts: str) -> dict[str, Any]:
    """What a restore drill checks (engine/catalog.py), as of BACKUPTS; never fails the backup."""
    from .catalog import read_catalog

    connection = getattr(session, "connection", None)
    if connection is None:
        return {"error": "no SQL session to read the catalog from"}
    return read_catalog(connection, backup_ts)
