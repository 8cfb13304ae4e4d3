"""`mobackup copy` (backups into a second repository) and `mobackup stats` (what a repository's
backups take and cost); their flags: parser.py."""

from __future__ import annotations

import argparse
import os

from ..engine.errors import MobackupError
from ..engine.objectlock import setting_mismatch, wanted
from ..engine.repository import RepositoryOptions, open_repository
from .common import emit, repository_options, retention_policy

TARGET_KEY_ENV = "MOBACKUP_TO_ENCRYPTION_KEY"


def target_options(args: argparse.Namespace) -> RepositoryOptions:
    """The copy's target: flags `--to-*`, else `MOBACKUP_TO_*` variables, else the AWS_* ones the
    source uses too (the same endpoint and account is the common case). Its encryption key comes
    only from MOBACKUP_TO_ENCRYPTION_KEY(_FILE) or --to-encryption-key-file: never the source's."""
    env = os.environ
    path_style = args.to_s3_path_style
    if path_style is None and env.get("MOBACKUP_TO_PATH_STYLE"):
        path_style = env["MOBACKUP_TO_PATH_STYLE"].lower() in ("1", "true", "yes")
    options = RepositoryOptions.from_env(
        args.to, key_env=TARGET_KEY_ENV, encryption_key_file=args.to_encryption_key_file,
        s3_endpoint=args.to_s3_endpoint or env.get("MOBACKUP_TO_ENDPOINT"),
        s3_region=args.to_s3_region or env.get("MOBACKUP_TO_REGION"), s3_path_style=path_style,
        s3_ca_bundle=args.to_s3_ca_bundle or args.s3_ca_bundle,
        s3_access_key_id=env.get("MOBACKUP_TO_ACCESS_KEY_ID"),
        s3_secret_access_key=env.get("MOBACKUP_TO_SECRET_ACCESS_KEY"),
        parallelism=args.parallelism, bandwidth_limit=args.bandwidth_limit, compression=args.to_compression,
        lock_days=args.to_lock_days, lock_mode=args.to_lock_mode,
    )
    if options.s3_access_key_id is None and env.get("MOBACKUP_TO_SECRET_ACCESS_KEY") is None:
        return options
    if not (options.s3_access_key_id and options.s3_secret_access_key):
        raise MobackupError("MOBACKUP_TO_ACCESS_KEY_ID and MOBACKUP_TO_SECRET_ACCESS_KEY go together")
    return options


def cmd_copy(args: argparse.Namespace) -> int:
    from ..engine.copy import copy_backups
    from ..engine.progress import for_terminal
    from ..table import decimal_size

    if bool(args.ids) == bool(args.all):
        raise MobackupError("name the backups to copy (IDs) or give --all, not both")
    source = open_repository(repository_options(args))
    options = target_options(args)
    if source.codec.keys is not None and not options.encryption_key:
        # A copy must not turn encrypted backups into plaintext by a forgotten variable.
        raise MobackupError(f"{source.location} is encrypted: give the target's key in {TARGET_KEY_ENV} (or "
                            "--to-encryption-key-file); it may be the same key")
    target = open_repository(options, create=True)
    mismatch = setting_mismatch(target.location, target.object_lock, wanted(options.lock_days, options.lock_mode))
    if mismatch:
        raise MobackupError(f"--to-lock-days: {mismatch}")
    result = copy_backups(source, target, None if args.all else args.ids,
                          progress=for_terminal("copy", args.quiet or args.json))
    lines = [f"copied {len(result.copied)} backup(s) to {result.target}: {', '.join(result.copied) or '-'}",
             f"{result.blobs_copied} blobs transferred ({decimal_size(result.bytes_copied)}, "
             f"{decimal_size(result.stored_bytes)} stored), {result.blobs_present} already there, "
             f"{result.duration_seconds:.3f}s"]
    if result.present:
        lines.append(f"already in the target: {', '.join(result.present)}")
    emit(args, result.to_dict(), "\n".join(lines))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ..engine.stats import RETENTION_CLASSES, repository_stats
    from ..table import decimal_size

    if args.price is not None and not 0 <= args.price < 1e6:
        raise MobackupError("--price is a price per GB-month: 0 or more")
    repo = open_repository(repository_options(args))
    policy = retention_policy(args)
    stats = repository_stats(repo, price=args.price, source=args.source, retention=None if policy.empty else policy)
    classes = not policy.empty
    lines = [f"{'ID':<36}  {'SOURCE':<20}  {'LOGICAL':>9}  {'ADDED':>9}  {'ONLY IT':>9}  {'SHARE':>9}"
             + ("  RETENTION" if classes else "") + ("  COST/MONTH" if args.price is not None else "")]
    for b in stats.backups:
        kept = f"  {b.retention_class or '-':<9}" if classes else ""
        cost = f"  {b.monthly_cost:>10.4g}" if b.monthly_cost is not None else ""
        lines.append(f"{b.id:<36}  {b.source[:20]:<20}  {decimal_size(b.logical_bytes):>9}  "
                     f"{decimal_size(b.added_bytes):>9}  {decimal_size(b.unique_bytes):>9}  "
                     f"{decimal_size(round(b.shared_bytes)):>9}{kept}{cost}".rstrip())
    ratio = lambda r: "-" if r is None else f"{r:.2f}x"  # noqa: E731
    growth = "-" if stats.growth_bytes_per_day is None else f"{decimal_size(round(stats.growth_bytes_per_day))}/day"
    lines += [
        f"repository {stats.location}: {decimal_size(stats.stored_bytes)} stored ({stats.blob_count} blobs, "
        f"{decimal_size(stats.unreferenced_blob_bytes)} unreferenced), {decimal_size(stats.logical_bytes)} logical",
        f"deduplication {ratio(stats.dedup_ratio)}, compression {ratio(stats.compression_ratio)}, growth {growth}",
    ]
    if stats.monthly_cost is not None:
        by_source = ", ".join(f"{name} {cost:.4g}" for name, cost in sorted(stats.monthly_cost_by_source.items()))
        lines.append(f"monthly cost at {args.price}/GB: {stats.monthly_cost:.4g} (by source: {by_source or '-'})")
    if stats.monthly_cost_by_retention_class:
        lines.append(f"monthly cost by retention class: {_by_class(stats.monthly_cost_by_retention_class, '.4g')}")
        lines += [f"  {name}: {_by_class(cells, '.4g')}"
                  for name, cells in sorted(stats.monthly_cost_by_source_and_retention_class.items())]
    elif stats.bytes_by_retention_class:
        lines.append("stored by retention class: " + ", ".join(
            f"{c} {decimal_size(round(stats.bytes_by_retention_class[c]))}" for c in RETENTION_CLASSES
            if c in stats.bytes_by_retention_class))
    if stats.missing_blobs:
        lines.append(f"warning: {stats.missing_blobs} referenced blob(s) missing (run verify)")
    lines += [f"damaged, not counted: {d}" for d in stats.damaged]
    emit(args, stats.to_dict(), "\n".join(lines))
    return 0


def _by_class(values: dict[str, float], spec: str) -> str:
    """Figures by retention class, in the classes' order (engine/stats.py RETENTION_CLASSES)."""
    from ..engine.stats import RETENTION_CLASSES

    return ", ".join(f"{c} {format(values[c], spec)}" for c in RETENTION_CLASSES if c in values) or "-"
