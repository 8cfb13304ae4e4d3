"""`mobackup demo`: the seed's incremental example on sample data, with a local repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .engine.backup import run_backup
from .engine.progress import for_terminal
from .engine.repository import RepositoryOptions, open_repository
from .engine.restore import run_restore
from .engine.verify import verify_backup
from .sample import generate_mo_data, mutate_mo_data, snapshot_tree
from .table import backup_table


def run_demo(workdir: Path, as_json: bool = False) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
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
