"""Online backups (`mobackup backup --online`) of the real, running MatrixOne through its own BACKUP
statement: no downtime for a writer, a restorable exact prefix of whole transactions, incremental
staging, staging always removed, and the faults a user meets (unreachable server, wrong password,
not the sys account, a server without BACKUP, a staged copy that does not match its list)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest

from mo_server import (
    AGGRESSIVE_GC,
    DEFAULT_VERSION,
    REPO,
    TXN_ROWS,
    MatrixOne,
    Writer,
    checksums,
    connect,
    create_db,
    insert_rows,
    writer_rows,
)
from mobackup.engine.errors import MobackupError
from mobackup.engine.online import STAGING_PREFIX, parse_staged, verify_staged

MOBACKUP = REPO / ".venv" / "bin" / "mobackup"


def online_backup(mo: MatrixOne, repo: Path, *extra: str, password: str = "111", user: str = "root",
                  port: int = 6001, check: bool = True) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
           "MOBACKUP_SQL_PASSWORD": password}
    proc = subprocess.run([str(MOBACKUP), "backup", "--online", "--sql-host", "127.0.0.1", "--sql-port", str(port),
                           "--sql-user", user, "--data-dir", str(mo.data_dir), "--repo", str(repo),
                           "--source", "mo", "--json", "--quiet", *extra],
                          capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
        return proc, json.loads(proc.stdout)
    return proc, {}


def test_online_backup_under_a_writer_restores_an_exact_prefix_on_another_host(
        matrixone_factory: Callable[..., MatrixOne], tmp_path: Path) -> None:
    """The writer sees no error and no pause over 1 s; the full and the incremental restore to an exact
    prefix of whole transactions holding everything committed before the backup was requested; the
    restored data starts under another host name (an online backup holds no WAL), takes writes and
    survives restarts."""
    repo = tmp_path / "repo"
    mo = matrixone_factory(DEFAULT_VERSION, hostname="mo-0")
    mo.start()
    create_db(mo, "db1", 300_000)
    mo.checkpoint()
    mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
    writer = Writer().start()
    try:
        before_full = writer.committed
        _, full = online_backup(mo, repo)
        insert_rows(mo, "db1", 1_000_001, 2000)
        before_incremental = writer.committed
        _, incremental = online_backup(mo, repo)
        time.sleep(1)
    finally:
        writer.stop()
    assert writer.errors == []
    assert writer.longest_pause < 1.0, f"the writer paused {writer.longest_pause:.2f} s"
    at_incremental_db1 = checksums(mo, ["db1"])
    mo.stop()

    assert full["type"] == "full" and full["extra"]["kind"] == "online"
    assert incremental["type"] == "incremental" and incremental["base_id"] == full["id"]
    # Only files new since the full were staged for the incremental; the rest came from the full's list.
    assert incremental["extra"]["staged_files"] < incremental["file_count"]
    assert incremental["extra"]["staged_bytes"] < incremental["size_bytes"] / 2
    assert not list(mo.data_dir.glob(f"{STAGING_PREFIX}*")), "staging left behind"
    print(f"\nonline full: {full['size_bytes']} B, staged {full['extra']['staged_bytes']} B in "
          f"{full['duration_seconds']} s (BACKUP {full['extra']['matrixone_backup_seconds']} s); incremental: "
          f"staged {incremental['extra']['staged_bytes']} B, new {incremental['new_bytes']} B in "
          f"{incremental['duration_seconds']} s; writer's longest pause {writer.longest_pause:.3f} s")

    for backup, requested_after in ((full, before_full), (incremental, before_incremental)):
        other = matrixone_factory(DEFAULT_VERSION, hostname="another-host")
        subprocess.run([str(MOBACKUP), "restore", backup["id"], "--repo", str(repo), "--target", str(other.data_dir),
                        "--hostname", "another-host", "--quiet"], check=True, capture_output=True, timeout=300)
        assert sorted(p.name for p in other.data_dir.iterdir()) == ["local", "shared"]
        assert sorted(p.name for p in (other.data_dir / "local").iterdir()) == ["hk_data"]
        other.start()
        count, max_id, txns = writer_rows(other)
        assert count == max_id + 1 and count % TXN_ROWS == 0 and txns == count // TXN_ROWS, (count, max_id, txns)
        assert txns >= requested_after
        if backup is incremental:
            assert checksums(other, ["db1"]) == at_incremental_db1
        insert_rows(other, "db1", 900_001, 10)
        other.checkpoint()
        after = checksums(other, ["db1"])
        other.restart()
        assert checksums(other, ["db1"]) == after
        other.stop()


def test_second_online_full_of_an_unchanged_database_stores_almost_nothing(
        matrixone: MatrixOne, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    """Almost: each BACKUP forces a checkpoint and MatrixOne keeps writing its own system tables, so
    a few new small objects are stored; the user's data is not stored again."""
    matrixone.start()
    create_db(matrixone, "db1", 300_000)
    _, first = online_backup(matrixone, repo, "--type", "full")
    _, second = online_backup(matrixone, repo, "--type", "full")
    assert second["type"] == "full"
    assert second["new_bytes"] < first["new_bytes"] / 5, (first["new_bytes"], second["new_bytes"])


def test_a_killed_runs_staging_is_removed_by_the_next_run_and_never_backed_up_cold(
        matrixone: MatrixOne, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    matrixone.start()
    create_db(matrixone, "db1", 100)
    leftover = matrixone.data_dir / f"{STAGING_PREFIX}deadbeef0000"
    (leftover / "tae").mkdir(parents=True)
    (leftover / "tae" / "object").write_bytes(b"x" * 4096)
    (matrixone.data_dir / f"{leftover.name}.lock").touch()  # its owner is gone: the lock is free
    online_backup(matrixone, repo)
    assert not list(matrixone.data_dir.glob(f"{STAGING_PREFIX}*"))

    leftover.mkdir()
    (leftover / "x").write_bytes(b"y")
    matrixone.stop()
    cold = subprocess.run([str(MOBACKUP), "backup", "--data-dir", str(matrixone.data_dir), "--repo", str(repo),
                           "--source", "cold", "--json", "--quiet"], capture_output=True, text=True, check=True)
    restored = tmp_path / "restored"
    subprocess.run([str(MOBACKUP), "restore", json.loads(cold.stdout)["id"], "--repo", str(repo), "--target",
                    str(restored), "--quiet"], capture_output=True, text=True, check=True)
    assert (restored / "shared").is_dir()
    assert not list(restored.glob(f"{STAGING_PREFIX}*")), "a cold backup copied an online staging directory"


def test_a_staged_copy_that_does_not_match_tae_list_is_refused(matrixone: MatrixOne, tmp_path: Path) -> None:
    """MatrixOne's real BACKUP output, then damaged as a failing disk or a lost object would: the check
    names the file."""
    matrixone.start()
    create_db(matrixone, "db1", 5000)
    staging = tmp_path / "staged"
    matrixone.sql(f"backup '0' filesystem '{staging}' parallelism '2'")
    staged = parse_staged(staging)
    assert verify_staged(staging, staged) > 0
    victim = next(f for f in staged.files if f.need_copy and f.sha256 and f.size > 100)
    path = staging / "tae" / victim.path
    data = bytearray(path.read_bytes())
    data[50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MobackupError, match=f"{victim.path} does not match its SHA-256"):
        verify_staged(staging, staged)
    path.unlink()
    with pytest.raises(MobackupError, match=f"{victim.path} is listed but was not written"):
        verify_staged(staging, staged)


def test_online_backup_faults_give_a_reason_and_store_nothing(
        matrixone: MatrixOne, tmp_path: Path, mysql_server: Any) -> None:
    repo = tmp_path / "repo"
    matrixone.start()
    matrixone.sql("create account acc1 admin_name 'admin' identified by 'acc-secret-1'")

    proc, _ = online_backup(matrixone, repo, port=9, check=False)
    assert proc.returncode == 1 and "cannot connect to MatrixOne at 127.0.0.1:9" in proc.stderr

    proc, _ = online_backup(matrixone, repo, password="wrong-pass-7", check=False)
    assert proc.returncode == 1 and "Access denied" in proc.stderr and "wrong-pass-7" not in proc.stderr

    proc, _ = online_backup(matrixone, repo, user="acc1#admin", password="acc-secret-1", check=False)
    assert proc.returncode == 1 and "needs the sys account" in proc.stderr and "'acc1'" in proc.stderr

    # A MySQL-protocol server without BACKUP (MariaDB, the suite's real SQL server): the reason names it.
    proc, _ = online_backup(matrixone, repo, user=mysql_server.user, password=mysql_server.password,
                            port=mysql_server.port, check=False)
    with pymysql.connect(host=mysql_server.host, port=mysql_server.port, user=mysql_server.user,
                         password=mysql_server.password) as conn, conn.cursor() as cur:
        cur.execute("select version()")
        version = cur.fetchone()[0]
    assert proc.returncode == 1 and "does not support" in proc.stderr and version in proc.stderr, proc.stderr
    assert not repo.exists() or not list((repo / "backups").glob("*")), "a failed online backup was listed"
    assert not list(matrixone.data_dir.glob(f"{STAGING_PREFIX}*"))


GC_TTL_SECONDS = 20


def test_online_backup_holds_while_disk_gc_deletes_objects(
        matrixone_factory: Callable[..., MatrixOne], tmp_path: Path) -> None:
    """MatrixOne's GC runs every 2 s and deletes objects soon after they become garbage, while a writer
    commits and a churn thread deletes rows and forces checkpoints (garbage for the GC). Backups taken
    meanwhile succeed and the writer never stalls (mobackup's part). The last backup should restore
    to an exact prefix of the writer's transactions; with this extreme cleaner MatrixOne's own BACKUP
    (v2.2.2, and the 1.3 line too) sometimes writes a copy it cannot start on, which is reported as an expected failure
    (xfail) with the reason, not hidden. A BACKUP that panics because a forced checkpoint runs beside
    it is run again by mobackup (test_a_backup_matrixone_fails_transiently_is_taken_again_in_a_fresh_staging)."""
    repo = tmp_path / "repo"
    mo = matrixone_factory(DEFAULT_VERSION)
    tn = mo.workdir / "etc" / "launch" / "tn.toml"
    tn.write_text(tn.read_text() + AGGRESSIVE_GC)
    mo.start()
    create_db(mo, "db1", 200_000)
    mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
    seen: set[str] = set()  # every object file seen during the test
    stop = threading.Event()
    churn_errors: list[str] = []

    def churn() -> None:
        i = 0
        with connect() as conn, conn.cursor() as cur:
            while not stop.is_set():
                try:
                    cur.execute(f"delete from db1.t where id % 50 = {i % 50}")
                    cur.execute("select mo_ctl('dn','checkpoint','')")
                    if i % 3 == 0:
                        cur.execute("select mo_ctl('dn','globalcheckpoint','')")
                except pymysql.MySQLError as error:
                    churn_errors.append(str(error))
                i += 1
                seen.update(p.name for p in (mo.data_dir / "shared").iterdir() if p.is_file())
                time.sleep(0.5)

    thread = threading.Thread(target=churn, daemon=True)
    writer = Writer().start()
    thread.start()
    # The backups start once the cleaner has deleted an object: it is at work during them (v2.2.2 began
    # after about GC_TTL_SECONDS, the 1.3 line after a minute or more).
    deadline = time.monotonic() + GC_TTL_SECONDS + 180
    while not seen - {p.name for p in (mo.data_dir / "shared").iterdir() if p.is_file()}:
        assert time.monotonic() < deadline and thread.is_alive(), f"the disk cleaner deleted nothing: {churn_errors}"
        time.sleep(1)
    try:
        summaries = [online_backup(mo, repo, "--type", "full")[1] for _ in range(3)]
        before_last = writer.committed
    finally:
        stop.set()
        thread.join(timeout=60)
        writer.stop()
    objects_after = {p.name for p in (mo.data_dir / "shared").iterdir() if p.is_file()}
    mo.stop()
    assert writer.errors == [] and churn_errors == []
    assert seen - objects_after, "the disk cleaner deleted no object during the test"

    other = matrixone_factory(DEFAULT_VERSION)
    subprocess.run([str(MOBACKUP), "restore", summaries[-1]["id"], "--repo", str(repo), "--target",
                    str(other.data_dir), "--quiet"], check=True, capture_output=True, timeout=300)
    try:
        other.start()
    except RuntimeError:
        if "is not found" in other.log_path.read_text(errors="replace"):
            # Seen in 2 of 3 runs: the copy BACKUP wrote names an object the cleaner had deleted,
            # although BACKUP reported no skipped file. Not detectable from the staged copy (the
            # object is in neither it nor tae_list); a restore drill finds it. docs/operations.md.
            pytest.xfail(f"MatrixOne {mo.version}: BACKUP under a disk cleaner that runs and merges checkpoints "
                         "every 2 s wrote a copy naming a deleted object")
        raise
    count, max_id, txns = writer_rows(other)
    if count % TXN_ROWS:
        # Seen once in CI (826,076 rows: 76 of one 100-row statement): the same symptom family as
        # above, only under this forced cleaner; without it every online restore (CLI, operator,
        # S3-resident) is an exact prefix of whole transactions. docs/operations.md.
        pytest.xfail(f"MatrixOne {mo.version}: BACKUP under a disk cleaner that runs and merges checkpoints every 2 s "
                     f"wrote a copy with a torn transaction ({count} rows)")
    assert count == max_id + 1, (count, max_id)
    assert txns <= before_last
    assert other.sql("select count(*) from db1.t")[0][0] > 0


def test_a_backup_matrixone_fails_transiently_is_taken_again_in_a_fresh_staging(
        matrixone: MatrixOne, tmp_path: Path) -> None:
    """MatrixOne v1.3's BACKUP panics when its TN cannot take the backup checkpoint (a checkpoint or
    flush running beside it; CI met it under the disk-GC test's churn) and leaves part of a copy in
    its target. The real server's own fault point makes its next BACKUPs fail so: failing twice, the
    third attempt is published, with both failures in its summary and on stderr; failing three times,
    the run fails saying so and lists nothing. No staging is left either way."""
    repo = tmp_path / "repo"
    matrixone.start()
    create_db(matrixone, "db1", 20_000)
    matrixone.fail_backup_checkpoints(2)
    proc, summary = online_backup(matrixone, repo)
    retries = summary["extra"]["backup_retries"]
    assert len(retries) == 2 and all("panic" in reason and "\n" not in reason for reason in retries), retries
    assert proc.stderr.count("MatrixOne's BACKUP failed and was run again") == 2, proc.stderr
    assert not list(matrixone.data_dir.glob(f"{STAGING_PREFIX}*"))
    verified = subprocess.run([str(MOBACKUP), "verify", summary["id"], "--repo", str(repo), "--quiet"],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr

    matrixone.fail_backup_checkpoints(3)
    proc, _ = online_backup(matrixone, repo, check=False)
    assert proc.returncode == 1 and "panic" in proc.stderr and "3 times in a row" in proc.stderr, proc.stderr
    assert not list(matrixone.data_dir.glob(f"{STAGING_PREFIX}*"))
    listed = subprocess.run([str(MOBACKUP), "list", "--repo", str(repo), "--json"], capture_output=True, text=True)
    assert [b["id"] for b in json.loads(listed.stdout)] == [summary["id"]]


def test_a_backup_killed_mid_ingest_lists_nothing_and_the_retry_succeeds(
        matrixone: MatrixOne, tmp_path: Path) -> None:
    """SIGKILL while the staged copy is being stored (slowed by a bandwidth limit): nothing is listed,
    the staging directory stays until the next run, which removes it and succeeds."""
    repo = tmp_path / "repo"
    matrixone.start()
    create_db(matrixone, "db1", 300_000)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
           "MOBACKUP_SQL_PASSWORD": "111"}
    proc = subprocess.Popen([str(MOBACKUP), "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root",
                             "--data-dir", str(matrixone.data_dir), "--repo", str(repo), "--source", "mo",
                             "--quiet", "--bandwidth-limit", "500K"], env=env)
    deadline = time.monotonic() + 120
    while not list(repo.glob("blobs/*/*")):  # the ingest has begun storing blobs
        assert proc.poll() is None and time.monotonic() < deadline, "the backup ended before it could be killed"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert list(matrixone.data_dir.glob(f"{STAGING_PREFIX}*")), "a SIGKILL cannot clean up: the next run must"
    listed = subprocess.run([str(MOBACKUP), "list", "--repo", str(repo), "--json"], capture_output=True, text=True)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    _, retry = online_backup(matrixone, repo)
    assert retry["type"] == "full" and retry["extra"]["kind"] == "online"
    assert not list(matrixone.data_dir.glob(f"{STAGING_PREFIX}*"))


def test_a_staged_file_damaged_before_the_ingest_is_never_published(matrixone: MatrixOne, tmp_path: Path) -> None:
    """The SHA-256 checks run beside the ingest; a mismatch must still stop the backup before it is
    published. The session is the real one, wrapped to damage one staged object right after
    MatrixOne's BACKUP returned (a disk error between the two; nothing else can be made to do it)."""
    from mobackup.engine.mosql import MatrixOneSession, SqlEndpoint
    from mobackup.engine.online import run_online_backup
    from mobackup.engine.repository import RepositoryOptions, open_repository

    matrixone.start()
    create_db(matrixone, "db1", 100_000)

    class DamagingSession(MatrixOneSession):
        def backup_to_directory(self, path: str, parallelism: int, since_ts: str | None = None) -> None:
            super().backup_to_directory(path, parallelism, since_ts)
            victim = max((p for p in (Path(path) / "tae").iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0xFF
            victim.write_bytes(bytes(data))

    repo = open_repository(RepositoryOptions(url=str(tmp_path / "repo")), create=True)
    with DamagingSession(SqlEndpoint("127.0.0.1", 6001, "root", "111")) as session, \
            pytest.raises(MobackupError, match="does not match its SHA-256"):
        run_online_backup(repo, matrixone.data_dir, session, source="mo")
    assert repo.list_backups() == []
    assert not list(matrixone.data_dir.glob(f"{STAGING_PREFIX}*"))
