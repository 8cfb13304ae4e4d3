"""`tests/cluster/up` and `tests/cluster/down`: the test cluster by hand, for developers and reviewers.

up:   builds what is missing, starts the S3 server (SeaweedFS, with a bucket), etcd, kube-apiserver,
      kube-controller-manager and the local node on loopback, applies the chart's operator RBAC
      (marked as release mo-backup-operator's in mobackup-system, so that `helm install
      mo-backup-operator charts/mo-backup-operator -n mobackup-system` adopts it instead of failing
      on objects it did not create), waits until all are ready and prints `export` lines (also
      written to STATE/env.sh).
      With --real-node: a real kubelet, containerd, kube-scheduler and kube-proxy instead of the
      local node (cluster.real_node; the chart is then installed with helm, not pre-applied), the
      project's image (built from the Dockerfile) imported under the chart's default name.
down: stops everything `up` started, by the PIDs recorded in STATE, undoes what a real node
      changed on the machine (iptables, bridge, cgroups, mounts, sysctls) and removes STATE.
STATE is $MOBACKUP_TEST_STATE or /tmp/mobackup-cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from cluster import paths
from cluster.kube_api import KubeApi, object_path
from cluster.kube_cluster import KubeCluster, cluster_exports, start_cluster, stop_by_pid_files, write_env_file
from cluster.rbac import RELEASE
from cluster.real_cluster import start_real_cluster
from cluster.real_node import NODE_NAME, NodeUnavailable, RealNode, node_access

DEFAULT_STATE = Path(os.environ.get("MOBACKUP_TEST_STATE", "/tmp/mobackup-cluster"))


def up(state: Path, real_node: bool = False, with_s3: bool = True) -> int:
    if (state / "kube-apiserver.pid").exists():
        print(f"up: a cluster is already recorded in {state}; run tests/cluster/down first "
              f"(or: source {state}/env.sh)", file=sys.stderr)
        return 1
    shutil.rmtree(state, ignore_errors=True)
    t0 = time.monotonic()
    try:
        cluster = start_real_cluster(state, with_s3=with_s3) if real_node else start_cluster(state, with_s3=with_s3)
    except (paths.MissingComponent, NodeUnavailable) as e:
        print(f"up: {e}", file=sys.stderr)
        return 1
    if cluster.operator is not None:
        helm_adoptable(cluster)
    env_file = write_env_file(cluster)
    what = (f"real node {NODE_NAME}" if cluster.operator is None
            else f"operator RBAC from {cluster.operator.source}")
    print(f"up: cluster ready in {time.monotonic() - t0:.1f}s (api {cluster.api_url}, {what}); "
          f"state and logs in {state}; exports also in {env_file}", file=sys.stderr)
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
    problems: list[str] = []
    if (state / "node" / "host-before.json").exists():
        node = RealNode(state / "node", node_access())
        with contextlib.suppress(Exception):
            node.drain(_admin_api(state / "admin.kubeconfig"))
        problems = node.stop()
    stopped = stop_by_pid_files(state)
    print(f"down: stopped {', '.join(stopped) or 'nothing'}", file=sys.stderr)
    for p in problems:
        print(f"down: {p}", file=sys.stderr)
    if not keep:
        shutil.rmtree(state, ignore_errors=True)
    return 0


def _admin_api(kubeconfig: Path) -> KubeApi:
    import yaml

    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    return KubeApi(cluster["server"], user["token"], cluster["certificate-authority"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["up", "down"])
    ap.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    ap.add_argument("--keep", action="store_true", help="down: keep the state dir (logs)")
    ap.add_argument("--real-node", action="store_true", help="up: a real kubelet + containerd node")
    ap.add_argument("--no-s3", action="store_true", help="up: without the S3 server (SeaweedFS)")
    args = ap.parse_args()
    if args.command == "up":
        return up(args.state_dir, args.real_node, not args.no_s3)
    return down(args.state_dir, args.keep)


if __name__ == "__main__":
    sys.exit(main())
