"""`tests/cluster/up` and `tests/cluster/down`: the test cluster by hand, for developers and reviewers.

up:   builds what is missing, starts the S3 server (SeaweedFS, with a bucket), etcd, kube-apiserver,
      kube-controller-manager and the local node on loopback, applies the chart's operator RBAC
      (marked as release mo-backup-operator's in mobackup-system, so that `helm install
      mo-backup-operator charts/mo-backup-operator -n mobackup-system` adopts it instead of failing
      on objects it did not create), waits until all are ready and prints `export` lines (also
      written to STATE/env.sh).
down: stops everything `up` started, by the PIDs recorded in STATE, and removes STATE.
STATE is $MOBACKUP_TEST_STATE or /tmp/mobackup-cluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from cluster import paths
from cluster.kube_api import object_path
from cluster.kube_cluster import KubeCluster, cluster_exports, start_cluster, stop_by_pid_files, write_env_file
from cluster.rbac import RELEASE

DEFAULT_STATE = Path(os.environ.get("MOBACKUP_TEST_STATE", "/tmp/mobackup-cluster"))


def up(state: Path) -> int:
    if (state / "kube-apiserver.pid").exists():
        print(f"up: a cluster is already recorded in {state}; run tests/cluster/down first "
              f"(or: source {state}/env.sh)", file=sys.stderr)
        return 1
    shutil.rmtree(state, ignore_errors=True)
    t0 = time.monotonic()
    try:
        cluster = start_cluster(state)
    except paths.MissingComponent as e:
        print(f"up: {e}", file=sys.stderr)
        return 1
    helm_adoptable(cluster)
    env_file = write_env_file(cluster)
    print(f"up: cluster ready in {time.monotonic() - t0:.1f}s (api {cluster.api_url}, operator RBAC from "
          f"{cluster.operator.source}); state and logs in {state}; exports also in {env_file}",
          file=sys.stderr)
    for k, v in sorted(cluster_exports(cluster).items()):
        print(f"export {k}='{v}'")
    return 0


def helm_adoptable(cluster: KubeCluster) -> None:
    """Helm adopts an existing object when it carries the release's ownership metadata; these are
    exactly the objects `helm template` renders for that release, so the install only takes them over.
    (`helm uninstall` then removes them, and KUBECONFIG_OPERATOR with them.)"""
    api, ns = cluster.api(), cluster.operator.namespace
    meta = {"labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": ns}}
    for obj in cluster.operator.objects:
        api.merge_patch(object_path(obj, default_namespace=ns), {"metadata": meta})


def down(state: Path, keep: bool) -> int:
    stopped = stop_by_pid_files(state)
    print(f"down: stopped {', '.join(stopped) or 'nothing'}", file=sys.stderr)
    if not keep:
        shutil.rmtree(state, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["up", "down"])
    ap.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    ap.add_argument("--keep", action="store_true", help="down: keep the state dir (logs)")
    args = ap.parse_args()
    return up(args.state_dir) if args.command == "up" else down(args.state_dir, args.keep)


if __name__ == "__main__":
    sys.exit(main())
