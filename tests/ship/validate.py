"""kubeconform over rendered manifests, offline, with the schemas of conftest.schema_dir."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from ship import schemas, tools


def kubeconform(manifests: str, schema_dir: Path) -> Counter[str]:
    """Validate every document; fail on any invalid, error or missing schema. Returns kinds seen.

    CRDs contained in the manifests (e.g. kopf's peering CRDs) get schemas for their objects too.
    """
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if crds:
        extra = schema_dir / "_inline_crds.yaml"
        extra.write_text(yaml.safe_dump_all(crds))
        schemas.crd_schemas([extra], schema_dir)
    proc = tools.run([tools.built_tool("kubeconform"), "-strict", "-summary", "-verbose", "-output", "json",
                      "-schema-location", f"{schema_dir}/{schemas.SCHEMA_TEMPLATE}", "-"],
                     input=manifests, check=False, timeout=120)
    try:
        report = json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError(f"kubeconform output is not JSON (exit {proc.returncode}): "
                             f"{proc.stdout[-2000:]} {proc.stderr[-2000:]}") from e
    bad = [r for r in report["resources"] if r["status"] != "statusValid"]
    assert proc.returncode == 0 and not bad, "kubeconform:\n" + "\n".join(
        f"  {r['kind']}/{r['name']}: {r['status']}: {r.get('msg', '')}" for r in bad) + proc.stderr[-1000:]
    kinds = Counter(r["kind"] for r in report["resources"])
    assert sum(kinds.values()) == len(docs), f"kubeconform checked {sum(kinds.values())} of {len(docs)} documents"
    return kinds
