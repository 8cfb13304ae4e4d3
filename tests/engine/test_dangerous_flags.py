"""Flags that could destroy data: a restore onto the repository or a system directory, a swap that
fails half-way, a symlinked target, two restores at once, a missing or enclosing data directory,
out-of-range numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobackup.engine.errors import MobackupError
from mobackup.engine.repository import RepositoryOptions, open_repository
from mobackup.engine.restore import _checked_target
from mobackup.sample import generate_mo_data, snapshot_tree

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def mobackup(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")}
    return subprocess.run([MOBACKUP, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Path, Path, str]:
    data = generate_mo_data(tmp_path / "mo-data", seed=12, objects=12)
    repo = tmp_path / "backups" / "repo"
    result = mobackup("backup", "--data-dir", str(data), "--repo", str(repo), "--json")
    assert result.returncode == 0, result.stderr
    return data, repo, json.loads(result.stdout)["id"]


@pytest.mark.parametrize("where", ["repo", "parent", "inside"])
def test_forced_restore_onto_the_repository_is_refused(backed_up: tuple[Path, Path, str], where: str) -> None:
    _, repo, backup_id = backed_up
    target = {"repo": repo, "parent": repo.parent, "inside": repo / "blobs"}[where]
    before = snapshot_tree(repo.parent)
    result = mobackup("restore", backup_id, "--repo", str(repo), "--target", str(target), "--force")
    assert result.returncode == 1 and "repository" in result.stderr, result.stderr
    assert snapshot_tree(repo.parent) == before
    assert mobackup("verify", backup_id, "--repo", str(repo)).returncode == 0


def test_forced_restore_over_a_tree_holding_another_repository_is_refused(backed_up: tuple[Path, Path, str],
                                                                         tmp_path: Path) -> None:
    """--force replaces all a target holds: never when a repository lies anywhere below it."""
    data, repo, backup_id = backed_up
    target = tmp_path / "target"
    deep = target / "old" / "keep" / "repo2"
    assert mobackup("backup", "--data-dir", str(data), "--repo", str(deep)).returncode == 0
    before = snapshot_tree(target)
    result = mobackup("restore", backup_id, "--repo", str(repo), "--target", str(target), "--force")
    assert result.returncode == 1 and f"{deep} holds a mobackup repository" in result.stderr, result.stderr
    assert snapshot_tree(target) == before


def test_system_directories_are_never_targets(backed_up: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, repo, backup_id = backed_up
    repository = open_repository(RepositoryOptions.from_env(str(repo)))
    for path in ("/", "/etc", "/usr", "/proc", "/var", "//"):
        with pytest.raises(MobackupError, match="system directory"):
            _checked_target(Path(path), repository)
    (tmp_path / "etc-link").symlink_to("/etc")  # resolved first: a link cannot smuggle one in
    with pytest.raises(MobackupError, match="system directory /etc"):
        _checked_target(tmp_path / "etc-link", repository)
    # Without --force, so that this test can never damage the machine, even against a broken build.
    result = mobackup("restore", backup_id, "--repo", str(repo), "--target", "/")
    assert result.returncode == 1 and "system directory" in result.stderr


def test_swap_failing_half_way_puts_the_old_tree_back(backed_up: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The target is a mount point (like a volume's root), so the old entries are renamed aside one
    by one; one of them is itself a mount point, whose rename fails with EBUSY after others moved."""
    _, repo, backup_id = backed_up
    target, other = tmp_path / "target", tmp_path / "other"
    target.mkdir()
    other.mkdir()
    (other / "inside-the-mount").write_text("m")
    mounts: list[Path] = []
    try:
        subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
        mounts.append(target)
        for name in ("a", "b"):
            (target / name).write_text(name)
        (target / "c").mkdir()
        (target / "c" / "d").write_text("d")
        (target / "zz-mount").mkdir()
        subprocess.run(["mount", "--bind", str(other), str(target / "zz-mount")], check=True)
        mounts.append(target / "zz-mount")
        before = snapshot_tree(target)
        result = mobackup("restore", backup_id, "--repo", str(repo), "--target", str(target), "--force")
        assert result.returncode == 1 and "busy" in result.stderr.lower(), result.stderr
        assert snapshot_tree(target) == before
        assert sorted(p.name for p in target.iterdir()) == ["a", "b", "c", "zz-mount"]
    finally:
        for mount in reversed(mounts):
            subprocess.run(["umount", str(mount)], check=False)


def test_symlinked_target_is_resolved_up_front(backed_up: tuple[Path, Path, str], tmp_path: Path) -> None:
    data, repo, backup_id = backed_up
    real = tmp_path / "real"
    real.mkdir()
    (real / "old-file").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real)
    result = mobackup("restore", backup_id, "--repo", str(repo), "--target", str(link), "--force", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"] == str(real)
    assert link.is_symlink() and snapshot_tree(real) == snapshot_tree(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "link", "mo-data", "real"]


def test_second_restore_into_the_same_target_is_refused(backed_up: tuple[Path, Path, str], tmp_path: Path) -> None:
    data, repo, backup_id = backed_up
    target = tmp_path / "target"
    target.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")}
    first = subprocess.Popen([MOBACKUP, "restore", backup_id, "--repo", str(repo), "--target", str(target),
                              "--bandwidth-limit", "2M", "-q"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".mobackup-staging-target-") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = mobackup("restore", backup_id, "--repo", str(repo), "--target", str(target), "--force")
        assert second.returncode == 1 and "another restore" in second.stderr, second.stderr
    finally:
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert snapshot_tree(target) == snapshot_tree(data)


def test_backup_of_a_missing_data_dir_creates_no_repository(tmp_path: Path) -> None:
    result = mobackup("backup", "--data-dir", str(tmp_path / "nope"), "--repo", str(tmp_path / "repo"))
    assert result.returncode == 1 and "not a directory" in result.stderr
    assert not (tmp_path / "repo").exists()


def test_repository_inside_the_data_dir_is_left_out(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=13, objects=5)
    expected = snapshot_tree(data)
    repo = data / "backups" / "repo"
    result = mobackup("backup", "--data-dir", str(data), "--repo", str(repo), "--json")
    assert result.returncode == 0, result.stderr
    restored = tmp_path / "restored"
    restore = mobackup("restore", json.loads(result.stdout)["id"], "--repo", str(repo), "--target", str(restored))
    assert restore.returncode == 0, restore.stderr
    assert not (restored / "backups" / "repo").exists()
    assert {k: v for k, v in snapshot_tree(restored).items() if k != "backups"} == expected
    same = mobackup("backup", "--data-dir", str(data), "--repo", str(data))
    assert same.returncode == 1 and "is the repository" in same.stderr


@pytest.mark.parametrize("args", [["--parallelism", "0"], ["--parallelism", "-1"], ["--parallelism", "100000"],
                                  ["--parallelism", "x"]])
def test_out_of_range_parallelism_is_rejected(tmp_path: Path, args: list[str]) -> None:
    result = mobackup("backup", "--data-dir", str(tmp_path), "--repo", str(tmp_path / "repo"), *args)
    assert result.returncode == 2 and "--parallelism" in result.stderr
    assert not (tmp_path / "repo").exists()
    with pytest.raises(MobackupError, match="out of range"):
        open_repository(RepositoryOptions(str(tmp_path / "r2"), parallelism=0), create=True)
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("flag", ["--keep-last", "--keep-daily", "--keep-weekly", "--keep-monthly"])
def test_negative_keep_counts_are_rejected(backed_up: tuple[Path, Path, str], flag: str) -> None:
    _, repo, _ = backed_up
    result = mobackup("prune", "--repo", str(repo), flag, "-1")
    assert result.returncode == 2 and flag in result.stderr and "out of range" in result.stderr


def test_restore_leaves_a_siblings_staging_alone(backed_up: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Restoring into `t` removes leftovers of a killed restore into `t`, never the staging
    directory of a restore into `t-2` that may be running."""
    data, repo, backup_id = backed_up
    leftover = tmp_path / ".mobackup-staging-t-0123456789ab"
    sibling = tmp_path / ".mobackup-staging-t-2-0123456789ab"
    for path in (leftover, sibling):
        path.mkdir()
    result = mobackup("restore", backup_id, "--repo", str(repo), "--target", str(tmp_path / "t"))
    assert result.returncode == 0, result.stderr
    assert not leftover.exists() and sibling.exists()
    assert snapshot_tree(tmp_path / "t") == snapshot_tree(data)


def in_mount_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """`script` (sh) in a private mount namespace: its bind mounts vanish with it, whatever happens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("where", ["volume", "repository", "inside", "subpath"])
def test_restore_onto_the_repository_through_another_mount_is_refused(tmp_path: Path, where: str) -> None:
    """One volume mounted twice (an MORestore whose target PVC is the storage's: /data and /repo in
    the Job's pod) names the repository by two paths that no string comparison relates; the
    restore compares devices and inodes, and the mount table for a subdirectory mounted on its own."""
    volume = tmp_path / "volume"
    data = generate_mo_data(tmp_path / "mo-data", seed=14, objects=4)
    repo = volume / "repo"
    result = mobackup("backup", "--data-dir", str(data), "--repo", str(repo), "--json")
    assert result.returncode == 0, result.stderr
    backup_id = json.loads(result.stdout)["id"]
    before = snapshot_tree(volume)
    data_mount, repo_mount = tmp_path / "data-mount", tmp_path / "repo-mount"
    data_mount.mkdir()
    repo_mount.mkdir()
    mounts = f"mount --bind {volume} {data_mount}"
    repo_arg, target = str(repo), {"volume": data_mount, "repository": data_mount / "repo",
                                   "inside": data_mount / "repo" / "blobs", "subpath": data_mount}[where]
    if where == "subpath":  # the repository's directory mounted on its own, as a subPath mount is
        mounts += f" && mount --bind {repo} {repo_mount}"
        repo_arg = str(repo_mount)
    result = in_mount_namespace(f"{mounts} && exec {MOBACKUP} restore {backup_id} --repo {repo_arg} "
                                f"--target {target} --force")
    assert result.returncode == 1 and "repository" in result.stderr and "refusing" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot_tree(volume) == before
    assert mobackup("verify", backup_id, "--repo", str(repo)).returncode == 0


@pytest.mark.parametrize("case", ["root", "etc", "repository", "other-repository", "holds-repository",
                                  "mount-root", "whole-bucket", "hk-no-object"])
def test_s3_restore_flags_never_reach_the_repository_or_the_system(backed_up: tuple[Path, Path, str],
                                                                  tmp_path: Path, case: str) -> None:
    """--local-fs-dir (emptied with --reset-local-fs), --target-s3 and --hk-data-s3 are refused before
    anything is read or removed. (No --overwrite: even a build without the checks removes nothing.)"""
    _, repo, _ = backed_up
    other = tmp_path / "elsewhere" / "other-repo"
    assert mobackup("init", "--repo", str(other)).returncode == 0
    holder = tmp_path / "log-volume"
    (holder / "deep" / "er").mkdir(parents=True)
    assert mobackup("init", "--repo", str(holder / "deep" / "er" / "repo")).returncode == 0
    local = {"root": "/", "etc": "/etc", "repository": str(repo.parent), "other-repository": str(other),
             "holds-repository": str(holder), "mount-root": str(tmp_path / "mounted")}.get(case)
    target = "s3://bucket" if case == "whole-bucket" else "s3://bucket/cluster/data"
    args = ["restore", "x", "--repo", str(repo), "--target-s3", target]
    if local:
        args += ["--local-fs-dir", local, "--reset-local-fs"]
    if case == "hk-no-object":
        args += ["--hk-data-s3", "s3://bucket"]
    before = snapshot_tree(tmp_path)
    if case == "mount-root":  # a volume's (or a whole file system's) root
        (tmp_path / "mounted").mkdir()
        result = in_mount_namespace(f"mount --bind {local} {local} && exec {MOBACKUP} {' '.join(args)}")
    else:
        result = mobackup(*args)
    expected = {"root": "system directory /", "etc": "system directory /etc", "repository": "the repository",
                "other-repository": "holds a mobackup repository", "holds-repository": "holds a mobackup repository",
                "mount-root": "root of a mounted file system", "whole-bucket": "is a whole bucket",
                "hk-no-object": "names no object"}[case]
    assert result.returncode == 1 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {k: v for k, v in snapshot_tree(tmp_path).items() if not k.startswith("mounted")} == before


def test_a_drill_never_makes_its_scratch_directory_in_the_repository(backed_up: tuple[Path, Path, str],
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`drill --scratch-dir` inside the repository: refused before anything is restored or started."""
    from mobackup.engine import drill

    _, repo, backup_id = backed_up
    fake = tmp_path / "bin" / "mo-service"
    (fake.parent / "etc" / "launch").mkdir(parents=True)
    (fake.parent / "etc" / "launch" / "launch.toml").write_text("# never read\n")
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(drill, "busy_ports", lambda *_: [])  # whatever else runs on this machine
    before = snapshot_tree(repo)
    with pytest.raises(MobackupError, match=r"scratch directory .*repository"):
        drill.run_drill(open_repository(RepositoryOptions.from_env(str(repo))), backup_id, fake,
                        scratch_parent=repo / "blobs")
    assert snapshot_tree(repo) == before
