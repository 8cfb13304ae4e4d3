"""Bad data and bad timing: every fault is detected with a clear reason and loses nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import RepoFactory
from mobackup.engine.backup import run_backup
from mobackup.engine.errors import (
    CorruptDataError,
    EncryptionKeyError,
    LockedError,
    RepositoryFormatError,
    SourceChangedError,
)
from mobackup.engine.prune import RetentionPolicy, prune
from mobackup.engine.repository import (
    CONFIG_KEY,
    Repository,
    RepositoryOptions,
    blob_key,
    open_repository,
    process_identity,
)
from mobackup.engine.restore import STAGING_PREFIX, run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import generate_mo_data, snapshot_tree

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def _a_blob(repo: Repository, summary_id: str, min_size: int = 1000) -> tuple[str, str]:
    """(digest, path) of a blob of the backup's first file of at least `min_size` bytes."""
    for record in repo.entries(repo.load_summary(summary_id)):
        if record["type"] == "file" and record["size"] >= min_size:
            return record["chunks"][0], record["path"]
    raise AssertionError("no file large enough")


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_damaged_blob_is_detected_by_verify_and_restore(make_repo: RepoFactory, mo_data: Path, tmp_path: Path,
                                                        damage: str) -> None:
    repo = make_repo()
    summary = run_backup(repo, mo_data, source="db")
    digest, rel = _a_blob(repo, summary.id)
    key = blob_key(digest)
    stored = repo.backend.read(key)
    if damage == "flip":
        repo.backend.write(key, stored[:100] + bytes([stored[100] ^ 0xFF]) + stored[101:])
    elif damage == "truncate":
        repo.backend.write(key, stored[: len(stored) // 2])
    else:
        repo.backend.delete([key])

    result = verify_backup(repo, summary.id)
    assert not result.ok and result.problem_count == 1
    assert rel in result.problems[0] and digest in result.problems[0]
    quick = verify_backup(repo, summary.id, quick=True)
    assert quick.ok == (damage == "flip")  # a quick check sees sizes and existence, not content

    target = tmp_path / "target"
    with pytest.raises(CorruptDataError, match=rel.split("/")[-1] if damage != "remove" else "missing"):
        run_restore(repo, summary.id, target)
    assert list(target.iterdir()) == []  # nothing that looks like a restored database


def test_truncated_file_list_is_detected(make_repo: RepoFactory, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mobackup.engine.repository.FRAME_TARGET", 16 << 10)  # many frames from few files
    data = generate_mo_data(tmp_path / "big", seed=3, objects=600, min_size=10, max_size=200)
    repo = make_repo()
    summary = run_backup(repo, data, source="db")
    assert summary.files_frames > 1
    key = f"backups/{summary.id}.files"
    stored = repo.backend.read(key)
    repo.backend.write(key, stored[: len(stored) * 2 // 3])
    with pytest.raises(CorruptDataError, match="truncated"):
        run_restore(repo, summary.id, tmp_path / "target")
    assert not (tmp_path / "target").exists() or list((tmp_path / "target").iterdir()) == []
    assert not verify_backup(repo, summary.id).ok


def test_encryption_key_is_required_and_checked(repo_url: str, mo_data: Path, tmp_path: Path) -> None:
    options = RepositoryOptions.from_env(repo_url, encryption_key="right key")
    repo = open_repository(options, create=True)
    summary = run_backup(repo, mo_data, source="db")
    with pytest.raises(EncryptionKeyError, match="encrypted; give its key"):
        open_repository(RepositoryOptions.from_env(repo_url))
    with pytest.raises(EncryptionKeyError, match="wrong encryption key"):
        open_repository(RepositoryOptions.from_env(repo_url, encryption_key="wrong key"))
    # blob names are keyed digests: they do not reveal which plaintext the repository holds
    plain_digest = __import__("blake3").blake3((mo_data / "local" / "hk_data").read_bytes()).hexdigest()
    assert not repo.backend.exists(blob_key(plain_digest))
    assert b"shared/" not in repo.backend.read(f"backups/{summary.id}.files")
    assert b'"source"' not in repo.backend.read(f"backups/{summary.id}.json")


def test_newer_format_and_foreign_locations_are_refused(make_repo: RepoFactory, repo_url: str) -> None:
    repo = make_repo()
    config = json.loads(repo.backend.read(CONFIG_KEY))
    config["version"] = 2
    repo.backend.write(CONFIG_KEY, json.dumps(config).encode())
    with pytest.raises(RepositoryFormatError, match="format version 2 is newer"):
        open_repository(RepositoryOptions.from_env(repo_url))
    repo.backend.write(CONFIG_KEY, b"{not json")
    with pytest.raises(RepositoryFormatError, match="not valid JSON"):
        open_repository(RepositoryOptions.from_env(repo_url))


class _Saboteur:
    """A progress observer that changes the source after the first chunk has been read."""

    def __init__(self, action) -> None:  # type: ignore[no-untyped-def]
        self.action = action
        self.done = False

    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, nbytes: int, nfiles: int) -> None:
        if nbytes and not self.done:
            self.done = True
            self.action()

    def finish(self) -> None:
        pass


def test_file_changing_during_copy_fails_the_backup(make_repo: RepoFactory, tmp_path: Path) -> None:
    data = tmp_path / "mo-data"
    log = data / "logservice-data" / "x" / "000001.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(os.urandom(20 << 20))  # three chunks: the saboteur strikes after the first

    def append() -> None:
        with open(log, "ab") as out:
            out.write(b"more log")

    repo = make_repo(parallelism=1)
    with pytest.raises(SourceChangedError, match=r"logservice-data/x/000001\.log changed while being copied"):
        run_backup(repo, data, source="db", progress=_Saboteur(append))
    assert repo.list_backups() == []


def test_vanishing_file_fails_unless_volatile(make_repo: RepoFactory, tmp_path: Path) -> None:
    data = tmp_path / "mo-data"
    for area in ("shared", "etl"):
        (data / area).mkdir(parents=True)
        for index in range(4):
            (data / area / f"f{index}").write_bytes(os.urandom(9 << 20))

    def remove_others(area: str):  # type: ignore[no-untyped-def]
        def act() -> None:
            for path in (data / area).iterdir():
                if path.stat().st_size and path.name != "f-keep":
                    os.rename(path, tmp_path / f"{area}-{path.name}")
        return act

    repo = make_repo(parallelism=1)
    for area in ("shared", "etl"):
        (data / area / "f-keep").write_bytes(b"")
    with pytest.raises(SourceChangedError, match=r"vanished during the backup|changed while"):
        run_backup(repo, data, source="db", progress=_Saboteur(remove_others("shared")),
                   rules=__import__("mobackup.engine.layout", fromlist=["PathRules"]).PathRules(
                       extra_excludes=("etl",)))
    for path in tmp_path.glob("shared-f*"):
        os.rename(path, data / "shared" / path.name.split("-", 1)[1])
    # etl/ is volatile: MatrixOne rotates its exported logs at any time
    summary = run_backup(repo, data, source="db2", progress=_Saboteur(remove_others("etl")),
                         rules=__import__("mobackup.engine.layout", fromlist=["PathRules"]).PathRules(
                             extra_excludes=("shared",)))
    assert summary.file_count >= 1


def test_concurrent_backups_into_one_repository(make_repo: RepoFactory, tmp_path: Path) -> None:
    sources = [generate_mo_data(tmp_path / f"src{i}", seed=20 + i, objects=30) for i in range(2)]
    repo = make_repo()
    results: list[object] = []

    def work(index: int) -> None:
        try:
            results.append(run_backup(repo, sources[index], source=f"db{index}"))
        except Exception as error:  # collected and asserted below
            results.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(not isinstance(r, Exception) for r in results), results
    for index, summary in enumerate(sorted(results, key=lambda s: s.source)):  # type: ignore[attr-defined]
        assert verify_backup(repo, summary.id).ok
        target = tmp_path / f"restored{index}"
        run_restore(repo, summary.id, target)
        assert snapshot_tree(target) == snapshot_tree(sources[index])


def test_prune_waits_for_a_live_backup_lock_and_breaks_a_dead_one(make_repo: RepoFactory, repo_url: str,
                                                                   mo_data: Path) -> None:
    repo = make_repo()
    run_backup(repo, mo_data, source="db")
    other = open_repository(RepositoryOptions.from_env(repo_url))
    with (repo.lock(exclusive=False, purpose="backup of db"), pytest.raises(LockedError, match="locked by backup"),
          other.lock(exclusive=True, purpose="prune")):
        pass
    # a lock left by a process that no longer exists is stale at once in the same boot and PID namespace
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    own = process_identity()
    if own["pid_ns"] is None:
        pytest.skip("no /proc of this PID namespace")
    record = {"exclusive": False, "purpose": "backup of db", "host": os.uname().nodename,
              "pid": int(dead.stdout), "pid_start": "1", "boot_id": own["boot_id"], "pid_ns": own["pid_ns"],
              "created_at": "2026-01-01T00:00:00Z", "refreshed_at": "2099-01-01T00:00:00Z"}
    repo.backend.write("locks/deadbeef.json", json.dumps(record).encode())
    prune(repo, RetentionPolicy())
    assert not repo.backend.exists("locks/deadbeef.json")


def test_sigkill_at_random_points_never_leaves_a_broken_backup(repo_url: str, tmp_path: Path,
                                                               backend: str) -> None:
    """Each attempt adds 32 MB of new objects and copies them at 40 MB/s (a real --bandwidth-limit),
    so a kill at a random time in the first 1.2 s lands before, during or after the upload."""
    data = generate_mo_data(tmp_path / "mo-data", seed=9, objects=40)
    env = {**os.environ, "MOBACKUP_LOCK_STALE_SECONDS": "300"}
    rng = random.Random(1234)
    subprocess.run([MOBACKUP, "backup", "--data-dir", str(data), "--repo", repo_url, "--source", "db"],
                   env=env, capture_output=True, text=True, check=True)
    kills = 0
    for attempt in range(6):
        for index in range(8):
            (data / "shared" / f"0196-new-{attempt}-{index}_00000").write_bytes(rng.randbytes(4 << 20))
        process = subprocess.Popen([MOBACKUP, "backup", "--data-dir", str(data), "--repo", repo_url,
                                    "--source", "db", "--bandwidth-limit", "40M",
                                    "--type", "full" if attempt % 2 else "incremental"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, 1.2))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        repo = open_repository(RepositoryOptions.from_env(repo_url))
        for summary in repo.list_backups():  # whatever is listed is complete
            assert verify_backup(repo, summary.id, quick=True).ok
    assert kills >= 3
    repo = open_repository(RepositoryOptions.from_env(repo_url))
    last = run_backup(repo, data, source="db")
    prune(repo, RetentionPolicy())  # collects what the killed runs left behind
    assert not any(info.key.endswith(".files") and not repo.backend.exists(info.key[:-6] + ".json")
                   for info in repo.backend.list("backups/"))
    for summary in repo.list_backups():
        assert verify_backup(repo, summary.id).ok
    target = tmp_path / "restored"
    run_restore(repo, last.id, target)
    assert snapshot_tree(target) == snapshot_tree(data)
    assert not any(p.name.startswith(STAGING_PREFIX) for p in target.iterdir())


def test_racing_first_backups_share_one_repository(repo_url: str, tmp_path: Path) -> None:
    """Two processes that both find no repository create it once: the loser opens the winner's."""
    from concurrent.futures import ThreadPoolExecutor

    from mobackup.engine.errors import RepositoryExists
    from mobackup.engine.repository import Repository

    options = RepositoryOptions.from_env(repo_url, encryption_key="k")
    with ThreadPoolExecutor(4) as pool:
        repos = list(pool.map(lambda _: open_repository(options, create=True), range(4)))
    assert len({r.config["id"] for r in repos}) == 1
    with pytest.raises(RepositoryExists, match="exists here already"):
        Repository.create(options)


@pytest.mark.parametrize("mount_point", [False, True], ids=["beside", "mount-point"])
def test_killed_forced_restore_leaves_the_old_tree_or_the_new_one(tmp_path: Path, mount_point: bool) -> None:
    """SIGKILL at random points of `restore --force` over a populated target: whatever instant it
    dies, the target holds exactly the old tree or exactly the new one (atomic renameat2 exchange
    beside the target; inside a mount point the old entries are set aside first, and only the
    hidden leftovers differ), and the next restore succeeds."""
    old = generate_mo_data(tmp_path / "old", seed=31, objects=30)
    new = generate_mo_data(tmp_path / "new", seed=32, objects=60, max_size=1 << 20)
    repo = str(tmp_path / "repo")
    backup = subprocess.run([MOBACKUP, "backup", "--data-dir", str(new), "--repo", repo, "--json"],
                            capture_output=True, text=True, check=True)
    backup_id = json.loads(backup.stdout)["id"]
    old_tree, new_tree = snapshot_tree(old), snapshot_tree(new)
    rng = random.Random(77)
    outcomes = set()
    for attempt in range(8):
        target = tmp_path / f"target{attempt}"
        if mount_point:  # a bind mount makes `target` a mount point, like a PVC's root
            target.mkdir()
            subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
        subprocess.run(["cp", "-a", f"{old}/.", str(target)], check=True)
        try:
            # ~30 MB at 40 MB/s: the kill lands while staging, or after the swap
            process = subprocess.Popen([MOBACKUP, "restore", backup_id, "--repo", repo, "--target", str(target),
                                        "--force", "--bandwidth-limit", "40M"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, 1.6))
            process.send_signal(signal.SIGKILL)
            process.wait()
            tree = snapshot_tree(target)
            assert tree in (old_tree, new_tree), f"attempt {attempt}: a mixed or empty target"
            outcomes.add("new" if tree == new_tree else "old")
            subprocess.run([MOBACKUP, "restore", backup_id, "--repo", repo, "--target", str(target), "--force"],
                           check=True, capture_output=True)
            assert snapshot_tree(target) == new_tree
            assert not [p for p in target.iterdir() if p.name.startswith(".mobackup")]
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".mobackup-staging-{target.name}-")]
        finally:
            if mount_point:
                subprocess.run(["umount", str(target)], check=False)
    assert outcomes == {"old", "new"}, outcomes  # the kills landed both before and after the swap
