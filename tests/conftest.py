"""Test suite root: makes `tests/` importable so that shared helpers (`cluster.fixtures`,
`engine.helpers`) can be imported by the test modules and conftests below it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
