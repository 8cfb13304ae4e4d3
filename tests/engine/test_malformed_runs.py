"""Malformed run records (`runs/<run>/*.json` of a sharded S3 ingest) and a malformed tae_sum/tae_list:
the engine's one-line error naming the file, never an uncaught exception. No S3 server is needed: the
records are refused before the staging prefix is touched. And restore_to_s3's options that go together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mobackup.engine.errors import MobackupError
from mobackup.engine.online import parse_staged_text
from mobackup.engine.online_s3 import HK_DATA, RunInfo, S3Place
from mobackup.engine.online_s3_sharded import _run_key, _write_meta, commit_run
from mobackup.engine.repository import RepositoryOptions, open_repository

TS = "1795952494563857612-1"
ROOT = S3Place("bucket", "cluster/staging", "http://127.0.0.1:1", "us-east-1", True)
RUN = "r1"
GOOD_RECORD = {"path": "shared/a", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 1, "chunks": []}
GOOD_TOTALS = {"size": 1, "new_bytes": 0, "stored_bytes": 0, "files": 1, "chunks": 0, "new_blobs": 0}


def good_run() -> dict[str, Any]:
    return RunInfo(RUN, "cluster", f"{ROOT.url}/mobackup-staging-0123456789abcdef", TS, None,
                   "2026-11-29T12:00:00.000Z", None, 1.0, 1, 1, [], ["shared/a", HK_DATA]).to_dict()


@pytest.fixture
def repo(tmp_path: Path) -> Any:
    return open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)


RUN_GARBAGE = {
    "list": [1, 2],
    "missing": {k: v for k, v in good_run().items() if k != "inherit"},
    "wrong-type": {**good_run(), "staged_paths": 7},
    "path-not-text": {**good_run(), "inherit": [None]},
    "bool-count": {**good_run(), "staged_files": True},
    "bad-time": {**good_run(), "started_at": "yesterday"},
    "other-run": {**good_run(), "run_id": "0b5c2a9e-0000-4000-8000-000000000000"},
    "retries-not-list": {**good_run(), "backup_retries": "panic"},
    "retry-not-text": {**good_run(), "backup_retries": [{"reason": 1}]},
    "too-many-retries": {**good_run(), "backup_retries": ["panic"] * 11},
}


@pytest.mark.parametrize("record", RUN_GARBAGE.values(), ids=RUN_GARBAGE.keys())
def test_malformed_run_record(repo: Any, record: Any) -> None:
    _write_meta(repo, _run_key(RUN, "run.json"), record) if isinstance(record, dict) else \
        repo.backend.write(_run_key(RUN, "run.json"), repo._encode_meta(repr(record).encode(), "x"))
    with pytest.raises(MobackupError, match=r"run\.json"):
        commit_run(repo, RUN, ROOT, 1)


PART_GARBAGE = {
    "no-records": {"shard": 0, "shards": 1, "totals": GOOD_TOTALS},
    "records-not-list": {"shard": 0, "shards": 1, "records": "x", "totals": GOOD_TOTALS},
    "record-not-object": {"shard": 0, "shards": 1, "records": [3], "totals": GOOD_TOTALS},
    "record-no-path": {"shard": 0, "shards": 1, "records": [{**GOOD_RECORD, "path": 5}], "totals": GOOD_TOTALS},
    "record-chunks": {"shard": 0, "shards": 1, "records": [{**GOOD_RECORD, "chunks": [1]}], "totals": GOOD_TOTALS},
    "record-size": {"shard": 0, "shards": 1, "records": [{**GOOD_RECORD, "size": "1"}], "totals": GOOD_TOTALS},
    "totals-missing": {"shard": 0, "shards": 1, "records": [GOOD_RECORD], "totals": {"size": 1}},
    "totals-text": {"shard": 0, "shards": 1, "records": [GOOD_RECORD], "totals": {**GOOD_TOTALS, "size": "1"}},
    "other-shard": {"shard": 1, "shards": 2, "records": [GOOD_RECORD], "totals": GOOD_TOTALS},
}


@pytest.mark.parametrize("part", PART_GARBAGE.values(), ids=PART_GARBAGE.keys())
def test_malformed_part_record(repo: Any, part: dict[str, Any]) -> None:
    _write_meta(repo, _run_key(RUN, "run.json"), good_run())
    _write_meta(repo, _run_key(RUN, "part-0-of-1.json"), part)
    with pytest.raises(MobackupError, match=r"part-0-of-1\.json"):
        commit_run(repo, RUN, ROOT, 1)
    assert repo.list_backups() == []


def test_undecodable_part_record(repo: Any) -> None:
    _write_meta(repo, _run_key(RUN, "run.json"), good_run())
    repo.backend.write(_run_key(RUN, "part-0-of-1.json"), repo._encode_meta(b"\xff\xfe{", "x"))
    with pytest.raises(MobackupError, match=r"part-0-of-1\.json is unreadable"):
        commit_run(repo, RUN, ROOT, 1)


SUM = f"2026-11-29 12:00:00,1,{TS},full"
LIST = f"a,1,{'0' * 64},true,{TS}"
STAGED_GARBAGE = {
    "superscript-size": (SUM, f"a,\u00b2,{'0' * 64},true,{TS}"),
    "huge-size": (SUM, f"a,{'9' * 5000},{'0' * 64},true,{TS}"),
    "superscript-ts": ("t,1,\u00b9-1,full", LIST),
    "huge-ts": (f"t,1,{'9' * 5000}-1,full", LIST),
    "few-fields": (SUM, "a,1"),
    "unsafe-path": (SUM, f"../a,1,{'0' * 64},true,{TS}"),
    "empty": (SUM, ""),
    "twice": (SUM, f"{LIST}\n{LIST}"),
}


@pytest.mark.parametrize(("summary", "listing"), STAGED_GARBAGE.values(), ids=STAGED_GARBAGE.keys())
def test_malformed_staged_text(summary: str, listing: str) -> None:
    with pytest.raises(MobackupError, match="tae_"):
        parse_staged_text(summary, listing)


@pytest.mark.parametrize(("options", "message"), [
    ({"step": "shard", "shard": (0, 2), "local_fs_dir": Path("/nonexistent")}, "go with --finalize"),
    ({"step": "shard", "shard": (0, 2), "hk_data_s3": ROOT.under("hk")}, "go with --finalize"),
    ({"reset_local_fs": True}, "needs --local-fs-dir"),
    ({"step": "upload"}, "not one of"),
])
def test_restore_options_are_the_engines_checks(repo: Any, options: dict[str, Any], message: str) -> None:
    """What the CLI refuses, the engine refuses for any other caller (the Job agent) too, before
    the repository or the bucket is touched."""
    from mobackup.engine.s3_restore import restore_to_s3

    with pytest.raises(MobackupError, match=message):
        restore_to_s3(repo, "0b5c2a9e-0000-4000-8000-000000000000", ROOT.under("data"), **options)
