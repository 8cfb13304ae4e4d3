"""S3-resident online backups from a staged prefix laid out as MatrixOne's BACKUP ... S3OPTION writes
it (plain objects, tae_list with SHA-256s, tae_sum, hakeeper/hk_data) on the real S3 server (SeaweedFS): the ingest
checks, sharded commits, incrementals' inherited files, restore-to-S3 refusals, on a directory and
an S3 repository, plain and zstd + encrypted. (The real MatrixOne's side is in
tests/matrixone/test_online_s3.py.)"""

from __future__ import annotations

import hashlib
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from mobackup.engine.errors import MobackupError, TargetNotEmptyError
from mobackup.engine.online_s3 import HK_DATA, RunInfo, S3Place, disk_frame, disk_unframe
from mobackup.engine.online_s3_sharded import _read_meta, _run_key, _write_meta, commit_run, ingest_shard
from mobackup.engine.repository import Repository
from mobackup.engine.s3_restore import restore_to_s3

pytestmark = pytest.mark.s3
TS = "1795952494563857612-1"


class Staged:
    """A staged backup under `root/mobackup-staging-<x>/` and a run record for it."""

    def __init__(self, root: S3Place, objects: dict[str, bytes], base: dict[str, bytes] | None = None,
                 sha_override: dict[str, str] | None = None) -> None:
        self.root, self.objects = root, objects
        self.name = f"mobackup-staging-{uuid.uuid4().hex[:16]}"
        self.place = root.under(self.name)
        backend = self.place.backend()
        lines = []
        for path, data in objects.items():
            backend.write(f"tae/{path}", data)
            digest = (sha_override or {}).get(path, hashlib.sha256(data).hexdigest())
            lines.append(f"{path},{len(data)},{digest},true,{TS}")
        for path, data in (base or {}).items():
            lines.append(f"{path},{len(data)},{hashlib.sha256(data).hexdigest()},false,{TS}")
        backend.write("tae/tae_list", "\n".join(lines).encode())
        backend.write("tae/tae_sum", f"2026-11-29 12:00:00,1,{TS},\n".encode())
        self.hk = b"\x08\xc8\xd1\x10" + bytes(range(58))
        backend.write("hakeeper/hk_data", self.hk)
        self.inherit = sorted(f"shared/{p}" for p in base or {})

    def run(self, repo: Repository, base_id: str | None = None) -> str:
        run_id = str(uuid.uuid4())
        run = RunInfo(run_id, "cluster", self.place.url, TS, base_id, "2026-11-29T12:00:00.000Z", None, 1.0,
                      len(self.objects), sum(map(len, self.objects.values())), self.inherit,
                      sorted([*(f"shared/{p}" for p in self.objects), HK_DATA]))
        _write_meta(repo, _run_key(run_id, "run.json"), run.to_dict())
        return run_id


def objects(count: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {f"0198{i:04x}-0000-7000-8000-{seed:06x}{i:06x}_00000": rng.randbytes(rng.randint(1, 300_000))
           for i in range(count)}
    out["ckp/meta_0-1.ckp"] = rng.randbytes(1000)
    return out


@pytest.fixture
def root(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> S3Place:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return S3Place.from_env(f"s3://{s3_server.bucket}/cluster-{uuid.uuid4().hex[:8]}/staging", "MOBACKUP_STAGING_")


def listing(place: S3Place) -> dict[str, bytes]:
    backend = place.backend()
    return {info.key: backend.read(info.key) for info in backend.list("")}


@pytest.mark.parametrize("options", [{}, {"compression": "zstd", "encryption_key": "k" * 32}],
                         ids=["plain", "zstd+enc"])
def test_shards_commit_restore_and_incremental(make_repo: Any, root: S3Place, tmp_path: Path,
                                               options: dict[str, Any]) -> None:
    repo = make_repo(**options)
    full_objects = objects(12, 1)
    staged = Staged(root, full_objects)
    run_id = staged.run(repo)
    for shard in (2, 0):
        ingest_shard(repo, run_id, root, shard, 3)
    with pytest.raises(MobackupError, match="shard 1 of 3 has not completed"):
        commit_run(repo, run_id, root, 3)
    with pytest.raises(MobackupError, match="shard 0 of 2 has not completed"):
        commit_run(repo, run_id, root, 2)  # parts of another split never count
    assert repo.list_backups() == []
    ingest_shard(repo, run_id, root, 1, 3)
    full = commit_run(repo, run_id, root, 3)
    assert full.id == run_id and full.extra["resident"] == "s3" and full.file_count == len(full_objects) + 1
    assert listing(root) == {}, "commit removes the staging"
    assert not list(repo.backend.list(f"runs/{run_id}/"))

    target = S3Place.from_env(f"{root.url.rsplit('/', 1)[0]}/data", "MOBACKUP_TARGET_")
    restore_to_s3(repo, full.id, target, local_fs_dir=tmp_path / "log")
    assert listing(target) == full_objects
    assert (tmp_path / "log" / "hk_data").read_bytes() == disk_frame(staged.hk)

    # An incremental: two new objects staged, the rest listed needCopy=false and taken from the base.
    new = {k: v for k, v in objects(2, 2).items() if not k.startswith("ckp/")}
    kept = {k: v for k, v in list(full_objects.items())[:8]}
    incremental = Staged(root, new, base=kept)
    inc_run = incremental.run(repo, base_id=full.id)
    ingest_shard(repo, inc_run, root, 0, 1)
    inc = commit_run(repo, inc_run, root, 1)
    assert inc.type == "incremental" and inc.base_id == full.id
    assert inc.new_bytes < sum(map(len, new.values())) + 200  # only the new objects (and hk_data) stored
    with pytest.raises(MobackupError, match="not empty"):
        restore_to_s3(repo, inc.id, target)
    with pytest.raises(MobackupError, match="exists"):  # the log service's state, into an empty prefix
        restore_to_s3(repo, inc.id, target.under("other"), local_fs_dir=tmp_path / "log")
    assert listing(target.under("other")) == {}
    result = restore_to_s3(repo, inc.id, target, overwrite=True, local_fs_dir=tmp_path / "log")
    assert listing(target) == {**kept, **new}  # exactly the backup's objects
    assert result.removed_objects == len(full_objects) - len(kept)


def test_a_staged_object_that_differs_or_is_missing_lists_nothing(make_repo: Any, root: S3Place) -> None:
    repo = make_repo()
    data = objects(4, 3)
    first = next(iter(data))
    bad = Staged(root, data, sha_override={first: "0" * 64})
    run_id = bad.run(repo)
    with pytest.raises(MobackupError, match=f"{first} does not match its SHA-256"):
        ingest_shard(repo, run_id, root, 0, 1)
    missing = Staged(root, data)
    missing.place.backend().delete([f"tae/{first}"])
    run_id = missing.run(repo)
    with pytest.raises(MobackupError, match=f"{first} is listed but was not written"):
        ingest_shard(repo, run_id, root, 0, 1)
    with pytest.raises(MobackupError, match="has not completed"):
        commit_run(repo, run_id, root, 1)
    assert repo.list_backups() == []


def test_restore_to_s3_refuses_a_data_directory_backup(make_repo: Any, root: S3Place, mo_data: Path) -> None:
    from mobackup.engine.backup import run_backup

    repo = make_repo()
    summary = run_backup(repo, mo_data)
    target = S3Place.from_env(f"{root.url}-target", "MOBACKUP_TARGET_")
    with pytest.raises(MobackupError, match="DISK-framed"):
        restore_to_s3(repo, summary.id, target)
    assert listing(target) == {}


def test_two_commits_of_one_run_racing_list_one_intact_backup(make_repo: Any, root: S3Place) -> None:
    import threading

    from mobackup.engine.verify import verify_backup

    repo = make_repo(compression="zstd", encryption_key="r" * 32)
    staged = Staged(root, objects(6, 5))
    run_id = staged.run(repo)
    for shard in range(2):
        ingest_shard(repo, run_id, root, shard, 2)
    outcomes: list[object] = []

    def commit() -> None:
        try:
            outcomes.append(commit_run(repo, run_id, root, 2).id)
        except MobackupError as error:  # the other one finished first and removed the run record
            outcomes.append(error)

    racers = [threading.Thread(target=commit) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert run_id in outcomes, outcomes
    assert [b.id for b in repo.list_backups()] == [run_id]
    assert verify_backup(repo, run_id).ok


def test_large_objects_are_restored_in_parts(make_repo: Any, root: S3Place, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects from SINGLE_PUT_MAX bytes up go through a streamed multipart upload (here with the
    limit lowered to 5 MiB, S3's smallest part)."""
    import mobackup.engine.online_s3 as online_s3

    repo = make_repo()
    rng = random.Random(9)
    data = {"0198aaaa-0000-7000-8000-000000000001_00000": rng.randbytes(11 << 20),
            "0198aaaa-0000-7000-8000-000000000002_00000": rng.randbytes(1000)}
    staged = Staged(root, data)
    run_id = staged.run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    commit_run(repo, run_id, root, 1)
    monkeypatch.setattr(online_s3, "SINGLE_PUT_MAX", 5 << 20)
    target = S3Place.from_env(f"{root.url}-large", "MOBACKUP_TARGET_")
    restore_to_s3(repo, run_id, target)
    assert listing(target) == data


@pytest.mark.parametrize("argv, message", [
    (["backup", "--staging", "s3://b/p", "--repo", "{tmp}/r"], "--staging go(es) with --online --staging"),
    (["backup", "--online", "--stage-only", "--sql-host", "h", "--repo", "{tmp}/r"], "--stage-only go(es) with"),
    (["backup", "--online", "--staging", "s3://b/p", "--run", "x", "--repo", "{tmp}/r"], "--run RUN_ID and --shard"),
    (["restore", "x", "--repo", "{tmp}/r"], "restore needs --target DIR (or --target-s3"),
    (["restore", "x", "--repo", "{tmp}/r", "--target", "{tmp}/t", "--overwrite"], "go with --target-s3"),
    (["restore", "x", "--repo", "{tmp}/r", "--target-s3", "s3://b/p", "--force"], "do not apply"),
    (["commit", "x", "--shards", "0", "--repo", "{tmp}/r", "--staging", "s3://b/p"], "--shards must be 1-1024"),
    (["restore", "x", "--repo", "{tmp}/r", "--target", "{tmp}/t", "--check-stopped", "h"], "go with --target-s3"),
    (["restore", "x", "--repo", "{tmp}/r", "--target-s3", "s3://b/p", "--check-stopped", "h:x"], "not HOST[:PORT]"),
    (["restore", "x", "--repo", "{tmp}/r", "--target-s3", "s3://b/p", "--shard", "0/2", "--finalize"], "not both"),
    (["restore", "x", "--repo", "{tmp}/r", "--target-s3", "s3://b/p", "--shard", "0/2", "--local-fs-dir", "{tmp}"],
     "go with --finalize"),
    (["restore", "x", "--repo", "{tmp}/r", "--target", "{tmp}/t", "--finalize"], "go with --target-s3"),
])
def test_cli_refuses_flags_that_do_not_go_together(tmp_path: Path, argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from mobackup.cli import main

    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists(), "nothing created"


def test_restore_to_s3_refuses_while_the_sql_port_answers(make_repo: Any, root: S3Place, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--check-stopped HOST:PORT: a listening socket there (as a running CN's SQL port) refuses the
    restore before anything is written; closed, the restore runs."""
    import socket

    from mobackup.cli import main

    repo = make_repo()
    run_id = Staged(root, objects(2, 7)).run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    commit_run(repo, run_id, root, 1)
    target = f"{root.url}-running"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    argv = ["restore", run_id, "--repo", repo.location, "--target-s3", target, "--check-stopped", f"127.0.0.1:{port}"]
    try:
        assert main(argv) == 1
        assert f"MatrixOne answers at 127.0.0.1:{port}" in capsys.readouterr().err
        assert listing(S3Place.from_env(target, "MOBACKUP_TARGET_")) == {}
    finally:
        listener.close()
    assert main([*argv, "--quiet"]) == 0
    assert len(listing(S3Place.from_env(target, "MOBACKUP_TARGET_"))) == 3


def test_restore_for_a_new_or_stopped_cluster_writes_hk_data_plain_and_resets_the_log_volume(
        make_repo: Any, root: S3Place, tmp_path: Path) -> None:
    """`hk_data_s3`: the ID allocator state as a plain object (where a cluster created with
    restoreFrom reads it); `reset_local_fs`: the log service's old state goes, only with overwrite."""
    repo = make_repo()
    staged = Staged(root, objects(3, 7))
    run_id = staged.run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    backup = commit_run(repo, run_id, root, 1)
    folder = S3Place.from_env(f"{root.url.rsplit('/', 1)[0]}/new", "MOBACKUP_TARGET_")
    data, hk_object = folder.under("data"), folder.under("hk_data")
    logs = tmp_path / "log-volume"
    (logs / "logservice-data" / "uuid" / "host").mkdir(parents=True)
    (logs / "logservice-data" / "uuid" / "host" / "wal").write_bytes(b"old log")
    (logs / "link").symlink_to(tmp_path)  # removed, never followed

    with pytest.raises(TargetNotEmptyError, match="log service's old state"):
        restore_to_s3(repo, backup.id, data, local_fs_dir=logs, reset_local_fs=True, hk_data_s3=hk_object)
    assert listing(folder) == {} and (logs / "logservice-data").exists()
    result = restore_to_s3(repo, backup.id, data, local_fs_dir=logs, reset_local_fs=True, hk_data_s3=hk_object,
                           overwrite=True)
    assert listing(folder)["hk_data"] == staged.hk and result.hk_data_s3 == hk_object.url
    assert sorted(p.name for p in logs.iterdir()) == ["hk_data"] and tmp_path.exists()
    assert (logs / "hk_data").read_bytes() == disk_frame(staged.hk)
    with pytest.raises(TargetNotEmptyError, match="hk_data exists"):  # a second restore needs overwrite
        restore_to_s3(repo, backup.id, folder.under("data2"), hk_data_s3=hk_object)


def test_disk_unframe_checks_every_block() -> None:
    content = random.Random(3).randbytes(5000)
    framed = disk_frame(content)
    assert disk_unframe(framed) == content
    damaged = bytearray(framed)
    damaged[2048 + 10] ^= 1
    with pytest.raises(MobackupError, match="byte 2048 fails its CRC-32C"):
        disk_unframe(bytes(damaged))


def test_restore_to_s3_in_shards_then_finalize(make_repo: Any, root: S3Place, tmp_path: Path) -> None:
    """Shards upload disjoint parts in any order and can run again; finalize refuses until every object
    is there; objects that are not the backup's are refused unless overwrite, which removes them."""
    repo = make_repo()
    full_objects = objects(9, 11)
    staged = Staged(root, full_objects)
    run_id = staged.run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    backup = commit_run(repo, run_id, root, 1)
    target = S3Place.from_env(f"{root.url.rsplit('/', 1)[0]}/sharded", "MOBACKUP_TARGET_")
    parts = [restore_to_s3(repo, backup.id, target, step="shard", shard=(i, 3)) for i in (2, 0)]
    assert sum(p.file_count for p in parts) < len(full_objects)
    with pytest.raises(MobackupError, match="missing or differ"):
        restore_to_s3(repo, backup.id, target, step="finalize", local_fs_dir=tmp_path / "log")
    assert not (tmp_path / "log" / "hk_data").exists()
    restore_to_s3(repo, backup.id, target, step="shard", shard=(0, 3))  # again: its own uploads are the backup's
    restore_to_s3(repo, backup.id, target, step="shard", shard=(1, 3))
    done = restore_to_s3(repo, backup.id, target, step="finalize", local_fs_dir=tmp_path / "log")
    assert listing(target) == full_objects and done.file_count == len(full_objects)
    assert (tmp_path / "log" / "hk_data").read_bytes() == disk_frame(staged.hk)

    target.backend().write("foreign-object", b"a cluster's own")
    with pytest.raises(TargetNotEmptyError, match="not backup"):
        restore_to_s3(repo, backup.id, target, step="shard", shard=(0, 2))
    with pytest.raises(TargetNotEmptyError, match="not backup"):
        restore_to_s3(repo, backup.id, target, step="finalize")
    restore_to_s3(repo, backup.id, target, step="shard", shard=(0, 1), overwrite=True)
    result = restore_to_s3(repo, backup.id, target, step="finalize", overwrite=True)
    assert listing(target) == full_objects and result.removed_objects == 1


def test_a_drill_refuses_a_backup_of_table_data_in_s3(make_repo: Any, root: S3Place, tmp_path: Path) -> None:
    """A drill runs MatrixOne on a local data directory: an S3-resident backup is refused up front,
    with the reason, before anything is restored or started."""
    from mobackup.engine.drill import run_drill

    repo = make_repo()
    staged = Staged(root, objects(2, 5))
    run_id = staged.run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    commit_run(repo, run_id, root, 1)
    fake = tmp_path / "bin" / "mo-service"
    (fake.parent / "etc" / "launch").mkdir(parents=True)
    (fake.parent / "etc" / "launch" / "launch.toml").write_text("# never read\n")
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(MobackupError, match="table data lives in S3"):
        run_drill(repo, run_id, fake, scratch_parent=scratch)
    assert list(scratch.iterdir()) == [], "nothing restored"


def committed(repo: Repository, root: S3Place, seed: int) -> str:
    """A backup of table data in S3 in `repo` (staged, ingested, committed)."""
    run_id = Staged(root, objects(2, seed)).run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    return commit_run(repo, run_id, root, 1).id


@pytest.mark.parametrize("where", ["repository", "parent", "inside", "hk-onto-config"])
def test_restore_to_s3_never_over_the_repository(root: S3Place, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--target-s3 on the repository's prefix, above it or inside it, and --hk-data-s3 onto one of its
    objects: with --overwrite each would replace the repository. Refused before anything is written."""
    from mobackup.cli import main
    from mobackup.engine.repository import RepositoryOptions, open_repository
    from mobackup.engine.verify import verify_backup

    folder = root.url.rsplit("/", 1)[0]
    repo = open_repository(RepositoryOptions.from_env(f"{folder}/repo"), create=True)
    backup_id = committed(repo, root, 13)
    before = listing(S3Place.from_env(repo.location, "MOBACKUP_TARGET_"))
    target = {"repository": repo.location, "parent": folder, "inside": f"{repo.location}/blobs",
              "hk-onto-config": f"{folder}/data"}[where]
    argv = ["restore", backup_id, "--repo", repo.location, "--target-s3", target, "--overwrite", "--quiet"]
    if where == "hk-onto-config":
        argv += ["--hk-data-s3", f"{repo.location}/mobackup.json"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "repository" in err and "refusing" in err and len(err.strip().splitlines()) == 1, err
    assert listing(S3Place.from_env(repo.location, "MOBACKUP_TARGET_")) == before
    assert verify_backup(repo, backup_id).ok


def test_commit_removes_only_a_staging_prefix_it_derives(make_repo: Any, root: S3Place) -> None:
    """The run record lives in the repository, which whoever can write the bucket can edit: a record
    naming another prefix (a cluster's data) is refused; nothing is listed, nothing removed."""
    repo = make_repo()
    staged = Staged(root, objects(2, 17))
    run_id = staged.run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    victim = root.under("cluster-data")
    victim.backend().write("tae/precious", b"a cluster's table data")
    record = _read_meta(repo, _run_key(run_id, "run.json"))
    _write_meta(repo, _run_key(run_id, "run.json"), {**record, "staging_url": victim.url})
    with pytest.raises(MobackupError, match="refusing to read or remove it"):
        commit_run(repo, run_id, root, 1)
    assert listing(victim) == {"tae/precious": b"a cluster's table data"}
    assert repo.list_backups() == [] and listing(staged.place)


def test_a_staging_root_above_the_repository_is_refused(root: S3Place) -> None:
    """Stale `mobackup-staging-*` prefixes under a staging root are removed: one that contains the
    repository is refused."""
    from mobackup.engine.repository import RepositoryOptions, open_repository

    repo = open_repository(RepositoryOptions.from_env(f"{root.url}/repo"), create=True)
    with pytest.raises(MobackupError, match="contains the repository"):
        commit_run(repo, "some-run", root, 1)


def test_the_pitr_history_of_a_prefix_is_what_backups_list_lacks_up_to_backupts(make_repo: Any,
                                                                                 root: S3Place) -> None:
    """engine/pitr_history_s3.py on a live SHARED prefix: objects in BACKUP's list are not taken, those
    modified after BACKUPTS are left out, the base's (same key and size) are inherited; the history
    ingest leaves out an object that vanished or changed since the listing, stores the others."""
    import dataclasses
    import time

    from mobackup.engine.online import StagedFile
    from mobackup.engine.online_s3 import _Ingest
    from mobackup.engine.pitr_history_s3 import list_history
    from mobackup.engine.progress import NullProgress

    live = dataclasses.replace(root, prefix=root.prefix.rsplit("/", 1)[0] + "/data").backend()
    for key, data in {"staged": b"s", "old": b"o" * 1000, "ckp/meta_1": b"m", "in-base": b"b" * 7,
                      "resized": b"r" * 10}.items():
        live.write(key, data)
    time.sleep(1.5)  # LastModified has whole seconds
    cutoff = time.time() - 0.5
    time.sleep(1.5)
    live.write("newer", b"n")  # written after BACKUPTS
    base = [{"path": "shared/in-base", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 7, "chunks": []},
            {"path": "shared/old", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 999, "chunks": []}]
    history = list_history(live, ["staged"], cutoff, base)
    assert [(i.path, i.size) for i in history.items] == [("ckp/meta_1", 1), ("old", 1000), ("resized", 10)]
    assert history.inherited == ["shared/in-base"] and history.later == 1 and history.listed == 6
    live.delete(["ckp/meta_1"])  # the cleaner, meanwhile
    live.write("resized", b"r" * 11)  # rewritten: newer than the listing
    repo = make_repo()
    ingest = _Ingest(repo, live, NullProgress(), history=True)
    ingest.run(list(history.items))
    assert [r["path"] for r in ingest.records] == ["shared/old"] and ingest.left_out == 2
    assert repo.get_blob(ingest.records[0]["chunks"][0], 1000) == b"o" * 1000
    record = history.record(ingest.totals.files, ingest.totals.size, ingest.left_out)
    assert (record["files"], record["copied_files"], record["from_base_files"], record["left_out"]) == (2, 1, 1, 3)
    with pytest.raises(MobackupError, match="is listed but was not written"):  # a staged file that vanished still fails
        _Ingest(repo, live, NullProgress()).ingest(StagedFile("gone", 1, "", True))


def test_objects_hashed_slice_by_slice_across_chunks_round_trip_in_grouped_parts(
        make_repo: Any, root: S3Place, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest hashes each slice of a response as it arrives (SHA-256 against tae_list, BLAKE3 for
    the blob names) with slices that do not line up with chunks; a multipart restore groups small
    blobs into parts of S3's smallest size and returns every object byte for byte. A staged object
    altered in one slice far from its start still fails the ingest, and nothing is listed."""
    import mobackup.engine.online_s3 as online_s3
    import mobackup.engine.repository as repository

    monkeypatch.setattr(repository, "DEFAULT_CHUNK_SIZE", 1 << 20)
    monkeypatch.setattr(online_s3, "HASH_SLICE", 100_003)
    repo = make_repo()
    rng = random.Random(12)
    data = {"0198bbbb-0000-7000-8000-000000000001_00000": rng.randbytes((12 << 20) + 12345),
            "0198bbbb-0000-7000-8000-000000000002_00000": rng.randbytes((2 << 20) + 7),
            "0198bbbb-0000-7000-8000-000000000003_00000": rng.randbytes(1 << 20)}
    run_id = Staged(root, data).run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    backup = commit_run(repo, run_id, root, 1)
    assert backup.chunk_count == 13 + 3 + 1 + 1  # + hk_data
    monkeypatch.setattr(online_s3, "SINGLE_PUT_MAX", 5 << 20)
    target = S3Place.from_env(f"{root.url}-grouped", "MOBACKUP_TARGET_")
    restore_to_s3(repo, run_id, target)
    assert listing(target) == data

    altered = dict(data)
    first = next(iter(altered))
    staged = Staged(root, altered)
    flipped = bytearray(altered[first])
    flipped[(9 << 20) + 5] ^= 1  # a slice in the tenth chunk
    staged.place.backend().write(f"tae/{first}", bytes(flipped))
    run_id = staged.run(repo)
    with pytest.raises(MobackupError, match=f"{first} does not match its SHA-256"):
        ingest_shard(repo, run_id, root, 0, 1)
    with pytest.raises(MobackupError, match="has not completed"):
        commit_run(repo, run_id, root, 1)


def test_a_multipart_restore_of_an_altered_blob_aborts_and_leaves_nothing(
        make_repo: Any, root: S3Place, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object over the single-PUT limit goes up in parts while its next blobs are read; a blob
    that fails its name's check midway aborts the upload: no object under its key, and no
    unfinished multipart upload left behind (billed storage on AWS)."""
    import mobackup.engine.online_s3 as online_s3
    from mobackup.engine.errors import CorruptDataError
    from mobackup.engine.repository import blob_key

    repo = make_repo()
    rng = random.Random(13)
    name = "0198cccc-0000-7000-8000-000000000001_00000"
    data = {name: rng.randbytes((20 << 20) + 3)}
    run_id = Staged(root, data).run(repo)
    ingest_shard(repo, run_id, root, 0, 1)
    commit_run(repo, run_id, root, 1)
    record = next(r for r in repo.entries(repo.load_summary(run_id)) if r["path"] == f"shared/{name}")
    third = blob_key(record["chunks"][2])  # after two parts have gone
    original = repo.backend.read(third)
    repo.backend.write(third, original[:-1] + bytes([original[-1] ^ 1]))
    monkeypatch.setattr(online_s3, "SINGLE_PUT_MAX", 5 << 20)
    target = S3Place.from_env(f"{root.url}-aborted", "MOBACKUP_TARGET_")
    with pytest.raises(CorruptDataError, match="does not match its digest"):
        restore_to_s3(repo, run_id, target)
    assert listing(target) == {}
    backend = target.backend()
    uploads = backend.client.list_multipart_uploads(Bucket=backend.bucket, Prefix=backend.prefix)
    assert uploads.get("Uploads", []) == []
    repo.backend.write(third, original)
    restore_to_s3(repo, run_id, target)
    assert listing(target) == data
