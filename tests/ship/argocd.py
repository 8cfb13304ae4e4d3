"""Running the Argo CD health checks of deploy/argocd/argocd-cm-health.yaml with the real Lua 5.4,
the way Argo CD runs them: the script is a chunk with the resource as global `obj`, returning
a table {status, message}."""

from __future__ import annotations

import json
from typing import Any

import yaml

from ship import tools

CM = tools.DEPLOY / "argocd" / "argocd-cm-health.yaml"
KINDS = ["MOBackup", "MORestore", "MOBackupStorage", "MOBackupSchedule"]


def _lua_literal(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string literal is a valid Lua one when non-ASCII stays raw UTF-8 (Lua has no \\uXXXX).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "{" + ", ".join(_lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{_lua_literal(k)}] = {_lua_literal(v)}" for k, v in value.items()) + "}"


def scripts() -> dict[str, str]:
    data = yaml.safe_load(CM.read_text())["data"]
    return {k.rsplit("_", 1)[1]: v for k, v in data.items()
            if k.startswith("resource.customizations.health.mobackup.io_")}


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    script = scripts()[kind]
    program = (f"obj = {_lua_literal(obj)}\n"
               f"local hs = (function()\n{script}\nend)()\n"
               'io.write(hs.status, "\\n", hs.message or "")\n')
    proc = tools.run([tools.lua(), "-"], input=program, timeout=10)
    status, _, message = proc.stdout.partition("\n")
    return status, message


