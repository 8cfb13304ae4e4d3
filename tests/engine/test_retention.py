"""Delete and prune: never the newest backup, no base kept for its dependents (every file list is
complete), blobs removed only when unreferenced, and only the engine's own temporaries swept."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from test_cli import mobackup

from conftest import RepoFactory
from mobackup.engine.backup import run_backup
from mobackup.engine.prune import RetentionPolicy, delete_backup, prune, select_kept
from mobackup.engine.repository import RepositoryOptions, open_repository
from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import generate_mo_data, mutate_mo_data, snapshot_tree


@dataclass
class Item:
    id: str
    completed: datetime
    base_id: str | None = None


NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _daily(n: int) -> list[Item]:
    """One full backup a day at noon, newest = today."""
    return [Item(f"b{i:02d}", NOW - timedelta(days=i)) for i in range(n)]


def test_select_kept_policies() -> None:
    items = _daily(40)
    assert set(select_kept(items, RetentionPolicy(keep_last=3), NOW)) == {"b00", "b01", "b02"}
    assert set(select_kept(items, RetentionPolicy(keep_within=timedelta(days=2, hours=1)), NOW)) == {
        "b00", "b01", "b02"}
    weekly = select_kept(items, RetentionPolicy(keep_weekly=3), NOW)  # 2026-11-24 is a Tuesday
    assert set(weekly) == {"b00", "b02", "b09"}  # newest of this week, of the week before (Sun 22nd), ...
    monthly = select_kept(items, RetentionPolicy(keep_monthly=2), NOW)
    assert set(monthly) == {"b00", "b24"}  # 24 Nov and 31 Oct
    daily_and_last = select_kept(items, RetentionPolicy(keep_last=1, keep_daily=5), NOW)
    assert set(daily_and_last) == {f"b{i:02d}" for i in range(5)}
    assert len(select_kept(items, RetentionPolicy(), NOW)) == 40  # no policy: nothing goes


def test_select_kept_never_drops_newest_and_keeps_no_base_for_its_dependents() -> None:
    items = [Item("full", NOW - timedelta(days=30)), Item("inc1", NOW - timedelta(days=20), "full"),
             Item("inc2", NOW - timedelta(days=10), "inc1")]
    kept = select_kept(items, RetentionPolicy(keep_within=timedelta(days=1)), NOW)
    assert kept == {"inc2": "newest completed backup"}
    assert select_kept(items, RetentionPolicy(keep_last=2), NOW) == {"inc2": "newest completed backup",
                                                                    "inc1": "keep-last"}


def test_deleting_a_base_keeps_its_dependents_restorable_and_collects_only_unreferenced_blobs(
        make_repo: RepoFactory, mo_data: Path, tmp_path: Path) -> None:
    repo = make_repo()
    full = run_backup(repo, mo_data, source="db")
    mutate_mo_data(mo_data, seed=2)
    expected = snapshot_tree(mo_data)
    incremental = run_backup(repo, mo_data, source="db")
    assert incremental.base_id == full.id
    blobs_before = sum(1 for _ in repo.backend.list("blobs/"))
    first = delete_backup(repo, full.id)
    assert first.deleted == [full.id] and first.dependents == [incremental.id]
    assert repo.load_summary(incremental.id).base_id == full.id  # recorded, for information
    # only the objects that GC removed between the two backups were unique to the full one
    assert 0 < first.blobs_removed < blobs_before
    assert [s.id for s in repo.list_backups()] == [incremental.id]
    assert verify_backup(repo, incremental.id).ok
    run_restore(repo, incremental.id, tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == expected
    last = delete_backup(repo, incremental.id)
    assert last.blobs_removed == blobs_before - first.blobs_removed
    assert sum(1 for _ in repo.backend.list("blobs/")) == 0


def test_prune_keeps_what_the_policy_says_and_frees_the_rest(make_repo: RepoFactory, mo_data: Path,
                                                               tmp_path: Path) -> None:
    repo = make_repo()
    old_full = run_backup(repo, mo_data, source="db")
    mutate_mo_data(mo_data, seed=3)
    old_inc = run_backup(repo, mo_data, source="db")
    mutate_mo_data(mo_data, seed=4, gc_objects=20)
    new_full = run_backup(repo, mo_data, source="db", backup_type="full")
    mutate_mo_data(mo_data, seed=5)
    expected = snapshot_tree(mo_data)
    new_inc = run_backup(repo, mo_data, source="db")
    other = run_backup(repo, mo_data, source="other-db")  # another source: its own newest is kept

    doomed = sorted([old_full.id, old_inc.id, new_full.id])
    dry = prune(repo, RetentionPolicy(keep_last=1), dry_run=True)
    assert sorted(dry.deleted) == doomed and len(repo.list_backups()) == 5
    result = prune(repo, RetentionPolicy(keep_last=1))
    assert sorted(result.deleted) == doomed  # new_full too: the kept incremental's list is complete
    assert result.kept == {new_inc.id: "newest completed backup", other.id: "newest completed backup"}
    assert {s.id for s in repo.list_backups()} == {new_inc.id, other.id}
    assert result.blobs_removed > 0 and result.bytes_freed > 0
    for summary in repo.list_backups():
        assert verify_backup(repo, summary.id).ok
    run_restore(repo, new_inc.id, tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == expected


def test_cli_prune_keep_last_one_deletes_the_rest_of_a_default_chain(tmp_path: Path) -> None:
    """Six CLI backups, each an incremental on the one before (the default), then `prune --keep-last
    1`: the five older go, although each is the base of the next; the kept one restores on its own."""
    data = generate_mo_data(tmp_path / "mo-data", seed=21, objects=12)
    repo = str(tmp_path / "repo")
    backups: list[dict[str, Any]] = []
    for index in range(6):
        if index:
            mutate_mo_data(data, seed=40 + index, gc_objects=2)
        backups.append(json.loads(mobackup("backup", "--data-dir", str(data), "--repo", repo, "--json").stdout))
    expected = snapshot_tree(data)
    assert [b["type"] for b in backups] == ["full"] + ["incremental"] * 5
    assert [b["base_id"] for b in backups[1:]] == [b["id"] for b in backups[:-1]]

    pruned = json.loads(mobackup("prune", "--repo", repo, "--keep-last", "1", "--json").stdout)
    newest = backups[-1]["id"]
    assert sorted(pruned["deleted"]) == sorted(b["id"] for b in backups[:-1])
    assert pruned["kept"] == {newest: "newest completed backup"}
    assert pruned["blobs_removed"] > 0  # what only the deleted backups referenced
    assert [b["id"] for b in json.loads(mobackup("list", "--repo", repo, "--json").stdout)] == [newest]
    assert "is intact" in mobackup("verify", newest, "--repo", repo).stdout
    target = tmp_path / "restored"
    mobackup("restore", newest, "--repo", repo, "--target", str(target))
    assert snapshot_tree(target) == expected


def test_prune_sweeps_only_the_engines_own_temporaries(tmp_path: Path) -> None:
    """A directory repository placed above MatrixOne's data directory: MatrixOne's in-flight `.tmp.*`
    files (and any other file named like a temporary, outside the engine's places) survive prune."""
    root = tmp_path / "volume"
    data = generate_mo_data(root / "mo-data", seed=22, objects=5)  # never backed up here: it is inside
    repo = open_repository(RepositoryOptions.from_env(str(root)), create=True)
    run_backup(repo, generate_mo_data(tmp_path / "other-mo-data", seed=23, objects=5), source="db")
    before = snapshot_tree(data, include_transient=True)
    hour = 3600

    def place(relative: str, age: float) -> Path:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    ours = [  # leftovers of interrupted writes of this repository, old enough
        place(".tmp.mobackup.json.0123456789ab", 2 * hour),
        place(f"blobs/.tmp.chunk.{'c' * 32}", 2 * hour),
        place(f"blobs/ab/.tmp.{'ab' * 32}.0123456789ab", 2 * hour),
        place(f"backups/.tmp.{'1' * 8}-2222-4333-8444-{'5' * 12}.files.0123456789ab", 2 * hour),
        place(f"locks/.tmp.{'d' * 32}.json.0123456789ab", 2 * hour),
        place("runs/r1/.tmp.part-0-of-2.json.0123456789ab", 2 * hour),
    ]
    others = [
        place("mo-data/shared/.tmp.1234", 2 * hour),  # MatrixOne's, as test_layout knows them
        place("mo-data/shared/.tmp.x.json.0123456789ab", 2 * hour),  # even named exactly like ours
        place("mo-data/.tmp.mobackup.json.0123456789ab", 2 * hour),
        place(".tmp.1234", 2 * hour),  # the root holds only the configuration's temporary
        place(f".tmp.{'ab' * 32}.0123456789ab", 2 * hour),
        place("blobs/ab/.tmp.1234", 2 * hour),  # not a name the engine gives
        place(f"blobs/ab/.tmp.{'ab' * 32}.0123456789ab.x", 2 * hour),
        place("other/.tmp.chunk." + "c" * 32, 2 * hour),
        place(f"blobs/ab/.tmp.{'cd' * 32}.0123456789ab", 60),  # ours, but maybe still being written
        place(f"locks/.tmp.{'e' * 32}.json.0123456789ab", 60),
    ]
    (root / "runs" / "link").symlink_to(root / "mo-data" / "shared")  # never followed out of the repository
    others.append(place("mo-data/shared/.tmp.run.json.0123456789ab", 2 * hour))

    prune(repo, RetentionPolicy())
    assert [p for p in ours if p.exists()] == []
    assert [p for p in others if not p.exists()] == []
    added = {p.relative_to(data).as_posix() for p in others if data in p.parents}
    after = snapshot_tree(data, include_transient=True)
    assert {k: v for k, v in after.items() if k not in added} == before  # MatrixOne's own, aged or not
