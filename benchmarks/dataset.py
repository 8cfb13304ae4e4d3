"""Seeded benchmark data sets: a mo-data tree (state A) and the same tree after a ~5% change (state B).

State B shares every unchanged file with state A through hard links (same inode, size and mtime), so
switching the benchmarked directory between the two states is two renames, and every tool's change
detection (size + mtime, restic's inode + ctime) sees exactly the intended change.
"""

from __future__ import annotations

import array
import json
import os
import random
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

MiB = 1 << 20
NS = 1_000_000_000
BASE_NS = 1_715_745_404 * NS  # the seed document's BACKUPTS era
PAGE = 64 * 1024


@dataclass
class Profile:
    objects: int  # objects in state A
    min_size: int
    max_size: int
    skew: float  # size = min + (max - min) * u**skew: most objects small, a few large
    log_size: int  # the log service file, appended by the change
    new_objects: int  # the change: objects written by flush/merge
    gc_objects: int  # the change: objects removed by GC
    append: int  # the change: bytes appended to the log


PROFILES = {
    # ~2 GiB: 800 objects of 1-16 MiB (mean ~2.5 MiB) + a 32 MiB log; the change is ~5% of the bytes.
    "full": Profile(800, 1 * MiB, 16 * MiB, 8.6, 32 * MiB, 40, 10, 4 * MiB),
    # ~200 MiB, for checking the scripts quickly.
    "small": Profile(80, 1 * MiB, 16 * MiB, 8.6, 4 * MiB, 4, 2, 1 * MiB),
}


@dataclass
class DataSet:
    root: Path  # holds src/ (the benchmarked directory) and the parked state
    profile: str
    seed: int
    state_a: dict[str, int] = field(default_factory=dict)  # files, bytes
    state_b: dict[str, int] = field(default_factory=dict)
    change: dict[str, int] = field(default_factory=dict)
    current: str = "a"

    @property
    def src(self) -> Path:
        return self.root / "src"

    def use(self, state: str) -> None:
        """Make src/ hold state `state` ("a" or "b") by renaming the directories."""
        if state == self.current:
            return
        os.rename(self.src, self.root / f"state-{self.current}")
        os.rename(self.root / f"state-{state}", self.src)
        self.current = state
        (self.root / "current").write_text(state)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["root"] = str(self.root)
        return data


def _uuid7(rng: random.Random, ms: int) -> str:
    value = bytearray(ms.to_bytes(6, "big") + rng.getrandbits(80).to_bytes(10, "big"))
    value[6] = 0x70 | (value[6] & 0x0F)
    value[8] = 0x80 | (value[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(value)))


def _write(path: Path, chunks: list[bytes] | bytes, mtime_ns: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(path, "wb") as out:
        for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
            out.write(chunk)
            size += len(chunk)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return size


def _payload(rng: random.Random, size: int, compressible: bool) -> list[bytes]:
    """Incompressible: random bytes. Compressible: columnar-like pages (8 KiB of noise, then a run of
    increasing int64 values), every page distinct so that no tool can deduplicate within a file."""
    if not compressible:
        return [rng.randbytes(min(8 * MiB, size - offset)) for offset in range(0, size, 8 * MiB)]
    pages = []
    start = rng.getrandbits(40)
    for offset in range(0, size, PAGE):
        n = min(PAGE, size - offset)
        column = array.array("q", range(start, start + (PAGE - 8192) // 8)).tobytes()
        start += 7168 + rng.randint(0, 64)
        pages.append((rng.randbytes(8192) + column)[:n])
    return pages


class _Clock:
    def __init__(self) -> None:
        self.ns = BASE_NS
        self.counter = 0

    def tick(self, rng: random.Random) -> int:
        self.ns += rng.randint(1, 50) * 1_000_000
        return self.ns


def _object(root: Path, rng: random.Random, clock: _Clock, p: Profile, compressible: bool) -> int:
    ns = clock.tick(rng)
    name = f"{_uuid7(rng, ns // 1_000_000)}_{rng.randint(0, 99999):05d}"
    size = p.min_size + int((p.max_size - p.min_size) * rng.random() ** p.skew)
    return _write(root / "shared" / name, _payload(rng, size, compressible), ns)


def _checkpoint(root: Path, rng: random.Random, clock: _Clock, global_ckp: bool = False) -> None:
    start = "0-0" if global_ckp else f"{clock.ns}-{clock.counter}"
    clock.ns += rng.randint(1, 5) * NS
    clock.counter += 1
    _write(root / "shared" / "ckp" / f"meta_{start}_{clock.ns}-{clock.counter}.ckp",
           rng.randbytes(rng.randint(200, 4000)), clock.ns)


def _totals(root: Path) -> dict[str, int]:
    files = size = 0
    for directory, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(directory, name)).st_size
    return {"files": files, "bytes": size}


def build(root: Path, profile: str, seed: int) -> DataSet:
    """Create (or reuse, when a complete one with the same parameters exists) the data set."""
    p = PROFILES[profile]
    marker = root / "dataset.json"
    if marker.exists():
        data = json.loads(marker.read_text())
        if data["profile"] == profile and data["seed"] == seed:
            ds = DataSet(root, profile, seed, data["state_a"], data["state_b"], data["change"],
                         (root / "current").read_text().strip())
            ds.use("a")
            return ds
    if root.exists():
        shutil.rmtree(root)
    a = root / "src"
    rng = random.Random(seed)
    clock = _Clock()
    # Exactly half of the objects incompressible, in a seeded order.
    kinds = [i % 2 == 0 for i in range(p.objects)]
    rng.shuffle(kinds)
    for compressible in kinds:
        _object(a, rng, clock, p, compressible)
    _checkpoint(a, rng, clock, global_ckp=True)
    for _ in range(3):
        _checkpoint(a, rng, clock)
    gc = a / "shared" / "gc"
    _write(gc / f"gc_0-0_{clock.ns}-{clock.counter}.ckp", rng.randbytes(512), clock.ns)
    _write(gc / f"snap_{clock.ns}-{clock.counter}.snap", rng.randbytes(128), clock.ns)
    log = a / "logservice-data" / str(uuid.UUID(int=rng.getrandbits(128))) / "mo-0" / "00000001" / "000001.log"
    _write(log, _payload(rng, p.log_size, False), clock.ns)
    _write(log.parent / "LOCK", b"", clock.ns)
    _write(a / "local" / "hk_data", rng.randbytes(256), clock.ns)
    _write(a / "etl" / "sys" / "logs" / f"{clock.ns}.csv", b"ts,level,msg\n" * 20, clock.ns)
    (a / "dn-data" / str(uuid.UUID(int=rng.getrandbits(128)))).mkdir(parents=True)

    # State B: hard links to A, then what MatrixOne does between two backups.
    b = root / "state-b"
    shutil.copytree(a, b, copy_function=os.link)
    objects = sorted(x for x in (b / "shared").iterdir() if x.is_file())
    removed = rng.sample(objects, p.gc_objects)
    removed_bytes = sum(path.stat().st_size for path in removed)
    for path in removed:
        path.unlink()
    added = sum(_object(b, rng, clock, p, i % 2 == 0) for i in range(p.new_objects))
    _checkpoint(b, rng, clock)
    blog = b / log.relative_to(a)
    blog.unlink()  # a new inode: the appended file must not change state A's copy
    shutil.copyfile(log, blog)
    with open(blog, "ab") as out:
        for chunk in _payload(rng, p.append, False):
            out.write(chunk)
    os.utime(blog, ns=(clock.ns, clock.ns))
    for directory in (b / "shared", b / "shared" / "ckp", blog.parent):  # directory mtimes move too
        os.utime(directory, ns=(clock.ns, clock.ns))

    ds = DataSet(root, profile, seed, _totals(a), _totals(b),
                 {"added_objects": p.new_objects, "added_bytes": added, "removed_objects": p.gc_objects,
                  "removed_bytes": removed_bytes, "appended_bytes": p.append}, "a")
    (root / "current").write_text("a")
    marker.write_text(json.dumps({k: v for k, v in ds.to_dict().items() if k != "root"}, indent=1))
    return ds
