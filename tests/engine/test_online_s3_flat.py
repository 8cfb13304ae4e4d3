"""The online path of S3-resident data with its lists on disk (issue 22, goal 4): tae_list streamed into
an index, the file records in SQLite, part records as framed lists, the run record pinning tae_list's
SHA-256, the restore's listing and objects in SQLite. What was checked before is still checked: a
tae_list altered after the run was staged, a damaged or misnamed part list, a path two parts record,
a foreign or missing object in the target prefix. And the lists are never held: tracemalloc's peak
stays flat while 200,000 records pass."""

from __future__ import annotations

import hashlib
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_online_s3_staged import TS, Staged, listing, objects, root  # noqa: F401 (root: a fixture)

from mobackup.engine.errors import MobackupError, TargetNotEmptyError
from mobackup.engine.online_s3 import (
    HK_DATA,
    RunInfo,
    S3Place,
    _file_list,
    disk_frame,
    run_online_s3_backup,
    shard_items,
)
from mobackup.engine.online_s3_index import RunRecords
from mobackup.engine.online_s3_sharded import _read_meta, _run_key, _write_meta, commit_run, ingest_shard, stage_run
from mobackup.engine.repository import Repository
from mobackup.engine.s3_restore import restore_to_s3
from mobackup.engine.verify import verify_backup


class StagingSession:
    """What the S3 online path asks of a MatrixOne session: its BACKUP ... S3OPTION writes `objects`
    (needCopy true) and lists `kept` (needCopy false, for an incremental) into the prefix it is given."""

    version = "stand-in"
    where = "stand-in"

    def __init__(self, objects: dict[str, bytes], kept: dict[str, bytes] | None = None) -> None:
        self.objects, self.kept = objects, kept or {}

    def run_backup(self, target: str, since_ts: str | None, where_to: str, secret: str | None = None) -> None:
        assert (since_ts is not None) == bool(self.kept)
        backend = S3Place.from_env(where_to, "MOBACKUP_STAGING_").backend()
        lines = []
        for path, data in self.objects.items():
            backend.write(f"tae/{path}", data)
            lines.append(f"{path},{len(data)},{hashlib.sha256(data).hexdigest()},true,{TS}")
        lines += [f"{path},{len(data)},{hashlib.sha256(data).hexdigest()},false,{TS}"
                  for path, data in self.kept.items()]
        backend.write("tae/tae_list", "\n".join(lines).encode())
        backend.write("tae/tae_sum", f"2026-12-02 12:00:00,1,{TS},\n".encode())
        backend.write("hakeeper/hk_data", b"\x08" * 62)


def target_of(root: S3Place, name: str = "data") -> S3Place:  # noqa: F811
    return S3Place.from_env(f"{root.url.rsplit('/', 1)[0]}/{name}", "MOBACKUP_TARGET_")


def test_one_process_full_and_incremental(make_repo: Any, root: S3Place, tmp_path: Path) -> None:  # noqa: F811
    repo = make_repo(compression="zstd", encryption_key="f" * 32)
    full_objects = objects(9, 31)
    full = run_online_s3_backup(repo, StagingSession(full_objects), root)
    assert full.file_count == len(full_objects) + 1 and full.extra["staged_files"] == len(full_objects)
    kept = dict(list(full_objects.items())[:5])
    new = {k: v for k, v in objects(3, 32).items() if not k.startswith("ckp/")}
    inc = run_online_s3_backup(repo, StagingSession(new, kept), root, backup_type="incremental")
    assert inc.type == "incremental" and inc.file_count == len(kept) + len(new) + 1
    assert verify_backup(repo, inc.id).ok
    target = target_of(root)
    restore_to_s3(repo, inc.id, target, local_fs_dir=tmp_path / "log")
    assert listing(target) == {**kept, **new}
    assert (tmp_path / "log" / "hk_data").read_bytes() == disk_frame(b"\x08" * 62)
    assert listing(root) == {}, "the staging is removed"


def test_an_incremental_whose_base_lacks_a_kept_object_lists_nothing(make_repo: Any, root: S3Place) -> None:  # noqa: F811
    repo = make_repo()
    full = run_online_s3_backup(repo, StagingSession(objects(3, 33)), root)
    with pytest.raises(MobackupError, match=r"1 files to take from base backup .* are not in it, e\.g\. shared/gone"):
        run_online_s3_backup(repo, StagingSession(objects(1, 34), {"gone": b"x"}), root, backup_type="incremental")
    assert [b.id for b in repo.list_backups()] == [full.id]


def test_a_staged_run_pins_tae_list(make_repo: Any, root: S3Place) -> None:  # noqa: F811
    """The run record names tae_list by its SHA-256, not by listing every path; the shards and the
    commit read tae_list again and refuse one altered since."""
    repo = make_repo()
    staged_objects = objects(7, 35)
    run = stage_run(repo, StagingSession(staged_objects), root)
    record = _read_meta(repo, _run_key(run.run_id, "run.json"))
    assert "staged_paths" not in record and "inherit" not in record and len(record["tae_list_sha256"]) == 64
    staging = S3Place.from_env(run.staging_url, "MOBACKUP_STAGING_").backend()
    original = staging.read("tae/tae_list")
    staging.write("tae/tae_list", original + b"\nextra,1," + b"0" * 64 + f",true,{TS}".encode())
    with pytest.raises(MobackupError, match="not the one the run was staged with"):
        ingest_shard(repo, run.run_id, root, 0, 2)
    staging.write("tae/tae_list", original)
    for shard in range(2):
        ingest_shard(repo, run.run_id, root, shard, 2)
    part = _read_meta(repo, _run_key(run.run_id, "part-0-of-2.json"))
    assert "records" not in part and part["records_list"]["entries"] >= 1
    staging.write("tae/tae_list", original.replace(b",true,", b",false,", 1))  # one object "from the base"
    with pytest.raises(MobackupError, match="not the one the run was staged with"):
        commit_run(repo, run.run_id, root, 2)
    assert repo.list_backups() == []
    staging.write("tae/tae_list", original)
    backup = commit_run(repo, run.run_id, root, 2)
    assert backup.file_count == len(staged_objects) + 1 and verify_backup(repo, backup.id).ok
    restore_to_s3(repo, backup.id, target_of(root, "restored"))
    assert listing(target_of(root, "restored")) == staged_objects


def test_a_commit_after_the_staging_is_gone_says_so_and_lists_nothing(make_repo: Any, root: S3Place) -> None:  # noqa: F811
    """The run's staging goes with its first commit (into whichever repository); a later commit of
    the same run can no longer check the parts against tae_list, and says why."""
    repo = make_repo()
    run = stage_run(repo, StagingSession(objects(3, 35)), root)
    for shard in range(2):
        ingest_shard(repo, run.run_id, root, shard, 2)
    staging = S3Place.from_env(run.staging_url, "MOBACKUP_STAGING_").backend()
    staging.delete([info.key for info in staging.list("")])
    with pytest.raises(MobackupError, match=r"staged copy in .* is gone"):
        commit_run(repo, run.run_id, root, 2)
    assert repo.list_backups() == []


def _pinned_run(repo: Repository, staged: Staged) -> str:
    tae_list = staged.place.backend().read("tae/tae_list")
    run_id = str(uuid.uuid4())
    run = RunInfo(run_id, "cluster", staged.place.url, TS, None, "2026-11-29T12:00:00.000Z", None, 1.0,
                  len(staged.objects), sum(map(len, staged.objects.values())), [],
                  tae_list_sha256=hashlib.sha256(tae_list).hexdigest())
    _write_meta(repo, _run_key(run_id, "run.json"), run.to_dict())
    return run_id


def test_a_damaged_or_misnamed_part_list_lists_nothing(make_repo: Any, root: S3Place) -> None:  # noqa: F811
    repo = make_repo()
    staged = Staged(root, objects(5, 36))
    run_id = _pinned_run(repo, staged)
    for shard in range(2):
        ingest_shard(repo, run_id, root, shard, 2)
    key = _run_key(run_id, "part-1-of-2.json")
    part = _read_meta(repo, key)
    records_key = _run_key(run_id, part["records_list"]["name"])
    good = repo.backend.read(records_key)
    repo.backend.write(records_key, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(MobackupError, match=r"shard 1 of 2 has not completed .*part-1-of-2\.json: its records"):
        commit_run(repo, run_id, root, 2)
    repo.backend.write(records_key, good)
    other = _read_meta(repo, _run_key(run_id, "part-0-of-2.json"))["records_list"]["name"]
    _write_meta(repo, key, {**part, "records_list": {**part["records_list"], "name": other}})
    with pytest.raises(MobackupError, match="it names records"):  # shard 0's list as shard 1's
        commit_run(repo, run_id, root, 2)
    _write_meta(repo, key, {**part, "records_list": {**part["records_list"], "name": "../../backups/x"}})
    with pytest.raises(MobackupError, match="it names records"):
        commit_run(repo, run_id, root, 2)
    assert repo.list_backups() == []
    _write_meta(repo, key, part)
    assert commit_run(repo, run_id, root, 2).file_count == 7


def test_a_path_two_parts_record_lists_nothing(make_repo: Any, root: S3Place) -> None:  # noqa: F811
    repo = make_repo()
    staged = Staged(root, objects(4, 37))
    run_id = _pinned_run(repo, staged)
    ingest_shard(repo, run_id, root, 0, 1)
    part = _read_meta(repo, _run_key(run_id, "part-0-of-1.json"))
    records = list(repo.framed_entries(_run_key(run_id, part["records_list"]["name"]), part["records_list"]["digest"],
                                       part["records_list"]["entries"], part["records_list"]["frames"]))
    # An older part record (records inline, still read) that lists one path twice.
    _write_meta(repo, _run_key(run_id, "part-0-of-1.json"),
                {"shard": 0, "shards": 1, "records": [*records, records[-1]], "totals": part["totals"]})
    with pytest.raises(MobackupError, match=r"do not cover the staged list exactly \(a path is recorded twice"):
        commit_run(repo, run_id, root, 1)
    _write_meta(repo, _run_key(run_id, "part-0-of-1.json"),
                {"shard": 0, "shards": 1, "records": records[:-1], "totals": part["totals"]})
    with pytest.raises(MobackupError, match=r"do not cover the staged list exactly \(5 of 6 files"):
        commit_run(repo, run_id, root, 1)
    assert repo.list_backups() == []


def test_restore_refuses_foreign_and_missing_objects_from_its_listing_on_disk(make_repo: Any, root: S3Place,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    repo = make_repo()
    staged_objects = objects(30, 38)
    backup = run_online_s3_backup(repo, StagingSession(staged_objects), root)
    target = target_of(root)
    target.backend().write("zz-foreign", b"a cluster's")
    with pytest.raises(TargetNotEmptyError, match=r"holds 1 objects that are not backup .* \(e\.g\. zz-foreign\)"):
        restore_to_s3(repo, backup.id, target, step="shard", shard=(0, 3))
    for index in range(3):
        restore_to_s3(repo, backup.id, target, step="shard", shard=(index, 3), overwrite=True)
    first = sorted(staged_objects)[0]
    target.backend().write(first, b"shorter")
    with pytest.raises(MobackupError, match=rf"1 of the backup's 31 objects are missing or differ in .*{first}"):
        restore_to_s3(repo, backup.id, target, step="finalize", overwrite=True, local_fs_dir=tmp_path / "log")
    restore_to_s3(repo, backup.id, target, step="shard", shard=(0, 1), overwrite=True)
    result = restore_to_s3(repo, backup.id, target, step="finalize", overwrite=True, local_fs_dir=tmp_path / "log")
    assert result.removed_objects == 1 and listing(target) == staged_objects


class _Index:
    """tae_list's rows as a StagedIndex gives them, made up as they are read."""

    def __init__(self, count: int) -> None:
        self.count = count

    def staged(self, where: str = "") -> Any:
        return ((f"{i:012d}", 8, "0" * 64, True) for i in range(self.count))


def test_the_lists_are_never_held(tmp_path: Path) -> None:
    """200,000 staged objects pass through the shard's items and the file list (from the records on
    disk) while Python's allocations stay within a few MB."""
    from mobackup.engine.online import StagedBackup, StagedList
    from mobackup.engine.repository import RepositoryOptions, open_repository

    count = 200_000
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)
    records = RunRecords(tmp_path)
    staged = StagedBackup(TS, "full", StagedList(_Index(count)))  # type: ignore[arg-type]
    digest = "a" * 64
    tracemalloc.start()
    try:
        items = 0
        for item in shard_items(staged, 0, 1):
            items += 1
            if item is not None:
                records.append({"path": f"shared/{item.path}", "type": "file", "mode": 0o644, "mtime_ns": 0,
                                "size": 8, "chunks": [digest]})
        records.append({"path": HK_DATA, "type": "file", "mode": 0o600, "mtime_ns": 0, "size": 0, "chunks": []})
        writer = _file_list(repo, "b1", tmp_path, records.sorted())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        records.close()
    assert items == count + 1 and writer.count == count + 3  # and the directories shared/ and local/
    assert peak < 24 << 20, f"{peak >> 20} MB"


_NOWHERE = S3Place("bucket", "cluster/staging", "http://127.0.0.1:1", "us-east-1", True)


def _pinned_record() -> dict[str, Any]:
    return RunInfo("r1", "cluster", f"{_NOWHERE.url}/mobackup-staging-0123456789abcdef", TS, None,
                   "2026-11-29T12:00:00.000Z", None, 1.0, 1, 1, [], tae_list_sha256="0" * 64).to_dict()


PINNED_GARBAGE = {
    "sha-not-hex": {**_pinned_record(), "tae_list_sha256": "z" * 64},
    "sha-short": {**_pinned_record(), "tae_list_sha256": "0" * 63},
    "no-inherited-count": {k: v for k, v in _pinned_record().items() if k != "inherited_files"},
    "bool-count": {**_pinned_record(), "inherited_files": True},
}


@pytest.mark.parametrize("record", PINNED_GARBAGE.values(), ids=PINNED_GARBAGE.keys())
def test_malformed_pinned_run_record(tmp_path: Path, record: dict[str, Any]) -> None:
    """Refused before the staging (here unreachable) is touched."""
    from mobackup.engine.repository import RepositoryOptions, open_repository

    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)
    _write_meta(repo, _run_key("r1", "run.json"), record)
    with pytest.raises(MobackupError, match=r"run\.json is malformed"):
        commit_run(repo, "r1", _NOWHERE, 1)
