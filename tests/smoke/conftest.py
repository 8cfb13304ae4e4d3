"""The harness smoke tests use the shared real-infrastructure fixtures."""

from cluster.fixtures import s3_server  # noqa: F401
