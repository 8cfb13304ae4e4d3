"""Storing MatrixOne's staged files while its BACKUP still writes the others (engine/online.py).

MatrixOne (seen on v1.3) writes each backup file as `.tmp.<n>` in the staging root and renames it to
its final name once written; a file under its final name is not written again. So every file that
appears under `tae/` is whole: it is stored at once (the repository's chunks, as the walk would), and
the SHA-256 of its content (the DISK frames stripped) is computed from the very bytes stored (one
read). When BACKUP has returned and tae_list is there, each taken file must still be the file taken
(same inode, size, modification and change times) and its SHA-256 the one tae_list gives; a file that
changed after it was taken is read again by the ordinary ingest, whose check then fails the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator

from .backup import ChunkStore, TakenFile
from .errors import MobackupError
from .online_index import StagedIndex
from .safefs import DirectoryFds, identity, open_dir_at
from .workers import BoundedWorkers

DISK_BLOCK = 2048
DISK_CRC = 4
# Blocks joined per SHA-256 update: 1 MiB, so that hashlib releases the GIL and the copy stays small.
HASH_GROUP = 512
# Staged files that describe the backup itself (written last) and are not part of the restored tree.
META_NAMES = ("tae_list", "tae_sum")


class DiskContentSha256:
    """SHA-256 of a DISK-framed file's content (each 2048-byte block: a 4-byte CRC, then content), fed
    the framed bytes in pieces of any size."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.offset = 0  # position in the current block

    def update(self, view: memoryview) -> None:
        parts: list[memoryview] = []
        i, n = 0, len(view)
        if self.offset:  # the rest of a block begun in the previous piece
            if self.offset < DISK_CRC:
                skip = min(DISK_CRC - self.offset, n)
                i, self.offset = skip, self.offset + skip
            if i < n and self.offset >= DISK_CRC:
                take = min(DISK_BLOCK - self.offset, n - i)
                parts.append(view[i:i + take])
                i, self.offset = i + take, (self.offset + take) % DISK_BLOCK
        whole = i + (n - i) // DISK_BLOCK * DISK_BLOCK
        for group in range(i, whole, DISK_BLOCK * HASH_GROUP):
            end = min(whole, group + DISK_BLOCK * HASH_GROUP)
            self.sha.update(b"".join([*parts, *(view[s + DISK_CRC:s + DISK_BLOCK]
                                                for s in range(group, end, DISK_BLOCK))]))
            parts = []
        if whole < n:  # a block that goes on in the next piece
            if n - whole > DISK_CRC:
                parts.append(view[whole + DISK_CRC:n])
            self.offset = n - whole
        if parts:
            self.sha.update(b"".join(parts))

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class SeenNames:
    """A Bloom filter of names (2 bits of 2**27 per name, from the name's hash()): memory stays at
    16 MB from a thousand names to millions (a set of their hashes took ~60 bytes a name), touched
    only as names arrive. It may answer "seen" for a new name: at a million names, about 2 in 10,000."""

    BITS = 1 << 27

    def __init__(self) -> None:
        self.bits = bytearray(self.BITS >> 3)

    def _positions(self, name: str) -> tuple[int, int]:
        h = hash(name) & 0xFFFFFFFFFFFFFFFF
        return h & (self.BITS - 1), (h >> 32) & (self.BITS - 1)

    def has(self, name: str) -> bool:
        a, b = self._positions(name)
        return bool(self.bits[a >> 3] & (1 << (a & 7))) and bool(self.bits[b >> 3] & (1 << (b & 7)))

    def add(self, name: str) -> None:
        for position in self._positions(name):
            self.bits[position >> 3] |= 1 << (position & 7)


def _names(fd: int) -> Iterator[str]:
    with os.scandir(fd) as entries:
        for entry in entries:
            yield entry.name


class StagedTaker:
    """Polls `staging/tae` while BACKUP runs and stores each new file there (`workers` at a time).
    A file that cannot be taken (it changed while read, vanished, is a link) is simply not taken: the
    ordinary ingest meets it later and says what is wrong. Use as a context manager.

    What is taken goes to `index` (on disk). Names already submitted are remembered in a fixed-size
    filter (SeenNames: 16 MB whatever the count); a name it takes for seen when it is not is left
    untaken, so the ingest reads and checks that file (slower, never wrong)."""

    def __init__(self, staging: str, store: ChunkStore, workers: int, index: StagedIndex) -> None:
        self.staging = staging
        self.store = store
        self.index = index
        self.tae: DirectoryFds | None = None
        self.seen = SeenNames()
        self.dirs: list[str] = [""]  # directories under tae/ to list
        self.early = 0  # files submitted while BACKUP still ran
        self.workers = BoundedWorkers(workers, "mobackup-take")

    def _open(self) -> bool:
        if self.tae is None:
            try:
                root = open_dir_at(None, self.staging, self.staging)
            except FileNotFoundError:
                return False
            try:
                tae = open_dir_at(root, "tae", f"{self.staging}/tae")
            except FileNotFoundError:
                return False
            finally:
                os.close(root)
            self.tae = DirectoryFds(tae, f"{self.staging}/tae", owned_links_only=True)
        return True

    def scan(self) -> int:
        """Submits every file that appeared since the last scan; returns how many."""
        if not self._open():
            return 0
        assert self.tae is not None
        found = 0
        for directory in list(self.dirs):
            try:
                fd, owned = self.tae.open_dir(directory)
            except (OSError, MobackupError):
                continue
            try:
                for name in _names(fd):  # streamed: a listing may hold millions of names
                    rel = f"{directory}/{name}" if directory else name
                    if self.seen.has(rel) or name.startswith(".") or (not directory and name.startswith(META_NAMES)):
                        continue
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    self.seen.add(rel)
                    if stat.S_ISDIR(st.st_mode):
                        self.dirs.append(rel)
                    elif stat.S_ISREG(st.st_mode):
                        self.workers.submit(self._take, rel)
                        found += 1
            finally:
                if owned:
                    os.close(fd)
        return found

    def _take(self, rel: str) -> None:
        assert self.tae is not None
        try:
            fd = self.tae.open_file(rel)
        except (OSError, MobackupError):
            return
        with open(fd, "rb", buffering=0) as source:
            before = os.fstat(source.fileno())
            sha = DiskContentSha256()
            chunks, done = self.store.store(source, before.st_size, sha.update)
            after = os.fstat(source.fileno())
        if done != before.st_size or (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                before.st_size, before.st_mtime_ns, before.st_ctime_ns):
            return  # written while read: the ingest reads it again
        file = TakenFile(identity(before), done, before.st_mtime_ns, tuple(chunks))
        self.index.add_taken(rel, file, before.st_ctime_ns, sha.hexdigest())

    def run_until(self, done: threading.Event, take_rest: Callable[[], bool], interval: float = 0.02) -> None:
        """Scans until `done` is set, then (if `take_rest()`: BACKUP succeeded) takes what is left,
        and waits until all is stored. What BACKUP wrote last is taken too: one read that stores and
        hashes it, where the ordinary ingest would read it twice (to store, and for the check)."""
        wait = interval
        while not done.wait(wait):
            clock = time.monotonic()
            self.early += self.scan()
            # A listing of millions of names takes a while: scan at most a third of the time.
            wait = max(interval, 2 * (time.monotonic() - clock))
        if take_rest():
            self.scan()
        self.finish()

    def finish(self) -> None:
        self.workers.__exit__(None, None, None)
        self.index.flush()

    def confirm_taken(self, lstat: Callable[[str], os.stat_result]) -> int:
        """Marks in the index the taken files that are still what was taken (`lstat` of a path under
        tae/); returns how many."""
        def still() -> Iterator[str]:
            for rel, ident, size, mtime_ns, ctime_ns in self.index.taken_records():
                with contextlib.suppress(OSError):
                    st = lstat(rel)
                    if (stat.S_ISREG(st.st_mode) and identity(st) == ident and st.st_size == size
                            and st.st_mtime_ns == mtime_ns and st.st_ctime_ns == ctime_ns):
                        yield rel

        return self.index.confirm(still())

    def close(self) -> None:
        self.workers.shutdown(cancel=True)
        if self.tae is not None:
            self.tae.close()

    def __enter__(self) -> StagedTaker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
