"""Refusals before anything is deleted: a restore, a reset or a staging clean-up whose place is the
repository, contains it or lies in it, a system directory, or a whole bucket.

Directories are compared by what they are, not by how they are named: one volume mounted twice
(a PVC that is both the storage's and the target's, a bind mount, a symbolic link) gives one
directory two paths, so a string comparison says "different" and a forced restore then replaces the
repository. Here (st_dev, st_ino) of each directory and of each of its ancestors decide, and the
mount table too: a volume's subdirectory mounted on its own (a subPath) has no ancestor to see.

S3 places are compared by bucket and key prefix, whatever the endpoint: two spellings of one
endpoint (a Service's short and full DNS names, an IP) cannot be told apart, and bucket names are
global on AWS. Two services holding equally named buckets with overlapping prefixes are refused
too; another prefix is the way out."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ClusterRunningError, MobackupError
from .storage import LocalBackend

if TYPE_CHECKING:
    from .repository import Repository

# Never a restore target nor a directory to empty: either replaces the whole content.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
})
REPOSITORY_MARK = "mobackup.json"  # repository.CONFIG_KEY: every repository's root holds it
MOUNTINFO = "/proc/self/mountinfo"

Ident = tuple[int, int]


# ---- directories ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Mount:
    device: str  # major:minor
    root: str  # the directory of the file system mounted here
    point: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[_Mount]:
    try:
        with open(MOUNTINFO) as table:
            rows = [line.split(" ") for line in table]
    except OSError:
        return []
    return [_Mount(r[2], _unescape(r[3]), _unescape(r[4])) for r in rows if len(r) > 4]


def _within(inner: str, outer: str) -> bool:
    """`inner` is `outer` or below it (both absolute, normalised)."""
    return inner == outer or outer == "/" or inner.startswith(outer + "/")


def _fs_position(real: Path, mounts: list[_Mount]) -> tuple[str, str] | None:
    """(device, path inside its file system) of `real`, from the mount it lies on (the last of the
    longest: a later mount on the same point hides the earlier)."""
    best: _Mount | None = None
    for mount in mounts:
        if _within(str(real), mount.point) and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    if best is None:
        return None
    rest, base = str(real)[len(best.point):].strip("/"), best.root.rstrip("/")
    return best.device, f"{base}/{rest}" if rest else base or "/"


def _ident(path: Path) -> Ident | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _lineage(real: Path) -> set[Ident]:
    """(st_dev, st_ino) of `real` (when it exists) and of each of its ancestors."""
    return {i for p in (real, *real.parents) if (i := _ident(p)) is not None}


def paths_overlap(a: Path, b: Path) -> bool:
    """Whether real paths `a` and `b` are one directory, or one lies inside the other, however they
    are reached. A path that does not exist yet is placed by its nearest existing ancestor."""
    if _within(str(a), str(b)) or _within(str(b), str(a)):
        return True
    ia, ib = _ident(a), _ident(b)
    if (ia is not None and ia in _lineage(b)) or (ib is not None and ib in _lineage(a)):
        return True
    mounts = _mounts()
    pa, pb = _fs_position(a, mounts), _fs_position(b, mounts)
    return (pa is not None and pb is not None and pa[0] == pb[0]
            and (_within(pa[1], pb[1]) or _within(pb[1], pa[1])))


def repository_root(repo: Repository) -> Path | None:
    """The real path of a directory repository's root; None for S3."""
    backend = repo.backend
    return Path(os.path.realpath(backend.root)) if isinstance(backend, LocalBackend) else None


def _is_mount_root(real: Path, mounts: list[_Mount]) -> bool:
    return os.path.ismount(real) or any(m.point == str(real) for m in mounts)


def _marked(directory: Path) -> bool:
    return os.path.isfile(directory / REPOSITORY_MARK)


def _holds_repository(real: Path) -> Path | None:
    """A repository at or below `real` (its root), symbolic links never followed; no recursion,
    whatever the depth."""
    stack = [real]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.name == REPOSITORY_MARK and entry.is_file(follow_symlinks=False):
                        return directory
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None


def refuse_repository_below(real: Path, shown: Path, action: str) -> None:
    """Refuse to `action` (and so replace all of) `real` when a repository lies anywhere below it."""
    other = _holds_repository(real)
    if other is not None:
        raise MobackupError(f"{shown}: refusing to {action} {real}: {other} holds a mobackup repository, "
                            "which it would destroy")


def checked_local_dir(path: Path, repo: Repository, action: str, *, emptied: bool = False) -> Path:
    """The real path of `path`, a directory that `action` (e.g. "restore into") writes into or
    replaces; a symbolic link is resolved up front, so that what is checked is what is used.
    Refused: a system directory; one that is the repository of `repo`, lies in it or contains it;
    one that is or lies in another repository. With `emptied` (all it holds is removed), also the
    root of a mount (a whole file system, or a whole volume) and one holding a repository anywhere
    below."""
    real = Path(os.path.realpath(path))
    if str(real) in SYSTEM_DIRS:
        raise MobackupError(f"{path}: refusing to {action} the system directory {real}")
    root = repository_root(repo)
    if root is not None and paths_overlap(real, root):
        raise MobackupError(f"{path}: refusing to {action} a directory that is, contains or lies inside the "
                            f"repository {root}: it would destroy the repository")
    other = next((p for p in (real, *real.parents) if _marked(p)), None)
    if other is not None:
        raise MobackupError(f"{path}: refusing to {action} {real}: {other} holds a mobackup repository, "
                            "which it would destroy")
    if emptied:
        refuse_repository_below(real, path, action)
    if emptied and real.exists() and _is_mount_root(real, _mounts()):
        raise MobackupError(f"{path}: refusing to {action} {real}, the root of a mounted file system: all of it "
                            "would be removed; name the log service's own directory inside it")
    return real


# ---- S3 places --------------------------------------------------------------------------------------

def s3_contains(outer: str, inner: str) -> bool:
    """Key prefix `outer` holds every key of `inner` (both without leading or trailing '/'; the
    empty prefix is the whole bucket)."""
    return not outer or inner == outer or inner.startswith(outer + "/")


def s3_overlap(bucket_a: str, prefix_a: str, bucket_b: str, prefix_b: str) -> bool:
    """Whether two places of S3 share keys: one bucket, one prefix holding the other."""
    return bucket_a == bucket_b and (s3_contains(prefix_a, prefix_b) or s3_contains(prefix_b, prefix_a))


def _url(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def _repository_s3(repo: Repository) -> tuple[str, str] | None:
    """(bucket, prefix) of an S3 repository; None for a directory."""
    backend = repo.backend
    bucket = getattr(backend, "bucket", None)
    return (str(bucket), str(getattr(backend, "prefix", ""))) if bucket else None


def check_s3_restore(repo: Repository, target: tuple[str, str], hk_data: tuple[str, str] | None,
                     target_flag: str = "--target-s3", hk_flag: str = "--hk-data-s3") -> None:
    """A restore into S3 prefix `target` (bucket, prefix) and the object `hk_data`: refused when the
    prefix is a whole bucket (with overwrite, everything else there is removed), or either of them
    shares keys with the repository."""
    bucket, prefix = target
    if not prefix:
        raise MobackupError(f"{target_flag} {_url(bucket, prefix)} is a whole bucket: refusing to restore into it "
                            "(with --overwrite every other object there would be removed); give the cluster's key "
                            "prefix")
    where = _repository_s3(repo)
    if where is not None and s3_overlap(bucket, prefix, *where):
        raise MobackupError(f"{target_flag} {_url(bucket, prefix)} is, contains or lies inside the repository "
                            f"{_url(*where)}: refusing to restore over it")
    if hk_data is None:
        return
    if not hk_data[1]:
        raise MobackupError(f"{hk_flag} {_url(*hk_data)} names no object (s3://BUCKET/FOLDER/hk_data)")
    if where is not None and s3_overlap(*hk_data, *where):
        raise MobackupError(f"{hk_flag} {_url(*hk_data)} lies in the repository {_url(*where)}: refusing to "
                            "write over it")


def check_staging_root(repo: Repository, staging: tuple[str, str], flag: str = "--staging") -> None:
    """Stale `mobackup-staging-*` prefixes under a staging root are removed: a root that contains
    the repository could name it."""
    where = _repository_s3(repo)
    if where is not None and where[0] == staging[0] and s3_contains(staging[1], where[1]):
        raise MobackupError(f"{flag} {_url(*staging)} contains the repository {_url(*where)}: refusing to stage "
                            "there (stale staging prefixes under it are removed); stage beside the repository")


def check_shared_prefix(repo: Repository, shared: tuple[str, str], staging: tuple[str, str],
                        flag: str = "--shared-s3") -> None:
    """A cluster's SHARED prefix is read whole into a backup (its PITR history): a whole bucket, or one
    that shares keys with the repository or the staging root, is refused."""
    if not shared[1]:
        raise MobackupError(f"{flag} {_url(*shared)} is a whole bucket: give the cluster's SHARED key prefix")
    for what, place in (("the repository", _repository_s3(repo)), ("the staging root", staging)):
        if place is not None and s3_overlap(*shared, *place):
            raise MobackupError(f"{flag} {_url(*shared)} is, contains or lies inside {what} {_url(*place)}: it must "
                                "be the cluster's SHARED key prefix alone")


def refuse_if_listening(where: str) -> None:
    """A restore into a running cluster's prefix would mix objects under a live TN: refuse while its
    SQL port accepts connections (no credentials needed for that). The CLI's and the Job agent's
    `--check-stopped`."""
    import socket

    host, _, port = where.rpartition(":") if where.count(":") == 1 else (where, "", "6001")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except ValueError:
        raise MobackupError(f"--check-stopped {where!r}: not HOST[:PORT]") from None
    except OSError:
        return  # nothing answers: stopped (or unreachable from here)
    raise ClusterRunningError(f"MatrixOne answers at {host}:{port}: stop the cluster (every CN, TN and log "
                              "service) before restoring into its bucket prefix")
