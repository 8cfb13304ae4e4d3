"""`mobackup stats`: the figures checked against repositories whose sizes are known."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from mobackup.engine.backup import run_backup
from mobackup.engine.model import parse_iso
from mobackup.engine.prune import delete_backup
from mobackup.engine.repository import Repository, RepositoryOptions, blob_key, open_repository
from mobackup.engine.stats import repository_stats

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def known_repository(tmp_path: Path, **options: object) -> tuple[Repository, list[str]]:
    """Three backups of 1-chunk files: db {a 1000, b 2000}, db {a, b, c 4000}, other {c, d 500}."""
    a, b, c, d = (os.urandom(n) for n in (1000, 2000, 4000, 500))
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo"), **options), create=True)
    ids = []
    for name, source, files in (("1", "db", {"a": a, "b": b}), ("2", "db", {"a": a, "b": b, "c": c}),
                                ("3", "other", {"c": c, "d": d})):
        ids.append(run_backup(repo, tree(tmp_path / name, files), source=source).id)
        time.sleep(0.01)  # distinct completion times: the order is the order of the backups
    return repo, ids


def test_figures_of_a_plain_repository_and_what_deleting_frees(tmp_path: Path) -> None:
    repo, ids = known_repository(tmp_path)
    stats = repository_stats(repo, price=2.0)
    by_id = {b.id: b for b in stats.backups}
    assert [b.id for b in stats.backups] == ids
    assert [by_id[i].added_bytes for i in ids] == [3000, 4000, 500]
    assert [by_id[i].unique_bytes for i in ids] == [0, 0, 500]
    # a and b are shared by backups 1 and 2, c by 2 and 3, d is 3's alone
    assert [by_id[i].shared_bytes for i in ids] == [1500.0, 3500.0, 2500.0]
    assert [by_id[i].logical_bytes for i in ids] == [3000, 7000, 4500]
    assert stats.blob_count == 4 and stats.blob_bytes == stats.referenced_blob_bytes == 7500
    assert stats.unreferenced_blob_bytes == 0 and stats.missing_blobs == 0
    metadata = sum(p.stat().st_size for p in (tmp_path / "repo" / "backups").iterdir())
    assert sum(b.metadata_bytes for b in stats.backups) == metadata
    assert stats.stored_bytes == 7500 + metadata
    assert stats.logical_bytes == 14500 and stats.unique_plain_bytes == 7500
    assert stats.dedup_ratio == round(14500 / 7500, 3) and stats.compression_ratio == 1.0
    summaries = repo.list_backups()
    days = (summaries[-1].completed - summaries[0].completed).total_seconds() / 86400
    assert stats.growth_bytes_per_day == round(4500 / days, 1)
    assert abs(stats.monthly_cost - (7500 + metadata) / 1e9 * 2.0) < 1e-12
    db_bytes = 1500 + 3500 + by_id[ids[0]].metadata_bytes + by_id[ids[1]].metadata_bytes
    assert abs(stats.monthly_cost_by_source["db"] - db_bytes / 1e9 * 2.0) < 1e-12
    assert abs(by_id[ids[2]].monthly_cost - (2500 + by_id[ids[2]].metadata_bytes) / 1e9 * 2.0) < 1e-12

    # "Only it holds" is what deleting it frees.
    assert delete_backup(repo, ids[2]).bytes_freed == 500
    after = {b.id: b for b in repository_stats(repo).backups}
    assert after[ids[1]].unique_bytes == 4000 and after[ids[1]].shared_bytes == 1500 + 4000
    assert delete_backup(repo, ids[1]).bytes_freed == 4000
    assert repository_stats(repo, source="db").backups[0].unique_bytes == 3000


def test_encrypted_compressed_repository_garbage_and_missing_blobs(tmp_path: Path) -> None:
    repo, ids = known_repository(tmp_path, encryption_key="k", compression="zstd")
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "zeros").write_bytes(bytes(100_000))  # compresses to almost nothing
    zeros = run_backup(repo, tmp_path / "4", source="zeros").id
    stats = repository_stats(repo)
    by_id = {b.id: b for b in stats.backups}
    assert by_id[zeros].logical_bytes == 100_000 and 0 < by_id[zeros].added_bytes < 1000
    assert stats.unique_plain_bytes == 107_500 and stats.compression_ratio > 10
    # random data does not compress: stored as it is plus the frame byte, nonce and tag (29 bytes)
    assert by_id[ids[2]].unique_bytes == 500 + 29
    sizes = {d: s for d, s in repo.blob_sizes()}
    victim = next(d for d, s in sizes.items() if s == 2000 + 29)  # b: used by backups 1 and 2
    repo.backend.delete([blob_key(victim)])
    repo.backend.write(blob_key("ab" * 32), b"garbage")
    stats = repository_stats(repo)
    assert stats.missing_blobs == 1 and stats.unreferenced_blob_bytes == len(b"garbage")
    assert {b.id: b for b in stats.backups}[ids[0]].shared_bytes == (1000 + 29) / 2


def test_cli_stats_json_and_text(tmp_path: Path) -> None:
    _, ids = known_repository(tmp_path)
    out = subprocess.run([MOBACKUP, "stats", "--repo", str(tmp_path / "repo"), "--json", "--price", "0.02"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert [b["id"] for b in data["backups"]] == ids and data["price_per_gb_month"] == 0.02
    assert set(data["monthly_cost_by_source"]) == {"db", "other"}
    text = subprocess.run([MOBACKUP, "stats", "--repo", str(tmp_path / "repo"), "--source", "other"],
                          capture_output=True, text=True, check=True).stdout
    assert ids[2] in text and ids[0] not in text and "deduplication 1.93x" in text


def test_a_damaged_file_list_is_reported_and_not_counted(tmp_path: Path) -> None:
    repo, ids = known_repository(tmp_path)
    listing = tmp_path / "repo" / "backups" / f"{ids[2]}.files"
    listing.write_bytes(listing.read_bytes()[:-3])  # truncated
    stats = repository_stats(repo)
    assert [b.id for b in stats.backups] == ids[:2] and len(stats.damaged) == 1 and ids[2] in stats.damaged[0]
    # its blobs count as unreferenced, and backup 2 now holds c alone
    assert stats.referenced_blob_bytes == 7000 and stats.unreferenced_blob_bytes == 500
    assert {b.id: b.unique_bytes for b in stats.backups}[ids[1]] == 4000


def test_retention_classes_take_the_longest_lived_rule_and_the_lock() -> None:
    """What the policy keeps each backup for (engine/stats.py RETENTION_CLASSES), on fixed dates:
    the newest of a month that is also the newest of its week and day is monthly."""
    from dataclasses import replace

    from mobackup.engine.model import BackupSummary
    from mobackup.engine.prune import RetentionPolicy
    from mobackup.engine.stats import retention_classes

    base = BackupSummary(id="x", type="full", base_id=None, source="db", backup_ts="1-0", backup_ts_source="clock",
                         started_at="", completed_at="", duration_seconds=0, size_bytes=0, new_bytes=0,
                         stored_bytes=0, file_count=0, read_file_count=0, chunk_count=0, new_blob_count=0,
                         data_dir="", host="", layout="disk", location="", files_digest="", files_frames=0,
                         entry_count=0)
    days = {"jan05": "2026-01-05", "jan20": "2026-01-20", "mar02": "2026-03-02", "mar10": "2026-03-10",
            "mar11": "2026-03-11", "old": "2025-06-01"}
    summaries = [replace(base, id=name, completed_at=f"{day}T01:00:00Z", extra={}) for name, day in days.items()]
    summaries[-1] = replace(summaries[-1], extra={"locked_until": "2026-04-01T00:00:00Z"})
    summaries.append(replace(base, id="other", source="other", completed_at="2026-03-11T02:00:00Z"))
    now = parse_iso("2026-03-12T00:00:00Z")
    policy = RetentionPolicy(keep_daily=2, keep_weekly=2, keep_monthly=2)
    assert retention_classes(summaries, {"db": policy}, now) == {
        "mar11": "monthly", "mar10": "daily", "mar02": "weekly", "jan20": "monthly", "jan05": "prunable",
        "old": "locked", "other": "unmanaged"}
    assert retention_classes(summaries, RetentionPolicy(keep_last=2), now)["mar11"] == "last"
    assert retention_classes(summaries, RetentionPolicy(keep_within=timedelta(days=1)), now)["other"] == "within"
    assert retention_classes(summaries, RetentionPolicy(keep_daily=1), now)["other"] == "daily"
    assert retention_classes(summaries, RetentionPolicy(keep_daily=1), now)["mar10"] == "prunable"


def test_cost_by_retention_class_of_a_repository_whose_sizes_are_known(tmp_path: Path) -> None:
    from mobackup.engine.prune import RetentionPolicy

    repo, ids = known_repository(tmp_path)
    stats = repository_stats(repo, price=2.0, retention=RetentionPolicy(keep_last=1))
    by_id = {b.id: b for b in stats.backups}
    meta = [by_id[i].metadata_bytes for i in ids]
    # db: backup 2 is its last, backup 1 the next prune's; other: backup 3 is its last
    assert [by_id[i].retention_class for i in ids] == ["prunable", "last", "last"]
    assert stats.bytes_by_retention_class == {"prunable": 1500 + meta[0], "last": 3500 + meta[1] + 2500 + meta[2]}
    cost = stats.monthly_cost_by_retention_class
    assert abs(cost["prunable"] - (1500 + meta[0]) / 1e9 * 2.0) < 1e-12
    assert abs(cost["last"] - (6000 + meta[1] + meta[2]) / 1e9 * 2.0) < 1e-12
    cells = stats.monthly_cost_by_source_and_retention_class
    assert set(cells) == {"db", "other"} and set(cells["db"]) == {"prunable", "last"}
    assert set(cells["other"]) == {"last"}
    for source, by_class in cells.items():  # a source's classes add up to its cost
        assert abs(sum(by_class.values()) - stats.monthly_cost_by_source[source]) < 1e-12
    # A policy by source: one without is unmanaged; without --price the bytes still are by class.
    stats = repository_stats(repo, retention={"db": RetentionPolicy(keep_daily=7), "other": None})
    assert [b.retention_class for b in stats.backups] == ["prunable", "daily", "unmanaged"]
    assert stats.monthly_cost_by_retention_class == {} and stats.bytes_by_retention_class["unmanaged"] == 2500 + meta[2]
    assert repository_stats(repo).bytes_by_retention_class == {}  # no policy: no classes

    out = subprocess.run([MOBACKUP, "stats", "--repo", str(tmp_path / "repo"), "--json", "--price", "2",
                          "--keep-last", "1"], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert [b["retention_class"] for b in data["backups"]] == ["prunable", "last", "last"]
    assert data["monthly_cost_by_source_and_retention_class"]["db"].keys() == {"prunable", "last"}
    text = subprocess.run([MOBACKUP, "stats", "--repo", str(tmp_path / "repo"), "--price", "2", "--keep-last", "1"],
                          capture_output=True, text=True, check=True).stdout
    assert "RETENTION" in text and "monthly cost by retention class: last " in text
    assert "  db: last " in text and "  other: last " in text
