"""What the engine knows of MatrixOne's data directory layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobackup.engine.layout import PathRules, detect_layout, log_hostnames, newest_checkpoint_ts


@pytest.mark.parametrize(("dirs", "layout"), [
    (["shared"], "disk"), (["shared2"], "disk-v2"), (["s3"], "local-s3"), ([], "unknown"),
    (["shared", "shared2"], "mixed"),
])
def test_detect_layout(tmp_path: Path, dirs: list[str], layout: str) -> None:
    for name in dirs:
        (tmp_path / name).mkdir()
    assert detect_layout(tmp_path) == layout


def test_backup_ts_is_the_newest_checkpoint_end_compared_as_numbers(tmp_path: Path) -> None:
    ckp = tmp_path / "shared2" / "ckp"
    ckp.mkdir(parents=True)
    for name in ("meta_0-0_1715745404915410000-1.ckp", "meta_1715745404915410000-1_1715745409000000000-3.ckp",
                 "meta_1715745409000000000-3_1715745409000000000-12.cpt", "meta_bogus.ckp", "other.ckp"):
        (ckp / name).write_bytes(b"x")
    assert newest_checkpoint_ts(tmp_path) == "1715745409000000000-12"  # 12 > 3 numerically, not as text
    assert newest_checkpoint_ts(tmp_path / "nothing") is None


def test_excludes_and_volatile_areas() -> None:
    rules = PathRules(extra_excludes=("etl/sys/*",))
    for transient in ("shared/.tmp.1234", "shared/ckp/x.tmp", "shared-cache", "file-service-cache", "tmp",
                      ".mobackup-staging-abc", ".mobackup-old-abc", "etl/sys/logs"):
        assert rules.excluded(transient), transient
    for kept in ("shared/01951819-4069-7ec1-86ad-acd5b5875e58_00000", "shared/ckp/meta_0-0_1-1.ckp",
                 "logservice-data/u/mo-0/1/000001.log", "local/hk_data", "etl"):
        assert not rules.excluded(kept), kept
    assert rules.is_volatile("etl/sys/logs/1.csv") and not rules.is_volatile("shared/gc/gc_1-1_2-2.ckp")


def test_log_hostnames() -> None:
    paths = ["logservice-data/u1/mo-0/00000000000000000001/000001.log", "logservice-data/u1/mo-0", "shared/x",
             "logservice-data/u1"]
    assert log_hostnames(paths) == {"mo-0"}
