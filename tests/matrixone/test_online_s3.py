"""Online backups of the real MatrixOne whose table data lives in S3 (the suite's MinIO), the data
placement of a distributed MatrixOneCluster: `backup --online --staging s3://...` streams MatrixOne's
own BACKUP ... S3OPTION copy into the repository; `restore --target-s3` puts it back into a bucket
prefix plus the log service's hk_data; MatrixOne starts on it. Scale-out: shards and a commit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mo_s3 import configure_s3
from mo_server import (
    DEFAULT_VERSION,
    REPO,
    TXN_ROWS,
    VERSIONS,
    MatrixOne,
    Writer,
    checksums,
    create_db,
    insert_rows,
    user_databases,
    writer_rows,
)
from mobackup.engine.online_s3 import STAGING_NAME, crc32c, disk_frame

MOBACKUP = REPO / ".venv" / "bin" / "mobackup"


def _env(s3: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))}
    return {**env, **s3.env(), "MOBACKUP_SQL_PASSWORD": "111"}


def mobackup(s3: Any, *argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(MOBACKUP), *argv, "--quiet"], capture_output=True, text=True, env=_env(s3),
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def keys(s3: Any, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            out[item["Key"][len(prefix) + 1:]] = client.get_object(Bucket=s3.bucket, Key=item["Key"])["Body"].read()
    return out


def s3_matrixone(factory: Callable[..., MatrixOne], s3: Any, prefix: str, workdir: Path | None = None,
                 version: str = DEFAULT_VERSION) -> MatrixOne:
    mo = factory(version, workdir=workdir)
    configure_s3(mo, s3.endpoint, s3.access_key, s3.secret_key, s3.bucket, prefix)
    return mo


def backup(s3: Any, repo: Path, prefix: str, *extra: str) -> dict[str, Any]:
    proc = mobackup(s3, "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--repo", str(repo),
                    "--staging", f"s3://{s3.bucket}/{prefix}/staging", "--source", "cluster", "--json", *extra)
    return json.loads(proc.stdout)


def test_disk_framing_matches_matrixone() -> None:
    """CRC-32C per 2048-byte block, as MatrixOne's DISK file service writes (values read from a
    hk_data and a tae_sum it wrote)."""
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    framed = disk_frame(b"x" * 5000)
    assert len(framed) == 5000 + 3 * 4 and framed[2048:2052] == crc32c(b"x" * 2044).to_bytes(4, "little")


@pytest.mark.s3
@pytest.mark.parametrize("version", VERSIONS)
def test_s3_resident_online_backup_under_a_writer_restores_into_new_and_same_prefix(
        matrixone_factory: Callable[..., MatrixOne], s3_server: Any, tmp_path: Path, version: str) -> None:
    """The seed's example on a cluster whose data is in S3: full + incremental online under a
    writer; drop/create; the incremental restored into a NEW prefix (another cluster) and the full
    restored IN PLACE over the old prefix (refused without --overwrite); MatrixOne starts on each
    with the databases and rows of its backup, an exact prefix of the writer's transactions."""
    s3, repo, prefix = s3_server, tmp_path / "repo", f"c-{uuid.uuid4().hex[:8]}"
    client = s3.client()
    # A staging prefix left by a killed run (its lease long expired) is removed by the next run.
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/staging/{STAGING_NAME}dead/tae/x", Body=b"x")
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/staging/{STAGING_NAME}dead.lease",
                      Body=json.dumps({"host": "gone", "pid": 1, "expires": time.time() - 60}).encode())
    mo = s3_matrixone(matrixone_factory, s3, prefix, version=version)
    mo.start()
    create_db(mo, "db1", 200_000)
    create_db(mo, "db2", 1000)
    mo.checkpoint()
    mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
    writer = Writer().start()
    try:
        before_full = writer.committed
        full = backup(s3, repo, prefix)
        insert_rows(mo, "db1", 1_000_001, 3000)
        before_incremental = writer.committed
        incremental = backup(s3, repo, prefix)
    finally:
        writer.stop()
    assert writer.errors == []
    at_incremental = checksums(mo, ["db1", "db2"])
    mo.sql("drop database db1")
    create_db(mo, "db3", 10)
    mo.stop()
    assert not (mo.data_dir / "shared").exists(), "table data must be in S3, not on the volume"

    assert full["type"] == "full" and full["extra"]["kind"] == "online" and full["extra"]["resident"] == "s3"
    assert incremental["type"] == "incremental" and incremental["base_id"] == full["id"]
    assert incremental["extra"]["staged_files"] < incremental["file_count"] - 1
    assert keys(s3, f"{prefix}/staging") == {}, "staging (or the killed run's leftover) not removed"
    assert mobackup(s3, "verify", incremental["id"], "--repo", str(repo)).returncode == 0
    print(f"\nS3-resident online full: {full['size_bytes']} B in {full['file_count']} files, "
          f"{full['duration_seconds']} s (BACKUP {full['extra']['matrixone_backup_seconds']} s); incremental staged "
          f"{incremental['extra']['staged_bytes']} B, new {incremental['new_bytes']} B, "
          f"{incremental['duration_seconds']} s")

    # The incremental into a new prefix, for a new cluster.
    other_prefix = f"n-{uuid.uuid4().hex[:8]}"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = s3_matrixone(matrixone_factory, s3, other_prefix, workdir=other_dir, version=version)
    mobackup(s3, "restore", incremental["id"], "--repo", str(repo), "--target-s3",
             f"s3://{s3.bucket}/{other_prefix}/data", "--local-fs-dir", str(other.data_dir))
    # launch-s3's LOCAL file service has data-dir ./mo-data: its root is mo-data itself
    assert (other.data_dir / "hk_data").is_file()
    other.start()
    assert user_databases(other) == {"db1", "db2"}
    assert checksums(other, ["db1", "db2"]) == at_incremental
    count, max_id, txns = writer_rows(other)
    assert count == max_id + 1 and count % TXN_ROWS == 0 and txns == count // TXN_ROWS, (count, max_id, txns)
    assert txns >= before_incremental
    create_db(other, "db9", 10)
    other.checkpoint()
    assert checksums(other, ["db9"])["db9"][0] == 10
    # The log service took the ID allocator's state from the restored hk_data: a new table's ID
    # follows the restored ones instead of starting over (and colliding with them).
    restored_max = other.sql("select max(rel_id) from mo_catalog.mo_tables where reldatabase in ('db1','db2','w')")
    new_id = other.sql("select rel_id from mo_catalog.mo_tables where reldatabase = 'db9' and relname = 't'")
    assert new_id[0][0] > restored_max[0][0], (new_id, restored_max)
    other.stop()

    # The full in place: the prefix is not empty, so --overwrite; the log service's volume emptied.
    target = f"s3://{s3.bucket}/{prefix}/data"
    refused = mobackup(s3, "restore", full["id"], "--repo", str(repo), "--target-s3", target, check=False)
    assert refused.returncode == 1 and "not empty" in refused.stderr
    for entry in mo.data_dir.iterdir():
        subprocess.run(["rm", "-rf", str(entry)], check=True)
    result = json.loads(mobackup(s3, "restore", full["id"], "--repo", str(repo), "--target-s3", target, "--overwrite",
                                 "--local-fs-dir", str(mo.data_dir), "--json").stdout)
    assert result["removed_objects"] > 0  # objects written after the full are gone: exactly the backup's
    mo.start()
    assert user_databases(mo) == {"db1", "db2"}
    assert checksums(mo, ["db1"])["db1"][0] == 200_000
    count, max_id, txns = writer_rows(mo)
    assert count == max_id + 1 and count % TXN_ROWS == 0 and before_full <= txns <= before_incremental + 1
    mo.stop()


@pytest.mark.s3
def test_sharded_ingest_gives_identical_restores_and_a_killed_shard_lists_nothing(
        matrixone_factory: Callable[..., MatrixOne], s3_server: Any, tmp_path: Path) -> None:
    """One staged run, ingested with N = 1, 2, 3 shards into three repositories, restores to three
    byte-identical prefixes. A shard killed mid-way: commit refuses, nothing is listed; the shard run
    again reuses what it had stored, and the commit lists the backup. MatrixOne's BACKUP fails once
    the transient way (its own fault point): the run is staged again in a fresh prefix, and the
    failure reaches the run record and the committed summary."""
    s3, prefix = s3_server, f"s-{uuid.uuid4().hex[:8]}"
    staging = f"s3://{s3.bucket}/{prefix}/staging"
    mo = s3_matrixone(matrixone_factory, s3, prefix)
    mo.start()
    create_db(mo, "db1", 300_000)
    mo.checkpoint()
    repos = {n: tmp_path / f"repo{n}" for n in (1, 2, 3)}
    mo.fail_backup_checkpoints(1)
    staged = json.loads(mobackup(s3, "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root",
                                 "--repo", str(repos[1]), "--staging", staging, "--stage-only", "--json").stdout)
    mo.stop()
    assert len(staged["backup_retries"]) == 1 and "panic" in staged["backup_retries"][0], staged
    # Only the staging that passed stays (with its lease): the failed attempt's prefix is removed.
    assert {k.split("/", 1)[0].removesuffix(".lease") for k in keys(s3, f"{prefix}/staging")} == \
        {staged["staging_url"].rsplit("/", 1)[-1]}
    run_id = staged["run_id"]
    for n in (2, 3):  # the same run, committed into other repositories too
        mobackup(s3, "init", "--repo", str(repos[n]))
        (repos[n] / "runs" / run_id).mkdir(parents=True)
        (repos[n] / "runs" / run_id / "run.json").write_bytes((repos[1] / "runs" / run_id / "run.json").read_bytes())

    # N = 2, shard 1 killed mid-way: slowed down, and killed once its first blob is stored.
    blobs_before = set((repos[2] / "blobs").rglob("*"))
    killed = subprocess.Popen([str(MOBACKUP), "backup", "--online", "--repo", str(repos[2]), "--staging", staging,
                               "--run", run_id, "--shard", "1/2", "--bandwidth-limit", "100K", "--parallelism", "1",
                               "--quiet"], env=_env(s3), start_new_session=True)
    deadline = time.monotonic() + 60
    while not [p for p in set((repos[2] / "blobs").rglob("*")) - blobs_before if p.is_file()]:
        assert killed.poll() is None and time.monotonic() < deadline, "shard 1 stored nothing before it ended"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    mobackup(s3, "backup", "--online", "--repo", str(repos[2]), "--staging", staging, "--run", run_id, "--shard", "0/2")
    refused = mobackup(s3, "commit", run_id, "--shards", "2", "--repo", str(repos[2]), "--staging", staging,
                       check=False)
    assert refused.returncode == 1 and "shard 1 of 2 has not completed" in refused.stderr, refused.stderr
    assert json.loads(mobackup(s3, "list", "--repo", str(repos[2]), "--json").stdout) == []
    retry = json.loads(mobackup(s3, "backup", "--online", "--repo", str(repos[2]), "--staging", staging, "--run",
                                run_id, "--shard", "1/2", "--json").stdout)
    assert 0 < retry["new_bytes"] < retry["size"], retry  # the killed attempt's blobs were reused

    for n in (1, 3):
        for shard in range(n):
            mobackup(s3, "backup", "--online", "--repo", str(repos[n]), "--staging", staging, "--run", run_id,
                     "--shard", f"{shard}/{n}")
    # Every commit checks the parts against the staged tae_list and then removes the staging: the same
    # run committed into three repositories (a device of this test, not a product feature) needs it
    # put back before each later commit.
    staged_copy = keys(s3, f"{prefix}/staging")
    restored: dict[int, dict[str, bytes]] = {}
    for n in (1, 2, 3):
        if n > 1:
            client = s3.client()
            for key, body in staged_copy.items():
                client.put_object(Bucket=s3.bucket, Key=f"{prefix}/staging/{key}", Body=body)
        summary = json.loads(mobackup(s3, "commit", run_id, "--shards", str(n), "--repo", str(repos[n]),
                                      "--staging", staging, "--json").stdout)
        assert summary["id"] == run_id and summary["extra"]["shards"] == n
        assert summary["extra"]["backup_retries"] == staged["backup_retries"]
        target = f"{prefix}/restored{n}"
        hk_dir = tmp_path / f"hk{n}"
        mobackup(s3, "restore", run_id, "--repo", str(repos[n]), "--target-s3", f"s3://{s3.bucket}/{target}",
                 "--local-fs-dir", str(hk_dir))
        restored[n] = keys(s3, target)
        restored[n]["hk_data"] = (hk_dir / "hk_data").read_bytes()
    assert restored[1] == restored[2] == restored[3]
    assert len(restored[1]) > 10
    assert keys(s3, f"{prefix}/staging") == {}, "commit leaves no staging"


@pytest.mark.s3
def test_staging_is_removed_after_failure_kill_and_two_racing_runs_both_restore(
        matrixone_factory: Callable[..., MatrixOne], s3_server: Any, tmp_path: Path) -> None:
    """A BACKUP that MatrixOne cannot write (its endpoint unreachable): a one-line error without
    the secret key, no staging left, nothing listed. A run killed during BACKUP: the next run
    removes its staging (its lease names a dead process). Two runs at once into one repository and
    one staging root: neither removes the other's staging; both are listed and verify."""
    s3, repo, prefix = s3_server, tmp_path / "repo", f"f-{uuid.uuid4().hex[:8]}"
    staging_root = f"{prefix}/staging"
    mo = s3_matrixone(matrixone_factory, s3, prefix)
    mo.start()
    create_db(mo, "db1", 100_000)
    mo.checkpoint()

    failed = mobackup(s3, "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--repo", str(repo),
                      "--staging", f"s3://{s3.bucket}/{staging_root}", "--staging-server-endpoint",
                      "http://127.0.0.1:9", check=False, timeout=900)
    assert failed.returncode == 1 and "refused BACKUP" in failed.stderr, failed.stderr
    assert "in a row" not in failed.stderr, "an unreachable endpoint is no transient failure: never retried"
    assert s3.secret_key not in failed.stderr + failed.stdout
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert keys(s3, staging_root) == {}

    argv = [str(MOBACKUP), "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--repo",
            str(repo), "--staging", f"s3://{s3.bucket}/{staging_root}", "--quiet", "--json"]
    killed = subprocess.Popen(argv, env=_env(s3), start_new_session=True)
    # Killed while MatrixOne stages: once an object beside the lease exists.
    deadline = time.monotonic() + 60
    while not any(not k.endswith(".lease") for k in keys(s3, staging_root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    left = {k.split("/", 1)[0] for k in keys(s3, staging_root)}
    assert left, "the killed run left nothing to clean up (killed too late?)"

    racers = [subprocess.Popen(argv, env=_env(s3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    results = [racer.communicate(timeout=900) for racer in racers]
    for racer, (_out, err) in zip(racers, results, strict=True):
        assert racer.returncode == 0, err
    ids = [json.loads(out)["id"] for out, _ in results]
    mo.stop()
    # The killed run's BACKUP may still have been writing when the racers started: whatever it wrote
    # after their clean-up goes with the next run; the racers' own staging is gone.
    remaining = {k.split("/", 1)[0] for k in keys(s3, staging_root)}
    assert not any(name.removesuffix(".lease") not in {n.removesuffix(".lease") for n in left}
                   for name in remaining), remaining
    listed = json.loads(mobackup(s3, "list", "--repo", str(repo), "--json").stdout)
    assert sorted(b["id"] for b in listed) == sorted(ids)
    for backup_id in ids:
        mobackup(s3, "verify", backup_id, "--repo", str(repo))
    unknown = mobackup(s3, "backup", "--online", "--repo", str(repo), "--staging",
                       f"s3://{s3.bucket}/{staging_root}", "--run", "nonexistent", "--shard", "0/1", check=False)
    assert unknown.returncode == 1 and "runs/nonexistent/run.json" in unknown.stderr, unknown.stderr
