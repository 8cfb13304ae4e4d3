"""`mobackup operator`: run the kopf operator (KUBECONFIG or the in-cluster account)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="mobackup operator",
                                description="Watch MOBackup, MORestore, MOBackupStorage and MOBackupSchedule.")
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="namespace to watch (repeatable); default: all namespaces")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    p.add_argument("--standalone", action="store_true",
                   help="no kopf peering (one replica); without it replicas coordinate through kopf peering")
    p.add_argument("--peering", "--peering-name", dest="peering", default=None,
                   help="kopf peering object name (with replicas > 1; implies not --standalone)")
    p.add_argument("--metrics-port", type=int, default=int(env.get("MOBACKUP_METRICS_PORT", "9090")),
                   help="Prometheus /metrics port (0: off)")
    p.add_argument("--health-port", type=int, default=int(env.get("MOBACKUP_HEALTH_PORT", "8080")),
                   help="liveness /healthz port (0: off)")
    p.add_argument("--agent-image", default=env.get("MOBACKUP_AGENT_IMAGE"), help="image of the Job pods")
    p.add_argument("--job-service-account", default=env.get("MOBACKUP_JOB_SERVICE_ACCOUNT"),
                   help="ServiceAccount of the Job pods (progress patches)")
    p.add_argument("--resync-seconds", type=float, default=float(env.get("MOBACKUP_RESYNC_SECONDS", "3")),
                   help="how often active runs, due schedules and storage checks are re-driven")
    p.add_argument("--log-level", default=env.get("MOBACKUP_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _expected_retries(record: logging.LogRecord) -> bool:
    """kopf logs a TemporaryError (our "still waiting for the delete Job") at ERROR: it is progress."""
    if "failed temporarily" in record.getMessage():
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger("kopf.objects").isEnabledFor(logging.INFO)
    return True


def _retried_requests(record: logging.LogRecord) -> bool:
    """kopf logs each API request it will retry at ERROR (e.g. 429 "storage is (re)initializing"
    while the API server builds the watch cache of a CRD just installed): a warning until kopf
    gives up, which it logs as "escalating" and keeps at ERROR."""
    if (record.name.startswith("kopf") and record.levelno == logging.ERROR
            and "failed; will retry" in record.getMessage()):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kubernetes", "urllib3", "botocore", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.log_level != "DEBUG":
        logging.getLogger("kopf").setLevel(logging.WARNING)  # kopf is chatty per event at INFO
    logging.getLogger("kopf.objects").addFilter(_expected_retries)
    for handler in logging.getLogger().handlers:  # kopf logs from many child loggers
        handler.addFilter(_retried_requests)

    import kopf

    from . import handlers, metrics
    from .controller import Ctx
    from .jobs import OperatorDefaults
    from .kube import Kube, load_config

    load_config()
    defaults = OperatorDefaults.from_env()
    if args.agent_image:
        defaults = replace(defaults, image=args.agent_image)
    if args.job_service_account:
        defaults = replace(defaults, service_account=args.job_service_account)
    namespaces = [] if args.all_namespaces else list(dict.fromkeys(args.namespace))
    handlers.configure(Ctx(Kube(), defaults), namespaces, args.resync_seconds)
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    logging.getLogger("mobackup.operator").info(
        "watching %s; agent image %s", ", ".join(namespaces) or "all namespaces", defaults.image)
    kopf.run(standalone=args.standalone and not args.peering, peering_name=args.peering, namespaces=namespaces,
             clusterwide=not namespaces, liveness_endpoint=liveness)
    return 0


if __name__ == "__main__":
    sys.exit(main())
