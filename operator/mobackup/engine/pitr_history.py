"""The PITR history an online backup adds to MatrixOne's BACKUP output.

MatrixOne's BACKUP copies what the state at BACKUPTS needs: every checkpoint and the objects the
newest checkpoints name. `RESTORE CLUSTER FROM PITR` to an earlier instant also reads objects that
only older checkpoints name; MatrixOne keeps them on its volume for the PITR's range, and a restore
without them fails (`table "mo_account" does not exist`, seen on v1.3.0-dev and v2.2.2). With them
added the restore is exact (benchmarks/pitr_online_probe.py, tests/matrixone/test_pitr_incident.py).

So an online backup of a server with a cluster PITR also takes every regular file of the live
`shared/` that BACKUP's list lacks and that was last written before BACKUP returned: a superset of
the history (it may hold garbage the cleaner has not removed yet, never less than the window needs).
- Objects are write-once: a file the cleaner deletes meanwhile was garbage (the PITR keeps what its
  range needs) and is left out; a file that grows or is rewritten while it is copied was written
  after BACKUPTS, and is left out too.
- A file of the base backup with the same path, size and mtime is taken from the base, not read.
- The live directory is the server's, writable by whoever runs it: it is walked and read relative to
  directory descriptors without following links, and a hard link to another user's file is refused
  (safefs.DirectoryFds with owned_links_only), as for any source tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MobackupError
from .index import FileIndex
from .layout import PathRules
from .model import iso, utc_now
from .safefs import DirectoryFds, create_file, open_dir_at
from .storage import kernel_copy
from .walk import walk

LIVE = "shared"  # MatrixOne's object directory on its volume, the staged copy's tae/ (tree/shared/)


@dataclass
class History:
    """What was added: files copied into the tree, and paths (below the tree) taken from the base."""

    copied_files: int = 0
    copied_bytes: int = 0
    inherited: frozenset[str] = frozenset()
    inherited_bytes: int = 0
    left_out: int = 0  # vanished (garbage) or written after BACKUP returned
    taken_at: str = ""  # when the walk ended: the window is counted back from then (engine/pitr.py)

    def record(self) -> dict[str, Any]:
        return {"files": self.copied_files + len(self.inherited), "bytes": self.copied_bytes + self.inherited_bytes,
                "copied_files": self.copied_files, "from_base_files": len(self.inherited),
                "left_out": self.left_out, "taken_at": self.taken_at}


def add_history(data_dir: Path, tree_shared: DirectoryFds, staged_paths: Iterable[str], cutoff_ns: int,
                base: FileIndex | None = None) -> History:
    """Copy into `tree_shared` (the arranged BACKUP output) each file of `data_dir/shared` that is not
    in `staged_paths` and was last written at or before `cutoff_ns` (when BACKUP returned); files the
    base backup holds unchanged (`base`: its file list, loaded once for this and for run_backup) are
    returned in `inherited` (as `shared/<path>`)."""
    staged = frozenset(staged_paths)
    history = History()
    inherited: set[str] = set()
    try:
        root = open_dir_at(None, str(Path(data_dir) / LIVE), f"{data_dir}/{LIVE}")
    except FileNotFoundError:
        raise MobackupError(f"{data_dir}/{LIVE} does not exist: MatrixOne's objects are not on this volume, "
                            "so the PITR history cannot be taken") from None
    with DirectoryFds(root, f"{data_dir}/{LIVE}", owned_links_only=True) as live:
        # Everything is volatile: the cleaner removes garbage and directories at any time.
        rules = PathRules(excludes=(), volatile=("*", "**/*"))
        for entry in walk(Path(data_dir) / LIVE, rules, dirs=live):
            if entry.kind != "file" or entry.rel in staged:
                continue
            if entry.mtime_ns > cutoff_ns:
                history.left_out += 1
                continue
            prior = base.get(f"{LIVE}/{entry.rel}") if base else None
            if prior is not None and prior[0] == entry.size and prior[1] == entry.mtime_ns:
                inherited.add(f"{LIVE}/{entry.rel}")
                history.inherited_bytes += entry.size
                continue
            if _copy(live, tree_shared, entry.rel, entry.ident, entry.size, entry.mtime_ns):
                history.copied_files += 1
                history.copied_bytes += entry.size
            else:
                history.left_out += 1
    history.inherited = frozenset(inherited)
    history.taken_at = iso(utc_now())
    return history


def _copy(live: DirectoryFds, tree: DirectoryFds, rel: str, ident: Any, size: int, mtime_ns: int) -> bool:
    """Copy one live file into the tree with its mtime; False (nothing left behind) when it vanished
    or changed meanwhile."""
    try:
        source = live.open_file(rel, ident)
    except FileNotFoundError:
        return False  # deleted by the cleaner: garbage
    try:
        parent, owned, name = tree.parent(rel, create=True)
        try:
            target = create_file(parent, name, 0o644)
            try:
                done = kernel_copy(source, target, 0, size + 1)
                after = os.fstat(source)
                if done != size or after.st_size != size or after.st_mtime_ns != mtime_ns:
                    os.unlink(name, dir_fd=parent)
                    return False  # still being written: newer than BACKUPTS
                os.utime(target, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(target)
        finally:
            if owned:
                os.close(parent)
    finally:
        os.close(source)
    return True
