"""`mobackup --help` and `mobackup list` stay quick to start: the terminal and operator libraries
(rich, prometheus-client, cronsim, kopf, kubernetes) are imported only where they are used."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("rich", "pygments", "prometheus_client", "cronsim", "kopf", "kubernetes")


def test_help_imports_no_terminal_or_operator_library() -> None:
    code = ("import sys, contextlib, io\n"
            "from mobackup import cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.main(['--help'])\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_demo_does_not_import_the_cli() -> None:
    """No import circle: cli imports demo lazily, demo never imports cli (the table lives in table.py)."""
    import ast
    from pathlib import Path

    import mobackup.demo

    tree = ast.parse(Path(mobackup.demo.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "cli" not in imported and "mobackup.cli" not in imported
