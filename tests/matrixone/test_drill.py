"""`mobackup drill` on the real MatrixOne: a cold and an online backup restored into a scratch
directory, a scratch mo-service started there, the recorded catalog and the user's queries checked,
and the scratch directory and server gone afterwards whatever happened."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mo_server import DEFAULT_VERSION, REPO, MatrixOne, ServerLock, Writer, create_db, wait_ports_free
from mobackup.sample import generate_mo_data

MOBACKUP = REPO / ".venv" / "bin" / "mobackup"


def run(*args: str | Path, timeout: float = 900, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
           "MOBACKUP_SQL_PASSWORD": "111"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([str(MOBACKUP), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def drill(repo: Path, backup_id: str, mo_service: Path, scratch: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """Runs a drill holding the machine's MatrixOne lock (the scratch server uses the fixed ports)."""
    scratch.mkdir(exist_ok=True)
    lock = ServerLock()
    lock.acquire()
    try:
        wait_ports_free()
        proc = run("drill", backup_id, "--repo", repo, "--mo-service", mo_service, "--scratch-dir", scratch,
                   "--json", *extra)
        assert not _listening(6001), "the scratch MatrixOne outlived the drill"
    finally:
        lock.release()
    assert list(scratch.iterdir()) == [], "the scratch directory outlived the drill"
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def test_drills_of_a_cold_and_an_online_backup_pass_and_a_wrong_expectation_fails(
        matrixone_factory: Callable[..., MatrixOne], tmp_path: Path) -> None:
    """The source runs under host name mo-src (as a StatefulSet pod would): the cold copy's log service
    data is bound to it, so the drill must run its scratch server under that name. The online backup
    is taken under a writer: its catalog counts rows at BACKUPTS, and the restored data must match."""
    repo, scratch = tmp_path / "repo", tmp_path / "scratch"
    mo = matrixone_factory(DEFAULT_VERSION, hostname="mo-src")
    mo.start()
    create_db(mo, "db1", 2000)
    create_db(mo, "db2", 3000)
    mo.sql("create view db2.v as select id from db2.t where id > 10")
    mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
    writer = Writer().start()
    try:
        online = run("backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--data-dir",
                     mo.data_dir, "--repo", repo, "--source", "mo", "--json", "--quiet")
    finally:
        writer.stop()
    assert online.returncode == 0, online.stderr
    online_summary = json.loads(online.stdout)
    catalog = online_summary["extra"]["catalog"]
    # At BACKUPTS, or one nanosecond later where the server's read at BACKUPTS sees nothing (v1.3).
    physical = int(online_summary["backup_ts"].partition("-")[0])
    assert catalog["rows_exact"] is True, catalog
    assert catalog["rows_at"] in (online_summary["backup_ts"], f"{physical + 1}-0"), catalog
    assert catalog["databases"]["db1"] == {"t": {"type": "table", "rows": 2000}}
    assert catalog["databases"]["db2"] == {"t": {"type": "table", "rows": 3000}, "v": {"type": "view", "rows": None}}
    backed_up_writes = catalog["databases"]["w"]["t"]["rows"]
    assert 0 < backed_up_writes < writer.committed * 100, "the count is not as of BACKUPTS"
    mo.checkpoint()
    mo.stop()
    cold = run("backup", "--data-dir", mo.data_dir, "--repo", repo, "--source", "mo-cold", "--json", "--quiet")
    assert cold.returncode == 0, cold.stderr
    cold_id = json.loads(cold.stdout)["id"]

    rc, result, err = drill(repo, cold_id, mo.home / "mo-service", scratch,
                            "--check-sql", "select count(*) from db1.t", "--expect", "2000",
                            "--check-sql", "select count(*) from w.t", "--expect", str(writer.committed * 100))
    assert rc == 0, err
    assert result["ok"] and result["hostname"] == "mo-src" and result["backup_kind"] == "cold"
    assert result["mo_version"] and "catalog" not in checks(result)  # no SQL at backup time: no catalog
    assert checks(result)["query 2"]["got"] == str(writer.committed * 100)
    print(f"\ncold drill: restore {result['restore_seconds']} s, start {result['start_seconds']} s, checks "
          f"{result['check_seconds']} s, total {result['total_seconds']} s, restored {result['restored_bytes']} B, "
          f"scratch {result['scratch_bytes']} B")

    rc, result, err = drill(repo, online_summary["id"], mo.home / "mo-service", scratch)
    assert rc == 0, err
    got = checks(result)
    assert result["ok"] and result["backup_kind"] == "online" and result["hostname"] is None
    assert got["rows w.t"] == {"name": "rows w.t", "ok": True, "expected": backed_up_writes, "got": backed_up_writes}
    assert got["rows db2.t"]["got"] == 3000 and got["databases"]["ok"] and got["tables"]["ok"]
    print(f"online drill: restore {result['restore_seconds']} s, start {result['start_seconds']} s, checks "
          f"{result['check_seconds']} s, total {result['total_seconds']} s, restored {result['restored_bytes']} B, "
          f"scratch {result['scratch_bytes']} B")

    rc, result, err = drill(repo, online_summary["id"], mo.home / "mo-service", scratch,
                            "--check-sql", "select count(*) from db1.t where id <= 10", "--expect", "11")
    assert rc == 1 and not result["ok"]
    assert checks(result)["query 1"] == {
        "name": "query 1", "ok": False, "expected": "11", "got": "10",
        "detail": "'select count(*) from db1.t where id <= 10': expected '11', got '10'"}
    assert "expected '11', got '10'" in err


def _tiny_backup(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    data = generate_mo_data(tmp_path / "mo-data", seed=3, objects=4)
    proc = run("backup", "--data-dir", data, "--repo", repo, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return repo, json.loads(proc.stdout)["id"]


def test_a_damaged_blob_fails_the_drill_with_the_reason_and_cleans_up(
        mo_install: Callable[[str], Path], tmp_path: Path) -> None:
    repo, backup_id = _tiny_backup(tmp_path)
    victim = max((p for p in (repo / "blobs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    rc, result, err = drill(repo, backup_id, mo_install(DEFAULT_VERSION) / "mo-service", tmp_path / "scratch")
    assert rc == 1 and not result["ok"]
    assert result["checks"][-1]["name"] == "restore" and result["start_seconds"] is None
    assert victim.name in result["reason"] and victim.name in err, result["reason"]


def test_a_server_that_never_answers_fails_at_the_time_limit_and_is_stopped(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "etc" / "launch").mkdir(parents=True)
    # Never read by the fake server; the drill points the CN's Unix socket into its scratch directory.
    (fake / "etc" / "launch" / "launch.toml").write_text('cnservices = ["./etc/launch/cn.toml"]\n')
    (fake / "etc" / "launch" / "cn.toml").write_text('service-type = "CN"\n')
    pid_file = tmp_path / "pid"
    (fake / "mo-service").write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    (fake / "mo-service").chmod(0o755)
    repo, backup_id = _tiny_backup(tmp_path)
    started = time.monotonic()
    rc, result, err = drill(repo, backup_id, fake / "mo-service", tmp_path / "scratch", "--timeout", "4")
    assert rc == 1 and not result["ok"]
    assert 4 <= result["start_seconds"] < 30 and time.monotonic() - started < 90
    assert "did not answer SQL" in result["reason"] and "time limit" in err
    assert not _running(int(pid_file.read_text())), "the scratch server outlived the drill"


def _running(pid: int) -> bool:
    """Alive and not a zombie (this container's init may not reap orphans at once)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_drill_refuses_while_a_matrixone_holds_the_ports_without_a_network_namespace(
        mo_install: Callable[[str], Path], tmp_path: Path) -> None:
    """Without bubblewrap (here: not on the PATH) the scratch server would share the host's ports: it
    refuses up front. With it, it runs beside the live server (test_scoped_restore.py)."""
    repo, backup_id = _tiny_backup(tmp_path)
    lock = ServerLock()
    lock.acquire()
    try:
        wait_ports_free()
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # earlier connections in TIME_WAIT
            squatter.bind(("127.0.0.1", 6001))
            squatter.listen()
            proc = run("drill", backup_id, "--repo", repo, "--mo-service", mo_install(DEFAULT_VERSION) / "mo-service",
                       "--scratch-dir", tmp_path, path=str(MOBACKUP.parent))
    finally:
        lock.release()
    assert proc.returncode == 1 and "port(s) 6001 in use" in proc.stderr, proc.stderr
    assert "network namespace of its own" in proc.stderr
    assert not list(tmp_path.glob("mobackup-drill-*"))
