"""Test suite root: makes `tests/` importable (shared helpers such as `cluster.fixtures`) and
registers the fixtures of the real test infrastructure (SeaweedFS for S3, the Kubernetes control plane) for
every test below."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["cluster.fixtures", "sqlserver", "mo_server"]
