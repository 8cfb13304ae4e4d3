"""S3 Object Lock, enforced by the real S3 server (SeaweedFS), in both modes: a repository created
with --lock-days writes every blob, file list and summary with a retention date, extends the blobs
newer backups still use, refuses to delete what the lock holds (and says until when), deletes it for
real once the date passed, and verify reports objects deleted early or replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from mobackup.engine.backup import run_backup
from mobackup.engine.copy import copy_backups
from mobackup.engine.errors import MobackupError
from mobackup.engine.model import parse_iso, utc_now
from mobackup.engine.objectlock import RetentionError
from mobackup.engine.prune import RetentionPolicy, delete_backup, prune
from mobackup.engine.repository import Repository, RepositoryOptions, blob_key, files_key, summary_key
from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import snapshot_tree

LOCK_SECONDS = 12.0  # long enough for the steps before the date, short enough to wait for it


@pytest.fixture(scope="module")
def locked_bucket(s3_server: Any) -> str:
    name = f"locked-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def refused(client: Any, bucket: str, key: str, version_id: str, **extra: Any) -> str:
    """The error code of a delete of one version (that must fail)."""
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.delete_object(Bucket=bucket, Key=key, VersionId=version_id, **extra)
    return str(caught.value.response["Error"]["Code"])


def test_init_refuses_a_bucket_without_object_lock_and_a_directory(env: Any, tmp_path: Path) -> None:
    with pytest.raises(MobackupError, match="Object Lock enabled"):
        Repository.create(RepositoryOptions.from_env(f"s3://{env.bucket}/nolock-{uuid.uuid4().hex[:6]}",
                                                     lock_days=1))
    with pytest.raises(MobackupError, match="Object Lock enabled"):
        Repository.create(RepositoryOptions.from_env(str(tmp_path / "repo"), lock_days=1))


def test_object_lock_in_compliance_and_governance_modes(env: Any, locked_bucket: str, tmp_path: Path) -> None:
    client = env.client()
    shared, first_only, later = (bytes([n]) * 3000 for n in (1, 2, 3))
    repos: dict[str, Repository] = {}
    firsts: dict[str, Any] = {}
    for mode in ("COMPLIANCE", "GOVERNANCE"):
        url = f"s3://{locked_bucket}/{mode.lower()}-{uuid.uuid4().hex[:6]}"
        repo = Repository.create(RepositoryOptions.from_env(url, lock_days=LOCK_SECONDS / 86400, lock_mode=mode,
                                                            encryption_key="k"))
        assert repo.config["object_lock"] == {"mode": mode, "days": LOCK_SECONDS / 86400}
        repos[mode] = repo
        firsts[mode] = run_backup(repo, write_tree(tmp_path / mode / "1", {"s": shared, "f": first_only}), source="db")

    def version(repo: Repository, key: str) -> tuple[str, str, Any]:
        full = f"{repo.backend.prefix}/{key}"  # type: ignore[attr-defined]
        head = client.head_object(Bucket=locked_bucket, Key=full)
        return full, head["VersionId"], head

    for mode, repo in repos.items():
        first = firsts[mode]
        until = parse_iso(first.extra["locked_until"])
        assert first.extra["lock_mode"] == mode and until > utc_now()
        for digest, _ in repo.blob_sizes():
            _, _, head = version(repo, blob_key(digest))
            assert head["ObjectLockMode"] == mode
            assert abs(head["ObjectLockRetainUntilDate"] - until) < timedelta(seconds=2)
        # A delete of a version with the repository's own keys fails until the date: in both modes.
        for key in (summary_key(first.id), files_key(first.id)):
            full, version_id, head = version(repo, key)
            assert head["ObjectLockMode"] == mode
            assert refused(client, locked_bucket, full, version_id) == "AccessDenied"
        # mobackup neither attempts it nor loses the backup.
        with pytest.raises(RetentionError, match=f"backup {first.id} is under S3 Object Lock \\({mode}\\) until"):
            delete_backup(repo, first.id)
        assert [s.id for s in repo.list_backups()] == [first.id]

    # Governance can be bypassed by whoever has the permission (here the same keys); compliance not.
    for mode, repo in repos.items():
        own = next(r["chunks"][0] for r in repo.entries(firsts[mode]) if r["path"] == "f")
        full, version_id, _ = version(repo, blob_key(own))
        if mode == "COMPLIANCE":
            assert refused(client, locked_bucket, full, version_id, BypassGovernanceRetention=True) == "AccessDenied"
        else:
            client.delete_object(Bucket=locked_bucket, Key=full, VersionId=version_id, BypassGovernanceRetention=True)
            report = verify_backup(repo, firsts[mode].id)
            assert not report.ok and f"{blob_key(own)} is missing" in "\n".join(report.problems)

    # A newer backup extends the retention of the blobs it still uses; prune keeps the locked one.
    seconds: dict[str, Any] = {}
    for mode, repo in repos.items():
        time.sleep(1.0)
        second = seconds[mode] = run_backup(repo, write_tree(tmp_path / mode / "2", {"s": shared, "l": later}),
                                            source="db")
        until2 = parse_iso(second.extra["locked_until"])
        assert until2 > parse_iso(firsts[mode].extra["locked_until"])
        shared_digest = next(r["chunks"][0] for r in repo.entries(second) if r["path"] == "s")
        _, _, head = version(repo, blob_key(shared_digest))
        assert abs(head["ObjectLockRetainUntilDate"] - until2) < timedelta(seconds=2)
        result = prune(repo, RetentionPolicy(keep_last=1))
        assert result.deleted == [] and result.kept[firsts[mode].id].startswith("object lock until")
        assert verify_backup(repo, second.id).ok

    # Tampering: a delete marker over a locked blob, an unlocked version written over another.
    for mode, repo in repos.items():
        second = seconds[mode]
        digests = [r["chunks"][0] for r in repo.entries(second) if r["type"] == "file" and r["chunks"]]
        hidden, replaced = digests[0], digests[1]
        full, _, _ = version(repo, blob_key(hidden))
        client.delete_object(Bucket=locked_bucket, Key=full)  # allowed: only adds a marker
        client.put_object(Bucket=locked_bucket, Key=version(repo, blob_key(replaced))[0], Body=b"forged")
        report = verify_backup(repo, second.id)
        text = "\n".join(report.problems)
        assert not report.ok and "deleted early: a delete marker hides its locked versions" in text
        assert f"{blob_key(replaced)} is not under Object Lock retention" in text
        assert set(report.damaged_blobs) == {hidden, replaced}
        # The locked versions are all there: removing the marker and the forged version heals it.
        versions = client.list_object_versions(Bucket=locked_bucket, Prefix=f"{repo.backend.prefix}/blobs/")  # type: ignore[attr-defined]
        for marker in versions.get("DeleteMarkers", []):
            client.delete_object(Bucket=locked_bucket, Key=marker["Key"], VersionId=marker["VersionId"])
        forged = next(v for v in versions["Versions"] if v["IsLatest"] and v["Key"].endswith(replaced))
        client.delete_object(Bucket=locked_bucket, Key=forged["Key"], VersionId=forged["VersionId"])
        assert verify_backup(repo, second.id).ok

    # Once the date has passed the first backup is deleted, and its own blob for real (no version left).
    wait = max(parse_iso(f.extra["locked_until"]) for f in firsts.values()) - utc_now()
    time.sleep(max(0.0, wait.total_seconds()) + 1.0)
    for mode, repo in repos.items():
        first = firsts[mode]
        own = next(r["chunks"][0] for r in repo.entries(first) if r["path"] == "f")
        result = delete_backup(repo, first.id)
        bypassed = mode == "GOVERNANCE"  # its own blob is gone already
        assert result.deleted == [first.id] and result.blobs_removed == (0 if bypassed else 1)
        assert result.objects_held == 0
        full = f"{repo.backend.prefix}/{blob_key(own)}"  # type: ignore[attr-defined]
        left = client.list_object_versions(Bucket=locked_bucket, Prefix=full)
        assert not left.get("Versions") and not left.get("DeleteMarkers")
        run_restore(repo, seconds[mode].id, tmp_path / mode / "restored")
        assert snapshot_tree(tmp_path / mode / "restored") == snapshot_tree(tmp_path / mode / "2")


def test_cli_init_with_lock_and_a_copy_into_it_is_retained(env: Any, locked_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{locked_bucket}/copies-{uuid.uuid4().hex[:6]}"
    mobackup = str(Path(sys.executable).with_name("mobackup"))
    created = json.loads(subprocess.run([mobackup, "init", "--repo", url, "--lock-days", "1", "--lock-mode",
                                         "governance", "--json"], env={**os.environ, **env.env()},
                                        capture_output=True, text=True, check=True).stdout)
    assert created["object_lock"] == {"mode": "GOVERNANCE", "days": 1.0}
    source = Repository.create(RepositoryOptions.from_env(str(tmp_path / "src")))
    backup = run_backup(source, write_tree(tmp_path / "data", {"a": b"a" * 5000, "b": b"b" * 100}), source="db")
    target = Repository.open(RepositoryOptions.from_env(url))
    assert copy_backups(source, target).copied == [backup.id]
    copied = target.load_summary(backup.id)
    until = parse_iso(copied.extra["locked_until"])
    assert timedelta(hours=23) < until - utc_now() <= timedelta(days=1)
    for key in [summary_key(backup.id), files_key(backup.id), *(blob_key(d) for d, _ in target.blob_sizes())]:
        mode, retained = target.backend.retention(key)  # type: ignore[attr-defined]
        assert mode == "GOVERNANCE" and abs(retained - until) < timedelta(seconds=2)
    with pytest.raises(RetentionError, match="until"):
        delete_backup(target, backup.id)
    assert verify_backup(target, backup.id).ok

    # `copy --to-lock-days` creates a locked target; an existing target's setting is not changed.
    url2 = f"s3://{locked_bucket}/copies-{uuid.uuid4().hex[:6]}"
    copy = [mobackup, "copy", "--all", "--from", str(tmp_path / "src"), "--to", url2, "--to-lock-days", "2", "--json"]
    done = json.loads(subprocess.run(copy, env={**os.environ, **env.env()}, capture_output=True, text=True,
                                     check=True).stdout)
    assert done["copied"] == [backup.id]
    assert Repository.open(RepositoryOptions.from_env(url2)).config["object_lock"] == {"mode": "COMPLIANCE",
                                                                                       "days": 2.0}
    copy[copy.index("2")] = "3"
    refused = subprocess.run(copy, env={**os.environ, **env.env()}, capture_output=True, text=True)
    assert refused.returncode == 1 and "created with COMPLIANCE for 2 days, not the asked COMPLIANCE for 3 days" \
        in refused.stderr


def test_a_backup_never_publishes_over_a_blob_deleted_early(env: Any, locked_bucket: str, tmp_path: Path) -> None:
    """An incremental reuses its base's chunk lists without reading the blobs; under Object Lock,
    extending their retention finds one hidden by a delete marker, and the backup is not published."""
    client = env.client()
    repo = Repository.create(RepositoryOptions.from_env(f"s3://{locked_bucket}/early-{uuid.uuid4().hex[:6]}",
                                                        lock_days=1))
    data = write_tree(tmp_path / "data", {"a": b"a" * 4000, "b": b"b" * 4000})
    first = run_backup(repo, data, source="db")
    digest = next(r["chunks"][0] for r in repo.entries(first) if r["path"] == "a")
    full = f"{repo.backend.prefix}/{blob_key(digest)}"  # type: ignore[attr-defined]
    marker = client.delete_object(Bucket=locked_bucket, Key=full)["VersionId"]
    with pytest.raises(MobackupError, match=blob_key(digest)):
        run_backup(repo, data, source="db")
    assert [s.id for s in repo.list_backups()] == [first.id]
    client.delete_object(Bucket=locked_bucket, Key=full, VersionId=marker)  # the locked version is back
    second = run_backup(repo, data, source="db")
    assert second.type == "incremental" and verify_backup(repo, second.id).ok


def test_multipart_writes_under_object_lock_carry_part_checksums(env: Any, locked_bucket: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes over the multipart threshold (a file list, a large blob) go up in parts through
    botocore (engine/s3.py write_parts): under Object Lock every part carries its CRC32 and the
    completion lists them, and the object is retained as a single PUT's would be."""
    from mobackup.engine import s3

    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(s3, "MULTIPART_CHUNK", 5 << 20)
    backend = s3.S3Backend(locked_bucket, f"parts-{uuid.uuid4().hex[:8]}", endpoint=env.endpoint,
                           region=env.region, path_style=True)
    until = utc_now() + timedelta(seconds=LOCK_SECONDS)
    big = os.urandom((12 << 20) + 11)
    path = tmp_path / "files"
    path.write_bytes(big)
    backend.write_file("files", path, retain=("GOVERNANCE", until))
    backend.write("blob", memoryview(big)[: (11 << 20)], retain=("GOVERNANCE", until))
    assert backend.read("files") == big and backend.read("blob") == big[: (11 << 20)]
    for key in ("files", "blob"):
        head = backend.client.head_object(Bucket=locked_bucket, Key=backend._key(key), PartNumber=1)
        assert int(head["PartsCount"]) == 3, key  # written in parts, not in one PUT
        mode, retained = backend.retention(key)  # type: ignore[misc]
        assert mode == "GOVERNANCE" and abs(retained - until) < timedelta(seconds=2)
