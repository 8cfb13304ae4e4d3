"""What every command of the CLI shares: the repository options, and printing a result or a line
(made printable: engine/text.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..engine.errors import MobackupError
from ..engine.repository import RepositoryOptions
from ..engine.text import printable, printable_lines


def repository_options(args: argparse.Namespace, **extra: Any) -> RepositoryOptions:
    if not args.repo:
        raise MobackupError("no repository: give --repo or set MOBACKUP_REPO")
    return RepositoryOptions.from_env(
        args.repo, s3_endpoint=args.s3_endpoint, s3_region=args.s3_region, s3_path_style=args.s3_path_style,
        s3_ca_bundle=args.s3_ca_bundle, encryption_key_file=args.encryption_key_file,
        parallelism=args.parallelism, bandwidth_limit=args.bandwidth_limit, **extra,
    )


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """The result: JSON (which escapes control characters itself) or text made printable (values
    from a repository or a data directory are escaped where they are put into several-line text)."""
    print(json.dumps(data, indent=2) if args.json else printable_lines(text))


def warn(text: str) -> None:
    print(printable(f"mobackup: {text}"), file=sys.stderr)


def warn_backup_retries(reasons: list[str]) -> None:
    """MatrixOne's transient BACKUP failures that a later attempt got past (engine/mosql.py)."""
    for reason in reasons:
        warn(f"MatrixOne's BACKUP failed and was run again into a fresh staging: {reason}")


def retention_policy(args: argparse.Namespace) -> Any:
    """The --keep-* flags (prune's and stats') as the engine's RetentionPolicy."""
    from ..engine.prune import RetentionPolicy

    return RetentionPolicy(keep_last=args.keep_last, keep_daily=args.keep_daily, keep_weekly=args.keep_weekly,
                           keep_monthly=args.keep_monthly, keep_within=args.keep_within)


def target_places(args: argparse.Namespace) -> tuple[Any, Any]:
    """--target-s3 and --hk-data-s3 (None when not given) as S3Place."""
    from ..engine.online_s3 import S3Place

    target = S3Place.from_env(args.target_s3, "MOBACKUP_TARGET_", endpoint=args.target_s3_endpoint or args.s3_endpoint,
                              region=args.s3_region, path_style=args.s3_path_style, ca_bundle=args.s3_ca_bundle)
    hk_data_s3 = None
    if args.hk_data_s3:
        hk_data_s3 = S3Place.from_env(args.hk_data_s3, "MOBACKUP_TARGET_", endpoint=target.endpoint,
                                      region=target.region, path_style=target.path_style, ca_bundle=target.ca_bundle)
    return target, hk_data_s3
