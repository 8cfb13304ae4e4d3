"""`mobackup copy` (backups into a second repository) and `mobackup stats` (what a repository's
backups take and cost); their flags: parser.py."""

from __future__ import annotations

import argparse
import os

from ..engine.errors import MobackupError
from ..engine.repository import RepositoryOptions, open_repository
from .common import emit, repository_options

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
