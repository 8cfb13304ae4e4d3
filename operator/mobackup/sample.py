"""Realistic MatrixOne data directories, for the demo, the tests and the benchmarks.

The layout follows MatrixOne's (see the shared reference matrixone-data.md): flat write-once objects
named `<uuid v7>_<5 digits>` in `shared/`, checkpoint metadata in `shared/ckp/`, GC metadata in
`shared/gc/`, the HAKeeper/log service's appended log files, `local/`, `etl/`, and the transient files a
backup must skip (`.tmp.*`, `shared-cache/`). Everything is derived from a seed, so a failure
reproduces.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

NS = 1_000_000_000


def _uuid7(rng: random.Random, ms: int) -> str:
    raw = ms.to_bytes(6, "big") + rng.getrandbits(80).to_bytes(10, "big")
    value = bytearray(raw)
    value[6] = 0x70 | (value[6] & 0x0F)
    value[8] = 0x80 | (value[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(value)))


def _payload(rng: random.Random, size: int, compressible: bool) -> bytes:
    if not compressible:
        return rng.randbytes(size)
    # Columnar pages: repeated values with some noise; zstd shrinks these a lot.
    block = (rng.randbytes(64) + b"\x00" * 192) * 16
    reps = size // len(block) + 1
    return (block * reps)[:size]


@dataclass
class SampleState:
    """The clock a sample directory has reached, kept in a small file so mutations continue it."""

    physical_ns: int
    counter: int


def _state_path(root: Path) -> Path:
    return root / "local" / ".sample-clock"


def _load_state(root: Path) -> SampleState:
    try:
        physical, counter = _state_path(root).read_text().split()
        return SampleState(int(physical), int(counter))
    except (OSError, ValueError):
        return SampleState(1_715_745_404 * NS, 0)


def _save_state(root: Path, state: SampleState) -> None:
    _state_path(root).write_text(f"{state.physical_ns} {state.counter}\n")


def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def _new_object(root: Path, rng: random.Random, state: SampleState, min_size: int, max_size: int) -> Path:
    state.physical_ns += rng.randint(1, 50) * 1_000_000
    name = f"{_uuid7(rng, state.physical_ns // 1_000_000)}_{rng.randint(0, 99999):05d}"
    path = root / "shared" / name
    _write(path, _payload(rng, rng.randint(min_size, max_size), rng.random() < 0.5))
    return path


def _checkpoint(root: Path, rng: random.Random, state: SampleState, global_ckp: bool = False) -> Path:
    start = "0-0" if global_ckp else f"{state.physical_ns}-{state.counter}"
    state.physical_ns += rng.randint(1, 5) * NS
    state.counter += 1
    end = f"{state.physical_ns}-{state.counter}"
    path = root / "shared" / "ckp" / f"meta_{start}_{end}.ckp"
    _write(path, rng.randbytes(rng.randint(200, 4000)))
    return path


def generate_mo_data(root: Path, seed: int, objects: int = 40, min_size: int = 1024,
                     max_size: int = 256 * 1024, log_size: int = 256 * 1024, hostname: str = "mo-0") -> Path:
    """Create a mo-data tree at `root` (which must not hold one yet)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "local").mkdir(exist_ok=True)
    state = _load_state(root)
    for _ in range(objects):
        _new_object(root, rng, state, min_size, max_size)
    _checkpoint(root, rng, state, global_ckp=True)
    for _ in range(3):
        _checkpoint(root, rng, state)
    gc = root / "shared" / "gc"
    _write(gc / f"gc_0-0_{state.physical_ns}-{state.counter}.ckp", rng.randbytes(512))
    _write(gc / f"snap_{state.physical_ns}-{state.counter}.snap", rng.randbytes(128))
    _write(gc / f"acct_{state.physical_ns}-{state.counter}.acct", rng.randbytes(64))
    log_dir = root / "logservice-data" / str(uuid.UUID(int=rng.getrandbits(128))) / hostname / "00000000000000000001"
    _write(log_dir / "000001.log", rng.randbytes(log_size))
    _write(log_dir / "LOCK", b"")
    _write(root / "local" / "hk_data", rng.randbytes(256))
    _write(root / "etl" / "sys" / "logs" / f"{state.physical_ns}.csv", b"ts,level,msg\n" * 20)
    # Transient files a backup must leave out.
    _write(root / "shared" / f".tmp.{rng.getrandbits(32):08x}", rng.randbytes(1000))
    _write(root / "shared-cache" / "cache-block-0", rng.randbytes(4096))
    _write(root / "file-service-cache" / "0" / "cache-block-1", rng.randbytes(4096))
    (root / "dn-data" / str(uuid.UUID(int=rng.getrandbits(128)))).mkdir(parents=True, exist_ok=True)
    _save_state(root, state)
    return root


def mutate_mo_data(
    root: Path, seed: int, new_objects: int = 6, gc_objects: int = 3, append_bytes: int = 64 * 1024,
    min_size: int = 1024, max_size: int = 256 * 1024,
) -> dict[str, list[str]]:
    """What MatrixOne does between two backups: flush/merge write new objects, GC deletes old ones, a
    new checkpoint appears, the log grows. Returns the relative paths added, removed and changed."""
    rng = random.Random(seed)
    state = _load_state(root)
    shared = root / "shared"
    objects = sorted(p for p in shared.iterdir() if p.is_file() and "_" in p.name and not p.name.startswith("."))
    removed = [p for p in rng.sample(objects, min(gc_objects, len(objects)))]
    for path in removed:
        path.unlink()
    added = [_new_object(root, rng, state, min_size, max_size) for _ in range(new_objects)]
    added.append(_checkpoint(root, rng, state))
    changed = []
    for log in sorted((root / "logservice-data").rglob("*.log")):
        with open(log, "ab") as out:
            out.write(rng.randbytes(append_bytes))
        # mtime must move even on file systems with coarse timestamps
        os.utime(log, ns=(time.time_ns(), state.physical_ns))
        changed.append(log)
    _save_state(root, state)
    rel = lambda paths: sorted(str(p.relative_to(root)) for p in paths)  # noqa: E731
    return {"added": rel(added), "removed": rel(removed), "changed": rel([*changed, _state_path(root)])}


def snapshot_tree(root: Path, include_transient: bool = False) -> dict[str, tuple[str, int, int, int, str]]:
    """rel path -> (kind, size, mode, mtime_ns, BLAKE3 of content) of a tree; by default without
    the transient files that a backup leaves out. For comparing a restore with its source."""
    import stat

    import blake3

    from .engine.layout import PathRules

    rules = PathRules()
    result: dict[str, tuple[str, int, int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not include_transient and any(rules.excluded("/".join(rel.split("/")[: i + 1]))
                                         for i in range(rel.count("/") + 1)):
            continue
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            result[rel] = ("dir", 0, stat.S_IMODE(st.st_mode), 0, "")
        elif stat.S_ISLNK(st.st_mode):
            result[rel] = ("symlink", 0, 0, 0, os.readlink(path))
        else:
            digest = blake3.blake3(path.read_bytes()).hexdigest()
            result[rel] = ("file", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest)
    return result
