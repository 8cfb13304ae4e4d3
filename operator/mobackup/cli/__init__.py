"""`mobackup`: the command line (backup, list, show, restore, verify, delete, prune, demo), and the
entry points of the Kubernetes operator and of its Job agent.

Its modules import one way: this one uses parser.py and commands.py; commands.py uses s3.py, repos.py
and pitr.py; all use common.py; none imports back."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..engine.errors import MobackupError
from .commands import COMMANDS
from .common import warn
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "operator":
        from ..k8s.operator_main import main as operator_main

        return operator_main(argv[1:])
    if argv and argv[0] == "agent":
        from ..k8s.agent import main as agent_main

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MobackupError as error:
        warn(f"error: {error}")
        return 1
    except OSError as error:  # a file system refusal: say which file and why, in one line
        where = f": {error.filename}" if error.filename else ""
        warn(f"error: {error.strerror or error}{where}")
        return 1
    except KeyboardInterrupt:
        print("mobackup: interrupted", file=sys.stderr)
        return 130
