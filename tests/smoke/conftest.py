"""The harness smoke tests use the shared real-infrastructure fixtures."""

from cluster.fixtures import kube_cluster, kube_namespace, s3_server  # noqa: F401
