"""Running the Argo CD health checks of deploy/argocd/argocd-cm-health.yaml in the interpreter Argo
CD uses: gopher-lua (Lua 5.1) with only the base, table and package libraries, the resource decoded
from JSON as global `obj` (every number a float), a 1 s limit, the chunk returning {status, message}.
The runner is tests/ship/argocd-lua/main.go, built by tests/ship/build-argocd-lua."""

from __future__ import annotations

import json
import tempfile
from typing import Any

import yaml

from ship import tools

CM = tools.DEPLOY / "argocd" / "argocd-cm-health.yaml"
KINDS = ["MOBackup", "MORestore", "MOBackupStorage", "MOBackupSchedule", "MORestoreDrill"]
PREFIX = "resource.customizations.health.mobackup.io_"


def config() -> dict[str, str]:
    return yaml.safe_load(CM.read_text())["data"]


def scripts() -> dict[str, str]:
    return {k.rsplit("_", 1)[1]: v for k, v in config().items() if k.startswith(PREFIX)}


def evaluate(script: str, obj: dict[str, Any], open_libs: bool = False) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the script run on `obj` the way Argo CD runs it."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(script)
        f.flush()
        proc = tools.run([tools.argocd_lua(), *(["-open-libs"] if open_libs else []), f.name],
                         input=json.dumps(obj), timeout=10, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    # Argo CD reads useOpenLibs per kind; we ship none, so the scripts run without string/math.
    open_libs = config().get(f"resource.customizations.useOpenLibs.mobackup.io_{kind}") == "true"
    code, out, err = evaluate(scripts()[kind], obj, open_libs)
    assert code == 0, f"{kind}: the health script fails in Argo CD's Lua: {err.strip()}"
    hs = json.loads(out)
    return hs["status"], hs.get("message", "")
