"""The Job agent when the restore target's volume is too small (a real 3 MiB tmpfs): a VolumeFull
reason (an expected failure, exit 1, not InternalError), and the target left as it was."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mobackup.k8s import agent
from mobackup.sample import generate_mo_data, snapshot_tree


def test_restore_onto_a_full_volume(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the test machines run as root)")
    data = generate_mo_data(tmp_path / "mo-data", seed=3, objects=40)
    repo = str(tmp_path / "repo")
    term = tmp_path / "termination-log"
    assert agent.main(["backup", "--termination-log", str(term), "--repo", repo, "--data-dir", str(data),
                       "--source", "ns/mo", "--type", "full", "--compression", "none"]) == 0
    backup_id = json.loads(term.read_text())["result"]["id"]
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(volume)], check=True)
    try:
        target = generate_mo_data(volume / "mo-data", seed=4, objects=5)
        before = snapshot_tree(target, include_transient=True)
        code = agent.main(["restore", "--termination-log", str(term), "--repo", repo, "--backup-id", backup_id,
                           "--target", str(target), "--overwrite"])
        result = json.loads(term.read_text())
        assert (code, result["ok"], result["reason"]) == (1, False, "VolumeFull"), result
        # Refused before anything is written: the message says what the restore needs and what is free.
        assert "the restore needs" in result["error"] and "free" in result["error"], result
        assert snapshot_tree(target, include_transient=True) == before
        assert [p.name for p in volume.iterdir()] == ["mo-data"]  # no staging left behind
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)
