"""The operator's Prometheus metrics, kept and served by prometheus-client.

A thin facade keeps the call sites (`ctx.metrics.inc("mobackup_runs_total", kind=..., ...)`) and
declares every metric up front with fixed label names, so a scrape lists all of them from the start
(HELP/TYPE even before the first sample) and a wrong label set fails loudly where it is used.
"""

from __future__ import annotations

import contextlib
from typing import Any
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The *_created series would double the output; neither the alerts nor the dashboards use them.
prometheus_client.disable_created_metrics()

BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))

RUN = ("kind", "namespace")
SOURCE = ("namespace", "source")
COPY = ("namespace", "storage", "target")
# name -> (type, help, label names)
HELP: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mobackup_runs_total": ("counter", "Backup/restore/delete runs started (Jobs created), by kind.", RUN),
    "mobackup_successes_total": ("counter", "Runs that completed, by kind.", RUN),
    "mobackup_failures_total": ("counter", "Runs that failed, by kind.", RUN),
    "mobackup_transferred_bytes_total": ("counter", "Bytes newly stored (backups) or written (restores).", RUN),
    "mobackup_run_duration_seconds": ("histogram", "Duration of finished runs, from Job creation.", ("kind",)),
    "mobackup_last_success_timestamp_seconds": ("gauge", "Completion time of the newest Completed backup "
                                                         "of a source (unix seconds).", SOURCE),
    "mobackup_last_success_size_bytes": ("gauge", "Logical size of the newest Completed backup of a source.",
                                         SOURCE),
    "mobackup_storage_available": ("gauge", "1 when the MOBackupStorage was reachable at its last check.",
                                   ("namespace", "storage")),
    "mobackup_active_runs": ("gauge", "Runs currently Pending or Running, by kind.", ("kind",)),
    "mobackup_last_drill_success_timestamp_seconds": ("gauge", "When the newest passing MORestoreDrill of a "
                                                               "source ended (unix seconds).", SOURCE),
    "mobackup_drill_failures_total": ("counter", "MORestoreDrills that failed, by source.", SOURCE),
    "mobackup_copy_lag_seconds": ("gauge", "Age of the oldest Completed backup of a storage not yet copied to a "
                                           "copyTo target (0 when none).", COPY),
    "mobackup_copy_pending_backups": ("gauge", "Completed backups of a storage not yet copied to a copyTo target.",
                                      COPY),
    "mobackup_storage_stored_bytes": ("gauge", "Bytes stored in an S3 storage's repository (status.stats).",
                                      ("namespace", "storage")),
    "mobackup_storage_retention_class_bytes": (
        "gauge", "Bytes of an S3 storage's backups (their share of the blobs and their metadata) by retention class "
                 "(status.stats.bytesByRetentionClass).", ("namespace", "storage", "class")),
}


class Registry:
    """One prometheus-client CollectorRegistry with the metrics of HELP (tests make their own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics: dict[str, Any] = {}
        for name, (kind, text, labels) in HELP.items():
            if kind == "counter":
                self.metrics[name] = Counter(name, text, labels, registry=self.registry)
            elif kind == "gauge":
                self.metrics[name] = Gauge(name, text, labels, registry=self.registry)
            else:
                self.metrics[name] = Histogram(name, text, labels, buckets=BUCKETS, registry=self.registry)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.metrics[name].labels(**labels).inc(value)

    def set(self, name: str, value: float, **labels: str) -> None:
        self.metrics[name].labels(**labels).set(float(value))

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.metrics[name].labels(**labels).observe(value)

    def remove(self, name: str, **labels: str) -> None:
        """Drop one series (e.g. of a copy target no longer configured); absent is fine."""
        with contextlib.suppress(KeyError):
            self.metrics[name].remove(*(labels[k] for k in HELP[name][2]))

    def get(self, name: str, **labels: str) -> float | None:
        """The current value of a gauge or counter series; None when it has no sample yet."""
        sample = name if HELP[name][0] != "counter" or name.endswith("_total") else f"{name}_total"
        return self.registry.get_sample_value(sample, labels)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


REGISTRY = Registry()


def serve(port: int, registry: Registry = REGISTRY, host: str = "0.0.0.0") -> WSGIServer:
    """Serve the metrics on `port` (any path, as before: /metrics) from a daemon thread; returns the
    server (for shutdown in tests)."""
    server, _thread = prometheus_client.start_http_server(port, addr=host, registry=registry.registry)
    return server
