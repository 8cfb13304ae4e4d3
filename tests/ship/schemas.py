"""JSON schemas for kubeconform, made offline from real sources.

- Custom kinds: each CRD version's openAPIV3Schema, converted to standalone JSON schema.
- Built-in kinds: the test API server's /openapi/v2 definitions (what that server accepts).

Files are named the way kubeconform's local template `{{ .ResourceKind }}{{ .KindSuffix }}.json`
expects: `deployment-apps-v1.json`, `service-v1.json`, `mobackup-mobackup-v1alpha1.json`.
Object schemas are made strict (additionalProperties: false where the source lists the
properties and does not preserve unknown fields), so a misspelt field fails validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

SCHEMA_TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"


def file_name(kind: str, api_version: str) -> str:
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0].lower()}-{version.lower()}" if group else f"-{version.lower()}"
    return f"{kind.lower()}{suffix}.json"


def _strict_v3(node: Any) -> Any:
    """openAPIV3Schema (structural) -> JSON schema, recursively."""
    if isinstance(node, list):
        return [_strict_v3(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: _strict_v3(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _strict_v3(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_strict_v3(v) for v in value]
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schemas(crd_paths: list[Path], out_dir: Path) -> list[str]:
    """Write one schema per CRD version; returns the apiVersion/kind pairs written."""
    written = []
    for path in crd_paths:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = _strict_v3(version["schema"]["openAPIV3Schema"])
                props = schema.setdefault("properties", {})
                # The API server handles these for every object; the CRD need not describe them.
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                props["metadata"] = {"type": "object"}
                api_version = f"{spec['group']}/{version['name']}"
                name = file_name(spec["names"]["kind"], api_version)
                (out_dir / name).write_text(json.dumps(schema))
                written.append(f"{api_version}/{spec['names']['kind']}")
    return written


def _convert_v2(node: Any, refs: set[str]) -> Any:
    """A Swagger 2.0 definition -> JSON schema with #/definitions refs; collects the refs."""
    if isinstance(node, list):
        return [_convert_v2(n, refs) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref":
            name = value.rsplit("/", 1)[-1]
            refs.add(name)
            out["$ref"] = f"#/definitions/{name}"
        elif key == "properties":
            out[key] = {k: _convert_v2(v, refs) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert_v2(value, refs)
        elif key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("format") == "int-or-string":
        out.pop("type", None)
        out.pop("format", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out):
        out["additionalProperties"] = False
    return out


def builtin_schemas(openapi_v2: dict[str, Any], out_dir: Path) -> int:
    """One standalone file per group/version/kind of the server's /openapi/v2 (only the
    definitions each kind needs, so that a file stays small). Returns the number written."""
    defs = openapi_v2["definitions"]
    converted: dict[str, tuple[Any, set[str]]] = {}

    def convert(name: str) -> tuple[Any, set[str]]:
        if name not in converted:
            refs: set[str] = set()
            schema = _convert_v2(defs[name], refs)
            if name.endswith("api.resource.Quantity"):
                schema = {"anyOf": [{"type": "string"}, {"type": "number"}]}
            converted[name] = (schema, refs)
        return converted[name]

    count = 0
    for name, definition in defs.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            closure: dict[str, Any] = {}
            todo = [name]
            while todo:
                current = todo.pop()
                if current in closure:
                    continue
                schema, refs = convert(current)
                closure[current] = schema
                todo.extend(refs - closure.keys())
            root = dict(closure[name])
            root["definitions"] = closure
            (out_dir / file_name(gvk["kind"], api_version)).write_text(json.dumps(root))
            count += 1
    return count
