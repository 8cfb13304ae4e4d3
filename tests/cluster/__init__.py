"""Real test infrastructure for the suite: SeaweedFS (S3), etcd, kube-apiserver, kube-controller-manager,
a local-node test double for kubelet + container runtime, and the pytest fixtures around them."""
