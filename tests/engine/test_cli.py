"""The `mobackup` command line as scripts and the operator's Jobs use it (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobackup.sample import generate_mo_data, mutate_mo_data, snapshot_tree

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))
SUMMARY_KEYS = {"id", "type", "base_id", "backup_ts", "started_at", "completed_at", "size_bytes", "new_bytes",
                "file_count"}


def mobackup(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([MOBACKUP, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"mobackup {' '.join(args)} failed: {result.stderr}")
    return result


def test_cli_full_incremental_list_show_restore_verify(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=4)
    repo = str(tmp_path / "repo")
    full = json.loads(mobackup("backup", "--data-dir", str(data), "--repo", repo, "--json").stdout)
    assert set(full) >= SUMMARY_KEYS and full["type"] == "full" and full["base_id"] is None
    assert full["source"] == str(data.absolute())  # derived from the data directory
    mutate_mo_data(data, seed=5)
    expected = snapshot_tree(data)
    inc = json.loads(mobackup("backup", "--data-dir", str(data), "--repo", f"file://{repo}", "--json").stdout)
    assert inc["type"] == "incremental" and inc["base_id"] == full["id"] and inc["new_bytes"] < full["new_bytes"]

    listed = json.loads(mobackup("list", "--repo", repo, "--json").stdout)
    assert [b["id"] for b in listed] == [full["id"], inc["id"]] and all(set(b) >= SUMMARY_KEYS for b in listed)
    table = mobackup("list", "--repo", repo).stdout.splitlines()
    # mo_br's layout: a +---+ rule above and below the header and at the end, cells between | bars.
    assert table[0].startswith("+--") and table[2] == table[0] == table[-1] and len(table) == 6
    header = [c.strip() for c in table[1].strip("|").split("|")]
    assert header == ["ID", "SIZE", "PATH", "AT TIME", "DURATION", "COMPLETE TIME", "BACKUPTS", "BACKUPTYPE",
                      "BASE", "NEW BYTES"]
    row = [c.strip() for c in table[4].strip("|").split("|")]
    assert row[0] == inc["id"] and row[7] == "incremental" and row[6] == inc["backup_ts"] and row[8] == full["id"]
    assert len({len(line) for line in table}) == 1  # aligned columns

    shown = json.loads(mobackup("show", full["id"][:8], "--repo", repo, "--json").stdout)
    assert shown["id"] == full["id"] and shown["dependents"] == [inc["id"]]

    target = tmp_path / "restored"
    restored = json.loads(mobackup("restore", inc["id"], "--repo", repo, "--target", str(target), "--json").stdout)
    assert restored["file_count"] == inc["file_count"]
    assert snapshot_tree(target) == expected
    assert "is intact" in mobackup("verify", inc["id"], "--repo", repo).stdout
    assert json.loads(mobackup("verify", inc["id"], "--repo", repo, "--quick", "--json").stdout)["ok"] is True

    refused = mobackup("restore", inc["id"], "--repo", repo, "--target", str(target), check=False)
    assert refused.returncode == 1 and "not empty" in refused.stderr and len(refused.stderr.splitlines()) == 1

    dry = json.loads(mobackup("prune", "--repo", repo, "--keep-last", "1", "--dry-run", "--json").stdout)
    assert dry["deleted"] == [full["id"]]  # the base of the newest: not needed, its list is complete
    deleted = mobackup("delete", full["id"], "--repo", repo)  # the same for an explicit delete
    assert f"backups based on it, still restorable: {inc['id']}" in deleted.stdout
    assert [b["id"] for b in json.loads(mobackup("list", "--repo", repo, "--json").stdout)] == [inc["id"]]
    target.rename(tmp_path / "restored-before")
    mobackup("restore", inc["id"], "--repo", repo, "--target", str(target))
    assert snapshot_tree(target) == expected
    deleted = json.loads(mobackup("delete", inc["id"], "--repo", repo, "--json").stdout)
    assert deleted["deleted"] == [inc["id"]] and deleted["dependents"] == []
    assert json.loads(mobackup("list", "--repo", repo, "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["backup", "--data-dir", "/nonexistent/mo-data", "--repo", "{repo}"], 1, "not a directory"),
        (["list", "--repo", "{tmp}/empty"], 1, "no repository here"),
        (["list"], 1, "no repository: give --repo or set MOBACKUP_REPO"),
        (["restore", "nope", "--repo", "{repo}", "--target", "{tmp}/t"], 1, "no completed backup nope"),
        (["backup", "--type", "differential", "--repo", "{repo}"], 2, "invalid choice"),
        (["prune", "--repo", "{repo}", "--keep-within", "7 days"], 2, "invalid duration"),
        (["backup", "--repo", "ftp://host/x", "--data-dir", "{tmp}"], 1, "unsupported repository URL"),
        (["backup", "--repo", "{repo}", "--data-dir", "{tmp}", "--bandwidth-limit", "fast"], 2, "invalid rate"),
    ],
)
def test_cli_bad_input_gives_one_line_reason(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    repo = tmp_path / "repo"
    mobackup("init", "--repo", str(repo))
    env = {k: v for k, v in os.environ.items() if k != "MOBACKUP_REPO"}
    result = subprocess.run([MOBACKUP, *(a.format(repo=repo, tmp=tmp_path) for a in args)], capture_output=True,
                            text=True, env=env)
    assert result.returncode == code
    assert message in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1


def test_encryption_key_from_env_or_file_never_from_arguments(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=6, objects=5)
    repo = str(tmp_path / "repo")
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    mobackup("init", "--repo", repo, "--encryption-key-file", str(key_file))
    backup = json.loads(mobackup("backup", "--data-dir", str(data), "--repo", repo, "--json",
                                 env={"MOBACKUP_ENCRYPTION_KEY": "s3cret-key"}).stdout)
    missing = mobackup("list", "--repo", repo, check=False)
    assert missing.returncode == 1 and "repository is encrypted" in missing.stderr
    wrong = mobackup("list", "--repo", repo, check=False, env={"MOBACKUP_ENCRYPTION_KEY": "guess"})
    assert wrong.returncode == 1 and "wrong encryption key" in wrong.stderr
    listed = mobackup("list", "--repo", repo, "--json", "--encryption-key-file", str(key_file))
    assert json.loads(listed.stdout)[0]["id"] == backup["id"]
    assert "s3cret" not in json.dumps(backup)
    assert mobackup("backup", "--help").stdout.count("--encryption-key ") == 0


def test_demo_runs_the_tour(tmp_path: Path) -> None:
    result = mobackup("demo", "--dir", str(tmp_path / "demo"), "--json")
    report = json.loads(result.stdout)
    assert report["identical"] and report["verified"]
    assert report["incremental"]["new_bytes"] < report["full"]["new_bytes"] / 10


def test_demo_never_removes_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """--dir of someone's data is refused untouched; a directory of an earlier tour (its marker) loses
    only the tour's own entries."""
    mine = tmp_path / "mine"
    (mine / "repo").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    before = snapshot_tree(mine)
    result = mobackup("demo", "--dir", str(mine), check=False)
    assert result.returncode == 1 and "not made by `mobackup demo`" in result.stderr, result.stderr
    assert snapshot_tree(mine) == before
    from mobackup.demo import MARKER, prepare_workdir

    (mine / MARKER).write_text("")  # as a tour leaves it
    prepare_workdir(mine)
    assert sorted(p.name for p in mine.iterdir()) == [MARKER, "notes.txt"]
    prepare_workdir(tmp_path / "new")
    assert [p.name for p in (tmp_path / "new").iterdir()] == [MARKER]


def test_progress_is_drawn_on_a_terminal_and_silent_otherwise(tmp_path: Path) -> None:
    import pty

    data = generate_mo_data(tmp_path / "mo-data", seed=8, objects=60, max_size=2 << 20)
    repo = str(tmp_path / "repo")
    master, slave = pty.openpty()
    process = subprocess.Popen([MOBACKUP, "backup", "--data-dir", str(data), "--repo", repo], stdout=subprocess.PIPE,
                               stderr=slave, text=True)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    process.wait(timeout=120)
    os.close(master)
    assert process.returncode == 0
    screen = drawn.decode(errors="replace")
    # rich's bar: label, percentage, bytes of total, files, rate and ETA, redrawn in place.
    assert "backup" in screen and "100%" in screen and "files" in screen and "/s" in screen and "ETA" in screen
    assert "\r" in screen or "\x1b[" in screen
    quiet = mobackup("backup", "--data-dir", str(data), "--repo", repo)
    assert quiet.stderr == ""  # not a terminal and shorter than the line interval: no progress noise in logs
    lines = mobackup("backup", "--data-dir", str(data), "--repo", repo, "--type", "full",
                     env={"MOBACKUP_PROGRESS_INTERVAL": "0.001"}).stderr.splitlines()
    assert lines and all(line.startswith("backup: ") and " files " in line and "/s ETA " in line for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in lines)  # plain lines for logs
