#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine: system packages, the virtualenv with the
# project and its test tools, and the test infrastructure binaries (built into ~/.cache).
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc, make and binutils build MatrixOne's cgo library (tests/matrixone/build); prometheus (with
# promtool) tests the chart's alert rules and dashboard. The real node (tests/cluster/real_node.py):
# podman builds the images without a registry from a debootstrap base, containerd + runc run them
# for the kubelet, the CNI plugins wire the pods, iptables/conntrack serve kube-proxy (nft removes
# the tables iptables-nft created, on tear-down); libc6-dev links the static pause binary.
debs=(rsync restic etcd-server bubblewrap mariadb-server mariadb-client util-linux gcc make binutils prometheus
      podman buildah containerd runc debootstrap containernetworking-plugins iptables conntrack nftables libc6-dev)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts these services on install; the tests run their own instances on other ports.
for svc in etcd mariadb prometheus containerd; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The lock file is the constraint: the tests run exactly the versions the image ships, whatever
# PyPI published since. Refreshing it is deliberate: see deploy/gen-requirements-lock.
.venv/bin/pip install -q -c deploy/requirements.lock -e '.[test]'

# Test infrastructure (SeaweedFS for S3, kube-apiserver, kube-controller-manager, helm, kubeconform,
# the real node's kubelet, kube-scheduler, kube-proxy and pause image; the base image and the
# project's image from the Dockerfile), built into a cache outside the clone (~/.cache/mobackup-test).
tests/cluster/build >/dev/null
tests/ship/build-kustomize
tests/ship/build-argocd-lua    # Argo CD's Lua (gopher-lua) for the health-check tests
# The real MatrixOne server, built from the Go module proxy (github.com/matrixorigin/matrixone).
tests/matrixone/build
# ... and its image for the real node (tests/realnode), on the same base image as the project's.
tests/cluster/build mo-image
echo "setup: done"
