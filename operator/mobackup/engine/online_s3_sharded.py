"""Sharded online backups of an S3-resident MatrixOne (engine/online_s3.py): one staged run, its
ingest split over N shards on any hosts, one commit.

The ingest can run as N shards (`shard I of N`, each a disjoint part of the staged list, by position
in the sorted list); each writes a part record into the repository (`runs/<run>/`) and the commit
step writes the file list and the summary once, after every part is there and every blob it names
exists. A missing part lists nothing; running a shard again reuses the blobs stored before. The run
record pins tae_list by its SHA-256; shards and commit read it again from the staging.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import CorruptDataError, MobackupError
from .guards import check_staging_root
from .manifest import DIGEST
from .model import BackupSummary, parse_iso
from .online import StagedBackup
from .online_index import StagedIndex
from .online_s3 import (
    _NONE,
    STAGED_RUN_LEASE_SECONDS,
    STAGING_NAME,
    STAGING_RUN,
    PartTotals,
    RunInfo,
    S3Place,
    _check_fields,
    _check_record,
    _expected_paths,
    _reused_paths,
    commit_backup,
    ingest_part,
    read_staged,
    remove_staging,
    staged_run,
)
from .online_s3_index import PathListedTwice, RunRecords
from .progress import Progress
from .repository import FileListWriter, Repository

# A part record holds a shard's file records (a 10 TB database's can pass 64 MiB); a reader inflates
# no more than this, whatever a tampered record's zstd frame declares.
MAX_RUN_RECORD_SIZE = 1 << 30


def _run_key(run_id: str, name: str) -> str:
    if not run_id or "/" in run_id or ".." in run_id:
        raise MobackupError(f"invalid run ID {run_id!r}")
    return f"runs/{run_id}/{name}"


def _write_meta(repo: Repository, key: str, data: dict[str, Any]) -> None:
    plain = json.dumps(data).encode()
    if len(plain) > MAX_RUN_RECORD_SIZE:  # _read_meta would refuse it
        raise MobackupError(f"{key} would take {len(plain)} bytes, more than {MAX_RUN_RECORD_SIZE}: "
                            "run more shards")
    repo.backend.write(key, repo._encode_meta(plain, key))


def _read_meta(repo: Repository, key: str) -> dict[str, Any]:
    try:
        data = json.loads(repo._decode_meta(repo.backend.read(key), key, MAX_RUN_RECORD_SIZE))
    except (ValueError, RecursionError):
        raise CorruptDataError(f"{repo.location}/{key} is unreadable") from None
    if not isinstance(data, dict):
        raise CorruptDataError(f"{repo.location}/{key} is malformed")
    return data


def stage_run(repo: Repository, session: Any, staging_root: S3Place, *, source: str | None = None,
              backup_type: str | None = None, base_id: str | None = None,
              server_endpoint: str | None = None) -> RunInfo:
    """Step 1 of a sharded backup: BACKUP into a staging prefix that stays (its lease lapses if the
    run is abandoned, and a later run removes it) and the run record in the repository."""
    source = source or f"{staging_root.url} via {session.where}"
    with repo.lock(exclusive=False, purpose=f"online backup of {source}", wait_seconds=60):
        with staged_run(repo, session, staging_root, source=source, backup_type=backup_type, base_id=base_id,
                        server_endpoint=server_endpoint, keep=True) as (staging, run, _, _):
            _write_meta(repo, _run_key(run.run_id, "run.json"), run.to_dict())
        # The lease must outlive this process: the shards run elsewhere. It is extended to a day and
        # names no process; commit (or a later run after that) removes the prefix.
        name = staging.prefix.rsplit("/", 1)[-1]
        staging_root.backend().write(f"{name}.lease", json.dumps(
            {"host": "", "pid": 0, "expires": time.time() + STAGED_RUN_LEASE_SECONDS, "run": run.run_id}).encode())
    return run


# Each field of a run record and the JSON types it may take (a repository is untrusted input).
_RUN_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "source": (str,), "staging_url": (str,), "backup_ts": (str,), "base_id": (str, _NONE),
    "started_at": (str,), "mo_version": (str, _NONE), "matrixone_backup_seconds": (int, float),
    "staged_files": (int,), "staged_bytes": (int,),
}
_PINNED_RUN_TYPES: dict[str, tuple[type, ...]] = {"tae_list_sha256": (str,), "inherited_files": (int,)}
_LISTED_RUN_TYPES: dict[str, tuple[type, ...]] = {"inherit": (list,), "staged_paths": (list,)}
# A part's file records, stored beside it in the file-list format (FileListWriter), under a name of
# its own per attempt: a shard run again never overwrites what an earlier part record names.
_PART_LIST_TYPES: dict[str, tuple[type, ...]] = {"name": (str,), "digest": (str,), "frames": (int,),
                                                 "entries": (int,)}

def _load_run(repo: Repository, run_id: str) -> RunInfo:
    key = _run_key(run_id, "run.json")
    data = _read_meta(repo, key)
    what = f"{repo.location}/{key}"
    _check_fields(data, _RUN_TYPES, what)
    pinned = "tae_list_sha256" in data  # else a record that lists the paths (older versions write it)
    _check_fields(data, _PINNED_RUN_TYPES if pinned else _LISTED_RUN_TYPES, what)
    if pinned and not DIGEST.match(data["tae_list_sha256"]):
        raise CorruptDataError(f"{what} is malformed: tae_list_sha256 is {data['tae_list_sha256'][:100]!r}")
    if not pinned and not all(isinstance(p, str) for p in [*data["inherit"], *data["staged_paths"]]):
        raise CorruptDataError(f"{what} is malformed: a listed path is not text")
    retries = data.get("backup_retries", [])  # absent in records of older versions
    if not isinstance(retries, list) or len(retries) > 10 or not all(isinstance(r, str) for r in retries):
        raise CorruptDataError(f"{what} is malformed: field 'backup_retries' is {str(retries)[:100]!r}")
    if data["run_id"] != run_id:  # the commit publishes under this ID: a copied record names another
        raise CorruptDataError(f"{what} is malformed: it names run {data['run_id'][:100]!r}")
    try:
        parse_iso(data["started_at"])
        fields = {k: data[k] for k in [*_RUN_TYPES, *(_PINNED_RUN_TYPES if pinned else _LISTED_RUN_TYPES)]}
        return RunInfo(**{"inherit": [], **fields, "backup_retries": retries})
    except (TypeError, ValueError):
        raise CorruptDataError(f"{what} is malformed") from None


def _part_name(shard: int, shards: int) -> str:
    return f"part-{shard}-of-{shards}.json"


def _write_part(repo: Repository, run_id: str, shard: int, shards: int, records: RunRecords, totals: PartTotals,
                scratch: Path) -> None:
    """The shard's file records (in path order, streamed from disk) in the file-list format under a
    name of this attempt's, then the part record naming them (the shard's commit point)."""
    name = f"part-{shard}-of-{shards}.{uuid.uuid4().hex[:16]}.records"
    key = _run_key(run_id, name)
    writer = FileListWriter(repo.codec, run_id, scratch, key=key)
    try:
        try:
            for record in records.sorted():
                writer.add(record)
        finally:
            writer.close()
        repo.backend.write_file(key, writer.path)
    finally:
        writer.discard()
    listed = {"name": name, "digest": writer.hasher.hexdigest(), "frames": writer.frames, "entries": writer.count}
    _write_meta(repo, _run_key(run_id, _part_name(shard, shards)),
                {"shard": shard, "shards": shards, "records_list": listed, "totals": totals.__dict__})


def _load_part(repo: Repository, run_id: str, shard: int, shards: int, records: RunRecords) -> PartTotals:
    """A shard's part record: its file records checked (a repository is untrusted input) and added to
    `records` as they stream in; returns its totals, checked."""
    key = _run_key(run_id, _part_name(shard, shards))
    part = _read_meta(repo, key)
    what = f"{repo.location}/{key}"
    if part.get("shard") != shard or part.get("shards") != shards:
        raise CorruptDataError(f"{what} is malformed: it is not the part of shard {shard} of {shards}")
    inline, listed, totals = part.get("records"), part.get("records_list"), part.get("totals")
    if not (isinstance(inline, list) or isinstance(listed, dict)) or not isinstance(totals, dict):
        raise CorruptDataError(f"{what} is malformed: no records or totals")
    names = set(PartTotals.__dataclass_fields__)
    _check_fields(totals, dict.fromkeys(names, (int,)), what)
    if isinstance(inline, list):  # as versions before the records list wrote it
        source: Iterable[Any] = inline
    else:
        assert isinstance(listed, dict)
        _check_fields(listed, _PART_LIST_TYPES, what)
        if not re.fullmatch(rf"part-{shard}-of-{shards}\.[0-9a-f]{{16}}\.records", listed["name"]):
            raise CorruptDataError(f"{what} is malformed: it names records {listed['name'][:100]!r}")
        source = repo.framed_entries(_run_key(run_id, listed["name"]), listed["digest"], listed["entries"],
                                     listed["frames"])
    try:
        for record in source:
            _check_record(record, what)
            records.append(record)
        records.flush()
    except PathListedTwice:
        raise
    except MobackupError as error:
        if isinstance(inline, list):
            raise
        raise CorruptDataError(f"{what}: its records are unreadable ({error})") from None
    return PartTotals(**{k: totals[k] for k in names})


def _staging_of(run: RunInfo, staging_root: S3Place) -> S3Place:
    """The run's staging prefix: the caller's staging root, and in it a name as staging_prefix gives.
    The run record comes from the repository, which whoever can write the bucket can edit: any other
    place it names (a cluster's data prefix) is never read, and never removed by the commit."""
    url = run.staging_url
    name = url[len(staging_root.url) + 1:] if url.startswith(staging_root.url + "/") else ""
    if not STAGING_RUN.fullmatch(name):
        raise MobackupError(f"run {run.run_id} names staging {url!r}, not a {STAGING_NAME}<16 hex digits> prefix "
                            f"directly under {staging_root.url}: refusing to read or remove it")
    return staging_root.under(name)


def ingest_shard(repo: Repository, run_id: str, staging_root: S3Place, shard: int, shards: int,
                 progress: Progress | None = None) -> PartTotals:
    """Step 2, once per shard (any order, any host): store shard `shard` of `shards` and write its
    part record. Running it again stores only what is missing and replaces the part record."""
    if not 0 <= shard < shards:
        raise MobackupError(f"shard {shard} of {shards}: the index must be 0..{shards - 1}")
    with repo.lock(exclusive=False, purpose=f"online backup run {run_id} shard {shard}/{shards}", wait_seconds=60), \
            tempfile.TemporaryDirectory(prefix="mobackup-shard-") as scratch:
        run = _load_run(repo, run_id)
        staging = _staging_of(run, staging_root).reader(max(16, repo.parallelism * 2))
        index, records = StagedIndex(Path(scratch)), RunRecords(Path(scratch))
        with contextlib.closing(index), contextlib.closing(records):
            staged = _read_pinned(staging, index, run)
            _, totals = ingest_part(repo, staging, staged, shard, shards, progress, records=records)
            _write_part(repo, run_id, shard, shards, records, totals, Path(scratch))
    return totals


def _read_pinned(staging: Any, index: StagedIndex, run: RunInfo) -> StagedBackup:
    """The run's staged list, read again (read_staged); refused when it is not the one the run pinned,
    or gone (the staging goes with the run's first commit, into whichever repository)."""
    staged, list_sha = read_staged(staging, index, missing=(
        f"run {run.run_id}: its staged copy in {staging.location} is gone (a commit of this run, into this or "
        "another repository, removes it), and the shards and the commit check against its tae_list: nothing "
        "was listed; run the backup again"))
    if run.tae_list_sha256 and list_sha != run.tae_list_sha256:
        raise MobackupError(f"run {run.run_id}: MatrixOne's tae_list in {staging.location} is not the one the run "
                            "was staged with (altered since?): refusing it")
    return staged


def commit_run(repo: Repository, run_id: str, staging_root: S3Place, shards: int) -> BackupSummary:
    """Step 3: after every shard's part is there and every blob they name exists, write the backup
    once (file list, then summary: the commit point); then remove the run record and the staging."""
    check_staging_root(repo, (staging_root.bucket, staging_root.prefix))
    with repo.lock(exclusive=False, purpose=f"online backup run {run_id} commit", wait_seconds=60):
        run = _load_run(repo, run_id)
        staging = _staging_of(run, staging_root)  # checked before anything is written or removed
        with tempfile.TemporaryDirectory(prefix="mobackup-commit-") as scratch:
            records = RunRecords(Path(scratch))  # every part's records, on disk
            with contextlib.closing(records):
                totals = _load_parts(repo, run, shards, records)
                if run.tae_list_sha256:  # what the shards must have stored, from the pinned tae_list
                    index = StagedIndex(Path(scratch))
                    with contextlib.closing(index):
                        staged = _read_pinned(staging.backend(), index, run)
                        records.add_expected(_expected_paths(staged))
                        records.add_inherit(_reused_paths(staged))
                else:
                    records.add_expected(run.staged_paths)
                    records.add_inherit(run.inherit)
                got, expected, covered = records.covered()
                if not got == expected == covered:
                    raise MobackupError(f"run {run_id}: the parts do not cover the staged list exactly "
                                        f"({covered} of {expected} files, {got} recorded); nothing was listed")
                records.mark_listed(digest for digest, _ in repo.blob_sizes())
                missing = records.unlisted()
                if missing:
                    raise MobackupError(f"run {run_id}: {missing} blobs the shards stored are gone (pruned "
                                        "meanwhile?); run the shards again, then commit")
                summary = commit_backup(repo, run, records, totals, shards=shards)
    repo.backend.delete([i.key for i in repo.backend.list(f"runs/{run_id}/")])
    remove_staging(staging_root, staging.prefix.rsplit("/", 1)[-1])
    return summary


def _load_parts(repo: Repository, run: RunInfo, shards: int, records: RunRecords) -> PartTotals:
    """Every shard's part into `records`; their totals added up."""
    totals = PartTotals()
    try:
        for shard in range(shards):
            try:
                totals.add(_load_part(repo, run.run_id, shard, shards, records))
            except PathListedTwice:
                raise
            except MobackupError as error:
                raise MobackupError(f"run {run.run_id}: shard {shard} of {shards} has not completed ({error}); "
                                    "nothing was listed: run that shard (again), then commit") from None
    except PathListedTwice:
        raise MobackupError(f"run {run.run_id}: the parts do not cover the staged list exactly (a path is "
                            "recorded twice); nothing was listed") from None
    return totals
