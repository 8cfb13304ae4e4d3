"""Test suite root: makes `tests/` importable (shared helpers such as `cluster.fixtures`), registers
the fixtures of the real test infrastructure (SeaweedFS for S3, the Kubernetes control plane, MariaDB,
MatrixOne) for every test below, and groups the tests for the suite's two lanes.

Two lanes (pytest-xdist, `-n 2 --dist loadgroup` in pyproject.toml): most of the suite waits on
servers, not on the two cores. Each test file is one group, so that its module fixtures start once.
The files that spend their time in MatrixOne on its fixed ports share one group: they take the
machine's lock (mo_server.ServerLock) in turn anyway, so one lane runs them while the other runs the
rest. `-n 0` runs everything in one process, as before. pytest stays below 9 (pyproject.toml): 9
ignores the node ids xdist rewrites to name a test's group, so every test would be scheduled alone."""

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

pytest_plugins = ["cluster.fixtures", "sqlserver", "mo_server"]

# Relative to tests/: a directory (ending in /) or a file.
MATRIXONE_HEAVY = (
    "matrixone/",
    "operator/test_e2e_matrixone.py",
    "operator/test_e2e_mo_cluster.py",
    "operator/test_e2e_drill.py",
    "operator/test_e2e_pitr.py",
    "operator/test_e2e_scoped.py",
    "ship/test_e2e_matrixone.py",
)


# One real node per machine (tests/cluster/real_node.py holds a lock while it runs): its files in one lane.
REAL_NODE = "realnode/"


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in patterns)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marked as each test is collected: xdist names the groups in pytest_collection_modifyitems,
    which on its workers runs before this conftest's own."""
    rel = item.path.relative_to(TESTS).as_posix() if item.path.is_relative_to(TESTS) else str(item.path)
    group = "matrixone" if _matches(rel, MATRIXONE_HEAVY) else "realnode" if rel.startswith(REAL_NODE) else rel
    item.add_marker(pytest.mark.xdist_group(group))
