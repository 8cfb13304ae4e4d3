"""Kubernetes Events for every transition (core/v1 Events; never a secret in the message)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

from .kube import Kube
from .status import iso

log = logging.getLogger("mobackup.events")
COMPONENT = "mobackup-operator"
INSTANCE = os.environ.get("HOSTNAME") or socket.gethostname()


def event_body(obj: dict[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    now = iso()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta.get('name', 'x')[:200]}.{uuid.uuid4().hex[:16]}",
                     "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                           "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "type": type_, "reason": reason, "message": message[:1024],
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT, "reportingInstance": INSTANCE[:128],
    }


def emit(kube: Kube, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    meta = obj.get("metadata") or {}
    log.info("%s %s/%s: %s %s", obj.get("kind"), meta.get("namespace"), meta.get("name"), reason, message)
    try:
        kube.create_event(meta["namespace"], event_body(obj, type_, reason, message))
    except Exception as e:  # an Event is a courtesy, never a reason to fail a backup
        log.warning("cannot post event %s: %s", reason, str(e).splitlines()[0] if str(e) else type(e).__name__)
