"""What the CLI prints from a repository, a file list or a data directory has its control characters
escaped (`\\x1b`), so that a hostile name can neither drive the terminal nor forge an output line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mobackup.engine.text import printable, printable_lines
from mobackup.sample import generate_mo_data

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))
EVIL = "db\x1b[2J\x1b]0;pwned\x07\nmobackup: forged line\u202e"


def mobackup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MOBACKUP, *args], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")})


def clean(text: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in text) and "\nmobackup: forged line" not in text


def test_printable() -> None:
    assert printable(EVIL) == "db\\x1b[2J\\x1b]0;pwned\\x07\\nmobackup: forged line\\u202e"
    assert printable("plain/path é") == "plain/path é"
    assert printable_lines("a\x1b\nb") == "a\\x1b\nb"


def test_repository_and_data_directory_names_are_escaped(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=3, objects=3)
    os.mkfifo(data / f"fifo{EVIL.replace(chr(10), '')}")  # a special file: named in a warning
    repo = str(tmp_path / f"repo{EVIL}")  # the PATH column of `list`, `location` of `show`
    backup = mobackup("backup", "--data-dir", str(data), "--repo", repo, "--source", EVIL, "--type", "full")
    assert backup.returncode == 0, backup.stderr
    assert "skipped 1 special file" in backup.stderr and clean(backup.stderr) and "\\x1b[2J" in backup.stderr
    backup_id = json.loads(mobackup("list", "--repo", repo, "--json").stdout)[0]["id"]
    for args in (("list",), ("show", backup_id)):
        out = mobackup(*args, "--repo", repo)
        assert out.returncode == 0 and clean(out.stdout) and "db\\x1b[2J" in out.stdout, out.stdout
    missing = mobackup("backup", "--data-dir", str(tmp_path / EVIL), "--repo", repo)
    assert missing.returncode == 1 and clean(missing.stderr) and "\\x1b[2J" in missing.stderr
    assert missing.stderr.count("\n") == 1
