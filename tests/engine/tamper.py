"""Rewrite a plain repository's file list as an attacker with write access to it would.

Written from docs/repository-format.md alone (sections 4-6), not with the engine's code: a frame is
`length (4 bytes, big-endian) || 0x00 payload | 0x01 zstd(payload)`, the payload is JSON lines, and
the summary (plain JSON) holds `entry_count`, `files_frames` and `files_digest` (BLAKE3 of the
concatenated payloads). With `fix_digest` the summary is updated to match, as a careful attacker
would; without it, only the list changes.

    python tests/engine/tamper.py REPO BACKUP_ID EDIT.json [--keep-digest]

where EDIT.json is the new list of entries (a JSON array).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import zstandard


def read_entries(repo: Path, backup_id: str) -> list[dict[str, Any]]:
    raw = (repo / "backups" / f"{backup_id}.files").read_bytes()
    entries: list[dict[str, Any]] = []
    offset = 0
    while offset < len(raw):
        (length,) = struct.unpack(">I", raw[offset:offset + 4])
        frame = raw[offset + 4:offset + 4 + length]
        offset += 4 + length
        payload = frame[1:] if frame[0] == 0 else zstandard.ZstdDecompressor().decompress(frame[1:])
        entries.extend(json.loads(line) for line in payload.splitlines())
    return entries


def write_entries(repo: Path, backup_id: str, entries: list[dict[str, Any]], fix_digest: bool = True) -> None:
    """One frame holding `entries`, stored raw (0x00) so that any reader can check it."""
    payload = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in entries)
    frame = b"\x00" + payload
    (repo / "backups" / f"{backup_id}.files").write_bytes(struct.pack(">I", len(frame)) + frame)
    if fix_digest:
        summary_path = repo / "backups" / f"{backup_id}.json"
        summary = json.loads(summary_path.read_text())
        summary.update(entry_count=len(entries), files_frames=1, files_digest=blake3.blake3(payload).hexdigest(),
                       file_count=sum(1 for e in entries if isinstance(e, dict) and e.get("type") == "file"))
        summary_path.write_text(json.dumps(summary))


def tamper(repo: Path, backup_id: str, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
           fix_digest: bool = True) -> None:
    write_entries(repo, backup_id, edit(read_entries(repo, backup_id)), fix_digest)


if __name__ == "__main__":
    repo_arg, id_arg, edit_arg = sys.argv[1:4]
    write_entries(Path(repo_arg), id_arg, json.loads(Path(edit_arg).read_text()),
                  fix_digest="--keep-digest" not in sys.argv)
