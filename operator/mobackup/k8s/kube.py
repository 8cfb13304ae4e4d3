"""A thin dict-in/dict-out adapter over the kubernetes client (what the operator and the agent use).

Raw dicts rather than the client's models: they match what kopf hands to handlers, and status
patches are merge patches of plain JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from .models import GROUP, VERSION

log = logging.getLogger("mobackup.kube")

PLURALS = {"MOBackup": "mobackups", "MORestore": "morestores", "MOBackupStorage": "mobackupstorages",
           "MOBackupSchedule": "mobackupschedules", "MORestoreDrill": "morestoredrills"}
MERGE = "application/merge-patch+json"


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


def load_config() -> None:
    """In-cluster account when running in a pod, else KUBECONFIG / ~/.kube/config."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
            "/var/run/secrets/kubernetes.io/serviceaccount/token") and not os.environ.get("KUBECONFIG"):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def _raise(e: ApiException) -> None:
    if e.status == 404:
        raise NotFound(e.reason) from None
    if e.status == 409:
        raise Conflict(e.reason) from None
    raise e


def _data(resp: Any) -> dict[str, Any]:
    return json.loads(resp.data) if resp.data else {}


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = api_client or kubernetes.client.ApiClient()
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.coord = kubernetes.client.CoordinationV1Api(self.client)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return _data(fn(*args, _preload_content=False, **kwargs))
        except ApiException as e:
            _raise(e)
            raise  # unreachable

    # ------------------------------------------------------------------ custom resources
    def get_cr(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        return self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, ns, PLURALS[kind], name)

    def list_cr(self, kind: str, ns: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        kw = {"label_selector": label_selector} if label_selector else {}
        return self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURALS[kind],
                          **kw).get("items", [])

    def list_cr_all(self, kind: str) -> list[dict[str, Any]]:
        return self._call(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURALS[kind]).get("items", [])

    def create_cr(self, kind: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, ns, PLURALS[kind], body)

    def delete_cr(self, kind: str, ns: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, ns, PLURALS[kind], name)

    def patch_cr(self, kind: str, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, PLURALS[kind], name,
                          patch, _content_type=MERGE)

    def patch_status(self, kind: str, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, ns,
                          PLURALS[kind], name, {"status": status}, _content_type=MERGE)

    # ------------------------------------------------------------------ core objects
    def get_secret(self, ns: str, name: str) -> dict[str, Any]:
        return self._call(self.core.read_namespaced_secret, name, ns)

    def get_configmap(self, ns: str, name: str) -> dict[str, Any]:
        return self._call(self.core.read_namespaced_config_map, name, ns)

    def get_pvc(self, ns: str, name: str) -> dict[str, Any]:
        return self._call(self.core.read_namespaced_persistent_volume_claim, name, ns)

    def list_pods(self, ns: str, label_selector: str) -> list[dict[str, Any]]:
        return self._call(self.core.list_namespaced_pod, ns, label_selector=label_selector).get("items", [])

    def create_event(self, ns: str, body: dict[str, Any]) -> None:
        self._call(self.core.create_namespaced_event, ns, body)

    # ------------------------------------------------------------------ jobs
    def get_job(self, ns: str, name: str) -> dict[str, Any]:
        return self._call(self.batch.read_namespaced_job, name, ns)

    def create_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.batch.create_namespaced_job, ns, body)

    def delete_job(self, ns: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(self.batch.delete_namespaced_job, name, ns, propagation_policy="Background")

    # ------------------------------------------------------------------ workloads (only through /scale)
    def get_scale(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        fn = (self.apps.read_namespaced_stateful_set_scale if kind == "StatefulSet"
              else self.apps.read_namespaced_deployment_scale)
        return self._call(fn, name, ns)

    def scale_workload(self, kind: str, ns: str, name: str, replicas: int) -> dict[str, Any]:
        fn = (self.apps.patch_namespaced_stateful_set_scale if kind == "StatefulSet"
              else self.apps.patch_namespaced_deployment_scale)
        return self._call(fn, name, ns, {"spec": {"replicas": replicas}}, _content_type=MERGE)

    # ------------------------------------------------------------------ leases
    def get_lease(self, ns: str, name: str) -> dict[str, Any]:
        return self._call(self.coord.read_namespaced_lease, name, ns)

    def create_lease(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.coord.create_namespaced_lease, ns, body)

    def replace_lease(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Optimistic: body carries metadata.resourceVersion, a concurrent writer gets Conflict."""
        return self._call(self.coord.replace_namespaced_lease, name, ns, body)

    def delete_lease(self, ns: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(self.coord.delete_namespaced_lease, name, ns)

    # ------------------------------------------------------------------ VolumeSnapshots, PVCs
    def get_obj(self, group: str, version: str, ns: str, plural: str, name: str) -> dict[str, Any]:
        return self._call(self.custom.get_namespaced_custom_object, group, version, ns, plural, name)

    def create_obj(self, group: str, version: str, ns: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.custom.create_namespaced_custom_object, group, version, ns, plural, body)

    def delete_obj(self, group: str, version: str, ns: str, plural: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(self.custom.delete_namespaced_custom_object, group, version, ns, plural, name)

    def create_pvc(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.core.create_namespaced_persistent_volume_claim, ns, body)

    def delete_pvc(self, ns: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(self.core.delete_namespaced_persistent_volume_claim, name, ns)

    # ------------------------------------------------------------------ discovery
    def has_api(self, group: str, version: str) -> bool:
        try:
            resp = self.client.call_api(f"/apis/{group}/{version}", "GET", auth_settings=["BearerToken"],
                                        _preload_content=False, _return_http_data_only=True)
            return getattr(resp, "status", 200) == 200
        except ApiException:
            return False

