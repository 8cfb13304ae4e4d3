"""Symbolic links planted, or swapped in, where others can write (issue 18, item 4). The engine often
runs as root; whoever owns the data directory, MatrixOne's staging area, a restore target's parent,
a log service's directory, or part of a directory repository can put a link in any name there, at
any time. Nothing must ever be read, written, moved or re-owned through such a link: each case here
is the attack made deterministic (planted before the run, or swapped in at the worst moment)."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_matrixone import FakeMatrixOne

from mobackup.engine import backup, restore, s3_restore
from mobackup.engine.backup import run_backup
from mobackup.engine.errors import MobackupError, PlantedLinkError, SourceChangedError
from mobackup.engine.online import run_online_backup
from mobackup.engine.online_s3 import disk_frame
from mobackup.engine.prune import collect_garbage
from mobackup.engine.repository import Repository, RepositoryOptions, open_repository
from mobackup.engine.restore import run_restore
from mobackup.engine.storage import LocalBackend

SECRET = b"root-only secret: never in a backup " * 20


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Every entry below `root` (links not followed): mode, owner, group, content or link target."""
    found: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        body = (os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None)
        found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, body)
    return found


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file only root may read, outside every directory the engine is given."""
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)


def _stored(repo: Repository, content: bytes) -> bool:
    return repo.has_blob(repo.codec.digest(content))


def _refusal(call: Callable[[], object]) -> str:
    """The message of the MobackupError `call` raises, '' when it raises none (checked after the
    harm, so that a failure shows what was done through the link)."""
    try:
        call()
    except MobackupError as error:
        return str(error)
    return ""


# ---- cold backup: a name swapped for a link between the walk's lstat and the copy's open ----------------

def _racing_walk(monkeypatch: pytest.MonkeyPatch, rel: str, swap: Callable[[], None]) -> None:
    """The walk, with `swap` run right after it reports `rel` (so after its lstat, before any open)."""
    real_walk = backup.walk

    def walk(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for entry in real_walk(*args, **kwargs):
            if entry.rel == rel:
                swap()
            yield entry

    monkeypatch.setattr(backup, "walk", walk)


def test_a_file_swapped_for_a_link_after_the_walk_is_never_read(tmp_path: Path, secret: Path, repo: Repository,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The data's owner makes a file of the secret's size and mtime (the copy's change checks then see
    nothing), waits for the walk to see it, and swaps in a link to the secret."""
    data = tmp_path / "mo-data"
    (data / "shared").mkdir(parents=True)
    bait = data / "shared" / "object"
    bait.write_bytes(b"x" * len(SECRET))
    os.utime(bait, ns=(secret.stat().st_atime_ns, secret.stat().st_mtime_ns))

    def swap() -> None:
        bait.unlink()
        bait.symlink_to(secret)

    _racing_walk(monkeypatch, "shared/object", swap)
    with pytest.raises(SourceChangedError, match="shared/object was replaced"):
        run_backup(repo, data, source="db")
    assert repo.list_backups() == [] and not _stored(repo, SECRET)


def test_a_directory_swapped_for_a_link_before_it_is_listed_is_never_entered(
        tmp_path: Path, secret: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "mo-data"
    (data / "shared").mkdir(parents=True)
    (data / "shared" / "object").write_bytes(b"o" * 100)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(secret, elsewhere / "object")  # root's directory, holding the secret

    def swap() -> None:
        (data / "shared").rename(tmp_path / "moved-away")
        (data / "shared").symlink_to(elsewhere)

    _racing_walk(monkeypatch, "shared", swap)
    with pytest.raises(SourceChangedError, match="shared was replaced"):
        run_backup(repo, data, source="db")
    assert repo.list_backups() == [] and not _stored(repo, SECRET)


def test_a_volatile_file_swapped_for_a_link_is_left_out_unread(tmp_path: Path, secret: Path, repo: Repository,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`etl/` may change while copied (its size and mtime are not checked): still never through a link."""
    data = tmp_path / "mo-data"
    (data / "etl").mkdir(parents=True)
    (data / "etl" / "log").write_bytes(b"l" * 10)
    (data / "kept").write_bytes(b"k" * 10)

    def swap() -> None:
        (data / "etl" / "log").unlink()
        (data / "etl" / "log").symlink_to(secret)

    _racing_walk(monkeypatch, "etl/log", swap)
    summary = run_backup(repo, data, source="db")
    assert not _stored(repo, SECRET)
    assert {e["path"] for e in repo.entries(summary)} == {"etl", "kept"}


# ---- online backup: links planted in MatrixOne's staging directory ------------------------------------

def _move_and_link(path: Path, away: Path) -> None:
    path.rename(away)
    path.symlink_to(away)


def _plants(outside: Path, secret: Path) -> dict[str, Callable[[Path], None]]:
    """What a hostile server user does to the staged copy once BACKUP wrote it."""
    return {
        "staging": lambda s: _move_and_link(s, outside / "staged"),
        "tree": lambda s: (s / "tree").symlink_to(outside / "victim"),
        "tae": lambda s: _move_and_link(s / "tae", outside / "tae"),
        "hakeeper": lambda s: _move_and_link(s / "hakeeper", outside / "hakeeper"),
        "hk_data": lambda s: ((s / "hakeeper" / "hk_data").unlink(), (s / "hakeeper" / "hk_data").symlink_to(secret)),
        "object": lambda s: ((s / "tae" / "obj").unlink(), (s / "tae" / "obj").symlink_to(secret.with_name("framed"))),
    }


@pytest.mark.parametrize("planted", list(_plants(Path("/x"), Path("/x"))))
def test_links_in_the_staged_copy_are_refused(tmp_path: Path, secret: Path, repo: Repository, planted: str) -> None:
    """Unchecked, each of these made the engine create directories outside (`tree`), unlink files
    outside (`tae`), move a file from outside into the backup (`hakeeper`), back up whatever a link
    named (`staging`, `tree`), or read through it (`hk_data`, objects)."""
    data = tmp_path / "mo-data"
    data.mkdir()
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    (outside / "victim" / "precious").write_bytes(b"precious")
    secret.with_name("framed").write_bytes(disk_frame(SECRET))  # the secret as a staged object would hold it
    before: dict[str, Any] = {}

    def plant(staging: Path) -> None:
        _plants(outside, secret)[planted](staging)
        before.update(_snapshot(outside))

    # The object's listed SHA-256 is the secret's: only where the link leads is then wrong.
    matrixone = FakeMatrixOne({"obj": SECRET if planted == "object" else b"object"}, after=plant)
    refused = _refusal(lambda: run_online_backup(repo, data, matrixone, source="mo"))
    assert matrixone.calls == 1
    assert _snapshot(outside) == before, "changed through the link"
    assert repo.list_backups() == [] and not _stored(repo, SECRET) and not _stored(repo, b"precious")
    assert "symbolic link: refusing" in refused


def test_an_unplanted_online_backup_restores(tmp_path: Path, repo: Repository) -> None:
    """The fake MatrixOne itself: without plants the online path arranges, ingests and restores."""
    data = tmp_path / "mo-data"
    data.mkdir()
    summary = run_online_backup(repo, data, FakeMatrixOne({"obj": b"object", "ckp/meta": b"meta"}), source="mo")
    run_restore(repo, summary.id, tmp_path / "restored")
    assert sorted(str(p.relative_to(tmp_path / "restored")) for p in (tmp_path / "restored").rglob("*")) == [
        "local", "local/hk_data", "shared", "shared/ckp", "shared/ckp/meta", "shared/obj"]


# ---- restore: the staging directory swapped for a link before the swap ---------------------------------

@pytest.mark.parametrize("beside", [True, False], ids=["beside-target", "inside-target"])
def test_restore_never_acts_through_a_link_swapped_in_for_its_staging(
        plain: tuple[Repository, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beside: bool) -> None:
    """Beside the target, the staging directory lies in the target's parent, often writable by the
    database's user: a link there was chmod'ed and chown'ed (to the target's owner) by path. Inside
    the target, the staged entries were moved in through it."""
    repo, backup_id = plain
    target = tmp_path / "target"
    target.mkdir()
    os.chmod(target, 0o700)
    os.chown(target, 4321, 4321)
    victim = tmp_path / "etc"
    victim.mkdir()
    os.chmod(victim, 0o755)
    (victim / "passwd").write_bytes(b"root:x:0:0")
    before = _snapshot(victim)
    real_syncfs = restore._syncfs

    def syncfs_then_swap(path: Path) -> None:  # the last step before the swap
        real_syncfs(path)
        if path.name.startswith(restore.STAGING_PREFIX):
            path.rename(tmp_path / "moved-away")
            path.symlink_to(victim)

    monkeypatch.setattr(restore, "_syncfs", syncfs_then_swap)
    monkeypatch.setattr(restore, "_stage_beside", lambda _: beside)
    with pytest.raises(OSError) as raised:  # a refusal (NotFollowed is both), or a failure after the harm
        run_restore(repo, backup_id, target)
    assert _snapshot(victim) == before, "changed through the link"
    assert list(target.iterdir()) == [] and target.stat().st_uid == 4321
    assert isinstance(raised.value, MobackupError) and "replaced during the restore" in str(raised.value)


# ---- a directory repository with links planted in it ----------------------------------------------------

@pytest.mark.parametrize("planted", ["blobs", "blobs/<each>", "backups", "locks"])
def test_a_directory_repository_is_never_written_through_a_planted_link(
        tmp_path: Path, repo: Repository, planted: str) -> None:
    """Someone who can write part of the repository links `blobs/` (or every `blobs/<xx>/`) to a cron
    directory: a root backup then wrote the backed-up data, chosen by the data's owner, there."""
    data = tmp_path / "mo-data"
    data.mkdir()
    (data / "job").write_bytes(b"* * * * * root sh -c 'id > /tmp/owned'\n")
    cron = tmp_path / "cron.d"
    cron.mkdir()
    root = Path(repo.location)
    if planted == "blobs/<each>":
        (root / "blobs").mkdir()
        for prefix in range(256):
            (root / "blobs" / f"{prefix:02x}").symlink_to(cron)
    else:
        (root / planted).symlink_to(cron)
    refused = _refusal(lambda: run_backup(repo, data, source="db"))
    assert list(cron.iterdir()) == [], "written through the link"
    link = f"{root}/blobs/" if planted == "blobs/<each>" else f"{root}/{planted} "
    assert refused.startswith(f"repository path {link}") and refused.endswith(" is a symbolic link: refusing")


def test_prune_never_unlinks_through_a_directory_swapped_for_a_link(tmp_path: Path, repo: Repository,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Prune removes the engine's stale temporaries it listed; `blobs/` swapped for a link since the
    listing must not aim the removal at a file of the same name elsewhere."""
    data = tmp_path / "mo-data"
    data.mkdir()
    (data / "f").write_bytes(b"f")
    run_backup(repo, data, source="db")
    root = Path(repo.location)
    name = f".tmp.chunk.{'c' * 32}"
    (root / "blobs" / name).write_bytes(b"interrupted")
    os.utime(root / "blobs" / name, (0, 0))
    cron = tmp_path / "cron.d"
    cron.mkdir()
    (cron / name).write_bytes(b"a job")
    real_listing = LocalBackend.list_temporary

    def listing_then_swap(self: LocalBackend, *args: Any, **kwargs: Any) -> Iterator[Path]:
        found = list(real_listing(self, *args, **kwargs))
        (root / "blobs").rename(tmp_path / "blobs-away")
        (root / "blobs").symlink_to(cron)
        return iter(found)

    monkeypatch.setattr(LocalBackend, "list_temporary", listing_then_swap)
    refused = _refusal(lambda: collect_garbage(repo))
    assert (cron / name).read_bytes() == b"a job", "removed through the link"
    assert refused == f"repository path {root}/blobs is a symbolic link: refusing"


def test_a_planted_link_for_an_object_is_not_read(tmp_path: Path, secret: Path, repo: Repository) -> None:
    """Nor read through: a summary or blob that is a link is refused, not followed."""
    (Path(repo.location) / "backups").mkdir()
    (Path(repo.location) / "backups" / "x.json").symlink_to(secret)
    with pytest.raises(MobackupError, match=r"backups/x\.json is a symbolic link: refusing"):
        repo.backend.read("backups/x.json")


# ---- the log service's hk_data, written beside whatever its owner put there -------------------------------

def test_hk_data_is_never_written_through_a_planted_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its temporary had a fixed name (`.hk_data.mobackup-tmp`): a link planted under it aimed the
    write. Now a random name, created exclusively: here the random part is made known in advance
    and a link planted under that name too, which must fail the write rather than follow it."""
    local = tmp_path / "logservice"
    local.mkdir()
    victim = tmp_path / "ld.so.preload"
    victim.write_bytes(b"precious")
    known = uuid.UUID(int=0xABCDEF)
    monkeypatch.setattr(uuid, "uuid4", lambda: known)
    for name in (".hk_data.mobackup-tmp", f".tmp.hk_data.{known.hex[:12]}"):
        (local / name).symlink_to(victim)
    with contextlib.suppress(OSError):
        s3_restore._write_durably(local / "hk_data", b"state")
    assert victim.read_bytes() == b"precious"
    for link in local.iterdir():
        link.unlink()
    s3_restore._write_durably(local / "hk_data", b"state")
    assert (local / "hk_data").read_bytes() == b"state" and stat.S_ISREG((local / "hk_data").lstat().st_mode)


# ---- hard links planted to another user's file ----------------------------------------------------------
# A hard link is no link to refuse by O_NOFOLLOW: it is the other file. With fs.protected_hardlinks
# off, a data owner can make one to a file they cannot read; root's backup must not read it for them.

DATA_OWNER = 4321


def test_a_hard_link_planted_in_the_data_directory_is_not_read(tmp_path: Path, secret: Path,
                                                              repo: Repository) -> None:
    data = tmp_path / "mo-data"
    (data / "shared").mkdir(parents=True)
    (data / "shared" / "own").write_bytes(b"the owner's own object")
    os.link(secret, data / "shared" / "object")  # what the owner could do with protected_hardlinks off
    for path in (data, data / "shared", data / "shared" / "own"):
        os.chown(path, DATA_OWNER, DATA_OWNER)
    with pytest.raises(PlantedLinkError, match="shared/object has 2 names and belongs to uid 0"):
        run_backup(repo, data, source="db")
    assert repo.list_backups() == [] and not _stored(repo, SECRET)
    # The owner's own hard links are data like any other: backed up and restored as links.
    (data / "shared" / "object").unlink()
    os.link(data / "shared" / "own", data / "shared" / "own-too")
    summary = run_backup(repo, data, source="db")
    run_restore(repo, summary.id, tmp_path / "restored")
    assert os.stat(tmp_path / "restored" / "shared" / "own-too").st_ino == os.stat(
        tmp_path / "restored" / "shared" / "own").st_ino


@pytest.mark.parametrize("planted", ["object", "hk_data"])
def test_a_hard_link_planted_in_the_staged_copy_is_not_read(tmp_path: Path, secret: Path, repo: Repository,
                                                           planted: str) -> None:
    data = tmp_path / "mo-data"
    data.mkdir()
    framed = secret.with_name("framed")
    framed.write_bytes(disk_frame(SECRET))
    framed.chmod(0o600)

    def plant(staging: Path) -> None:
        for path in (staging, staging / "tae", staging / "hakeeper"):
            os.chown(path, DATA_OWNER, DATA_OWNER)  # MatrixOne's user wrote the staged copy
        name = staging / ("tae/obj" if planted == "object" else "hakeeper/hk_data")
        name.unlink()
        os.link(framed if planted == "object" else secret, name)

    matrixone = FakeMatrixOne({"obj": SECRET if planted == "object" else b"object"}, after=plant)
    refused = _refusal(lambda: run_online_backup(repo, data, matrixone, source="mo"))
    assert "has 2 names and belongs to uid 0" in refused, refused
    assert repo.list_backups() == [] and not _stored(repo, SECRET)
