"""Delete and prune: chain-aware, never the newest backup, blobs removed only when unreferenced."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import RepoFactory
from mobackup.engine.backup import run_backup
from mobackup.engine.errors import DependentsError
from mobackup.engine.prune import RetentionPolicy, delete_backup, prune, select_kept
from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import mutate_mo_data, snapshot_tree


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


def test_select_kept_never_drops_newest_nor_a_needed_base() -> None:
    items = [Item("full", NOW - timedelta(days=30)), Item("inc1", NOW - timedelta(days=20), "full"),
             Item("inc2", NOW - timedelta(days=10), "inc1")]
    kept = select_kept(items, RetentionPolicy(keep_within=timedelta(days=1)), NOW)
    assert kept == {"inc2": "newest completed backup", "inc1": "base of a kept backup (inc2)",
                    "full": "base of a kept backup (inc1)"}


def test_delete_is_chain_aware_and_collects_only_unreferenced_blobs(make_repo: RepoFactory, mo_data: Path,
                                                                      tmp_path: Path) -> None:
    repo = make_repo()
    full = run_backup(repo, mo_data, source="db")
    mutate_mo_data(mo_data, seed=2)
    expected = snapshot_tree(mo_data)
    incremental = run_backup(repo, mo_data, source="db")
    with pytest.raises(DependentsError, match=f"{full.id} is the base of {incremental.id}"):
        delete_backup(repo, full.id)
    blobs_before = sum(1 for _ in repo.backend.list("blobs/"))
    first = delete_backup(repo, full.id, force=True)
    # only the objects that GC removed between the two backups were unique to the full one
    assert 0 < first.blobs_removed < blobs_before
    assert [s.id for s in repo.list_backups()] == [incremental.id]
    assert verify_backup(repo, incremental.id).ok
    run_restore(repo, incremental.id, tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == expected
    last = delete_backup(repo, incremental.id)
    assert last.blobs_removed == blobs_before - first.blobs_removed
    assert sum(1 for _ in repo.backend.list("blobs/")) == 0


def test_prune_keeps_newest_chain_and_frees_the_rest(make_repo: RepoFactory, mo_data: Path) -> None:
    repo = make_repo()
    old_full = run_backup(repo, mo_data, source="db")
    mutate_mo_data(mo_data, seed=3)
    old_inc = run_backup(repo, mo_data, source="db")
    mutate_mo_data(mo_data, seed=4, gc_objects=20)
    new_full = run_backup(repo, mo_data, source="db", backup_type="full")
    mutate_mo_data(mo_data, seed=5)
    new_inc = run_backup(repo, mo_data, source="db")
    other = run_backup(repo, mo_data, source="other-db")  # another source: its own newest is kept

    dry = prune(repo, RetentionPolicy(keep_last=1), dry_run=True)
    assert sorted(dry.deleted) == sorted([old_full.id, old_inc.id]) and len(repo.list_backups()) == 5
    result = prune(repo, RetentionPolicy(keep_last=1))
    assert sorted(result.deleted) == sorted([old_full.id, old_inc.id])
    assert result.kept[new_full.id].startswith("base of a kept backup")
    assert {s.id for s in repo.list_backups()} == {new_full.id, new_inc.id, other.id}
    assert result.blobs_removed > 0 and result.bytes_freed > 0
    for summary in repo.list_backups():
        assert verify_backup(repo, summary.id).ok
