"""A repository is untrusted input: a file list rewritten by someone with write access to a plain
repository (tests/engine/tamper.py) must never make restore write outside its target, and verify
must call such a backup damaged."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from tamper import read_entries, tamper

from mobackup.engine.backup import run_backup
from mobackup.engine.errors import CorruptDataError
from mobackup.engine.repository import Repository, RepositoryOptions, open_repository
from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup

Entries = list[dict[str, Any]]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """What an attacker aims at: a directory and a file next to the target."""
    victim = tmp_path / "outside"
    victim.mkdir(mode=0o755)
    (victim / "victim").write_bytes(b"precious")
    os.chmod(victim / "victim", 0o644)
    return victim


def _file(entries: Entries, path: str, **changes: Any) -> dict[str, Any]:
    """A copy of the list's file `top` (real chunks) under another path."""
    record = next(e for e in entries if e["path"] == "top")
    return {**record, "path": path, **changes}


def _attacks(outside: Path) -> dict[str, Any]:
    out = str(outside)
    return {
        "dotdot": lambda e: [*e, _file(e, "../outside/escape")],
        "inner-dotdot": lambda e: [*e, _file(e, "d/../../outside/escape")],
        "absolute": lambda e: [*e, _file(e, f"{out}/escape")],
        "file-through-symlink": lambda e: [*e, {"path": "link", "type": "symlink", "mode": 511, "mtime_ns": 0,
                                                "target": out}, _file(e, "link/victim", mode=0o4755)],
        "dir-through-symlink": lambda e: [*e, {"path": "link", "type": "symlink", "mode": 511, "mtime_ns": 0,
                                               "target": out},
                                          {"path": "link/sub", "type": "dir", "mode": 0o777, "mtime_ns": 0}],
        "symlink-then-same-dir": lambda e: [*e, {"path": "link", "type": "symlink", "mode": 511, "mtime_ns": 0,
                                                 "target": out},
                                            {"path": "link", "type": "dir", "mode": 0o777, "mtime_ns": 0}],
        "duplicate": lambda e: [*e, _file(e, "top")],
        "empty-component": lambda e: [*e, _file(e, "d//g")],
        "dot-component": lambda e: [*e, _file(e, "./g")],
        "nul": lambda e: [*e, _file(e, "g\x00h")],
        "parent-not-listed": lambda e: [*e, _file(e, "nodir/g")],
        "digest-as-path": lambda e: [*e, _file(e, "g", size=3, chunks=["../../../outside/victim"])],
        "hardlink-outside": lambda e: [*e, _file(e, "g", hardlink_of="../outside/victim")],
        "bad-mode": lambda e: [*e, _file(e, "g", mode=0o170000)],
        "not-an-object": lambda e: [*e, ["g"]],
    }


ATTACKS = list(_attacks(Path("/x")))


@pytest.mark.parametrize("attack", ATTACKS)
def test_tampered_file_list_is_refused_before_any_write(plain: tuple[Repository, str], outside: Path,
                                                        tmp_path: Path, attack: str) -> None:
    repo, backup_id = plain
    tamper(Path(repo.location), backup_id, _attacks(outside)[attack])  # the list's digest recomputed
    before = {p.name: (p.read_bytes(), p.stat().st_mode) for p in outside.iterdir()}
    outside_mode = outside.stat().st_mode
    target = tmp_path / "target"
    with pytest.raises(CorruptDataError, match="invalid"):
        run_restore(repo, backup_id, target)
    assert {p.name: (p.read_bytes(), p.stat().st_mode) for p in outside.iterdir()} == before
    assert outside.stat().st_mode == outside_mode
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mo-data", "outside", "repo", "target"]
    result = verify_backup(repo, backup_id)
    assert not result.ok and "invalid" in result.problems[0]


class _Recorder:
    def __init__(self) -> None:
        self.advanced = 0

    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, nbytes: int, nfiles: int) -> None:
        self.advanced += nbytes + nfiles

    def finish(self) -> None:
        pass


def test_altered_list_with_stale_digest_writes_nothing(plain: tuple[Repository, str], tmp_path: Path) -> None:
    """Valid-looking entries whose digest no longer matches the summary: refused before the first file."""
    repo, backup_id = plain
    tamper(Path(repo.location), backup_id, lambda e: [_file(e, "planted"), *e], fix_digest=False)
    recorder = _Recorder()
    with pytest.raises(CorruptDataError, match="truncated or altered"):
        run_restore(repo, backup_id, tmp_path / "target", progress=recorder)
    assert recorder.advanced == 0
    assert list((tmp_path / "target").iterdir()) == []
    assert not verify_backup(repo, backup_id).ok


def test_untampered_list_reads_back_and_restores(plain: tuple[Repository, str], tmp_path: Path) -> None:
    """The tool itself: rewriting the list unchanged (one raw frame, digest recomputed) keeps it valid."""
    repo, backup_id = plain
    entries = read_entries(Path(repo.location), backup_id)
    tamper(Path(repo.location), backup_id, lambda e: e)
    assert read_entries(Path(repo.location), backup_id) == entries
    assert verify_backup(repo, backup_id).ok
    run_restore(repo, backup_id, tmp_path / "target")
    assert (tmp_path / "target" / "d" / "f").read_bytes() == b"f" * 5000


def test_writer_never_follows_a_link_even_unchecked(plain: tuple[Repository, str], outside: Path,
                                                    tmp_path: Path) -> None:
    """Defence in depth below the checks: the writer opens every parent without following links and
    creates files with O_EXCL, so an unchecked list still cannot write through a symbolic link."""
    from mobackup.engine.restore import _RestoreRun

    repo, backup_id = plain
    top = next(e for e in read_entries(Path(repo.location), backup_id) if e["path"] == "top")
    staging = tmp_path / "staging"
    staging.mkdir()
    run = _RestoreRun(repo, backup_id, staging, __import__("mobackup.engine.progress").engine.progress.NullProgress())
    try:
        run.run([{"path": "link", "type": "symlink", "mode": 511, "mtime_ns": 0, "target": str(outside)}])
        with pytest.raises(OSError):
            run.restore_file({**top, "path": "link/victim"})
        (staging / "evil").symlink_to(outside / "victim")
        with pytest.raises(FileExistsError):
            run.restore_file({**top, "path": "evil"})
    finally:
        run.close()
    assert (outside / "victim").read_bytes() == b"precious"


def test_inherited_files_get_their_parent_directories_listed(tmp_path: Path) -> None:
    """An online incremental takes files from its base that the staged tree lacks; their directories
    must still be listed before them, or every reader would refuse the list."""
    first = tmp_path / "first"
    (first / "shared" / "sub").mkdir(parents=True)
    (first / "shared" / "sub" / "x").write_bytes(b"x" * 100)
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)
    base = run_backup(repo, first, source="db")
    second = tmp_path / "second"
    (second / "shared").mkdir(parents=True)
    (second / "shared" / "y").write_bytes(b"y")
    summary = run_backup(repo, second, source="db", base_id=base.id, backup_type="incremental",
                         inherit=frozenset({"shared/sub/x"}))
    assert verify_backup(repo, summary.id).ok
    run_restore(repo, summary.id, tmp_path / "target")
    assert (tmp_path / "target" / "shared" / "sub" / "x").read_bytes() == b"x" * 100


def test_cli_refuses_a_tampered_list_in_one_line(plain: tuple[Repository, str], outside: Path,
                                                 tmp_path: Path) -> None:
    """The attacker's tool from the command line, then `mobackup restore --force` and `verify`."""
    import json
    import subprocess
    import sys

    repo, backup_id = plain
    entries = read_entries(Path(repo.location), backup_id)
    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps([*entries, _file(entries, "../outside/escape", mode=0o4755)]))
    tool = Path(__file__).with_name("tamper.py")
    subprocess.run([sys.executable, str(tool), repo.location, backup_id, str(edit)], check=True)
    mobackup = str(Path(sys.executable).with_name("mobackup"))
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("old")
    for command in (["restore", backup_id, "--target", str(target), "--force"], ["verify", backup_id]):
        result = subprocess.run([mobackup, *command, "--repo", repo.location], capture_output=True, text=True)
        assert result.returncode == 1 and "'../outside/escape' is invalid" in result.stderr, result.stderr
    assert not (outside / "escape").exists() and [p.name for p in target.iterdir()] == ["keep"]


def _modes(root: Path, paths: list[str]) -> dict[str, int]:
    return {p: stat.S_IMODE(os.lstat(root / p).st_mode) for p in paths}


def test_restore_never_sets_setuid_setgid_or_sticky(tmp_path: Path) -> None:
    """A data owner's setuid file must not come back setuid (and root-owned: restores run as root).
    The backup still records the bits; the restore keeps only the permission bits."""
    data = tmp_path / "mo-data"
    (data / "bin").mkdir(parents=True)
    (data / "shared").mkdir()
    (data / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    (data / "shared" / "obj").write_bytes(b"o" * 100)
    os.chmod(data / "bin" / "tool", 0o6755)
    os.chmod(data / "shared" / "obj", 0o2640)
    os.chmod(data / "shared", 0o3775)
    os.chmod(data / "bin", 0o1750)
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)
    summary = run_backup(repo, data, source="db")
    paths = ["bin", "bin/tool", "shared", "shared/obj"]
    assert {e["path"]: e["mode"] for e in repo.entries(summary)} == _modes(data, paths)  # recorded as they are
    run_restore(repo, summary.id, tmp_path / "target")
    assert _modes(tmp_path / "target", paths) == {"bin": 0o750, "bin/tool": 0o755, "shared": 0o775,
                                                  "shared/obj": 0o640}


def test_tampered_modes_never_set_setuid_setgid_or_sticky(plain: tuple[Repository, str], tmp_path: Path) -> None:
    """Whoever can edit a file list sets any mode 0..0o7777 (a valid list): only 0o777 is applied."""
    repo, backup_id = plain
    modes = {"top": 0o4777, "d": 0o3777, "d/f": 0o6644}
    tamper(Path(repo.location), backup_id, lambda e: [{**r, "mode": modes[r["path"]]} for r in e])
    assert verify_backup(repo, backup_id).ok
    run_restore(repo, backup_id, tmp_path / "target")
    assert _modes(tmp_path / "target", list(modes)) == {"top": 0o777, "d": 0o777, "d/f": 0o644}
