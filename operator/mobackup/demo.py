"""`mobackup demo`: the seed's incremental example on sample data, with a local repository."""

from __future__ import annotations

import json
from pathlib import Path

from .engine.backup import run_backup
from .engine.errors import MobackupError
from .engine.progress import for_terminal
from .engine.repository import RepositoryOptions, open_repository
from .engine.restore import run_restore
from .engine.verify import verify_backup
from .engine.walk import remove_tree
from .sample import generate_mo_data, mutate_mo_data, snapshot_tree
from .table import backup_table

# Marks a directory the demo made: only such a directory, an empty one or none is used (and its
# earlier tour removed); anything else may be someone's data.
MARKER = ".mobackup-demo"
OWN_ENTRIES = ("mo-data", "repo", "restored")


def prepare_workdir(workdir: Path) -> None:
    """An empty working directory, or one of an earlier tour, whose own entries are removed first;
    a non-empty directory without the demo's marker is refused untouched."""
    if workdir.exists() and not workdir.is_dir():
        raise MobackupError(f"{workdir}: not a directory (give --dir a new or empty directory)")
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).is_file():
        raise MobackupError(f"{workdir} is not empty and was not made by `mobackup demo`: refusing to remove "
                            "what it holds; give --dir a new or empty directory")
    for name in OWN_ENTRIES:
        remove_tree(workdir / name)  # never follows a link
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `mobackup demo`: its entries are replaced by the next tour\n")


def run_demo(workdir: Path, as_json: bool = False) -> int:
    prepare_workdir(workdir)
    data_dir, repo_dir, restored = workdir / "mo-data", workdir / "repo", workdir / "restored"
    say = (lambda *_: None) if as_json else print
    generate_mo_data(data_dir, seed=7, objects=120, max_size=2 << 20)
    say(f"1. sample MatrixOne data directory: {data_dir}")
    repo = open_repository(RepositoryOptions(str(repo_dir)), create=True)
    full = run_backup(repo, data_dir, source="demo", progress=for_terminal("full backup", as_json))
    say(f"2. full backup        {full.id}  {full.file_count} files, {full.size_bytes} bytes")
    changes = mutate_mo_data(data_dir, seed=8)
    say(f"3. MatrixOne writes: +{len(changes['added'])} objects, -{len(changes['removed'])} (GC), log appended")
    expected = snapshot_tree(data_dir)
    incremental = run_backup(repo, data_dir, source="demo", progress=for_terminal("incremental", as_json))
    say(f"4. incremental backup {incremental.id}  stored {incremental.new_bytes} new bytes "
        f"of {incremental.size_bytes} (base {incremental.base_id})")
    say("5. mobackup list:\n" + backup_table(repo.list_backups()))
    result = run_restore(repo, incremental.id, restored, progress=for_terminal("restore", as_json))
    same = snapshot_tree(restored) == expected
    say(f"6. restored the incremental into {restored}: {result.file_count} files; identical to the source: {same}")
    verified = verify_backup(repo, full.id)
    say(f"7. verify of the full backup: {'intact' if verified.ok else verified.problems}")
    if as_json:
        print(json.dumps({"full": full.to_dict(), "incremental": incremental.to_dict(),
                          "restore": result.to_dict(), "identical": same, "verified": verified.ok}, indent=2))
    return 0 if same and verified.ok else 1
