"""A small REST client for the Kubernetes API (plain dicts, bearer token, our CA).

Used by the harness itself (local node, fixtures, up/down) so that it depends on nothing but
urllib3, and sees exactly what the API server returns. Tests may use the `kubernetes` client
with the kubeconfig files instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import urllib3


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("reason", "")
            self.message = json.loads(body).get("message", body)
        except ValueError:
            self.reason, self.message = "", body
        super().__init__(f"{method} {path}: HTTP {status}: {self.message}")


class KubeApi:
    def __init__(self, server: str, token: str, ca_file: str) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._http = urllib3.PoolManager(
            num_pools=4, maxsize=16, cert_reqs="CERT_REQUIRED", ca_certs=ca_file,
            retries=False, timeout=urllib3.Timeout(connect=5, read=60),
        )

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                query: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        url = self.server + path
        kw: dict[str, Any] = {}
        if timeout is not None:
            kw["timeout"] = urllib3.Timeout(connect=5, read=timeout)
        resp = self._http.request(method, _with_query(url, query), body=data, headers=headers, **kw)
        text = resp.data.decode("utf-8", "replace")
        if resp.status >= 400:
            raise ApiError(resp.status, text, method, path)
        return json.loads(text) if text else None

    def raw_get(self, path: str) -> tuple[int, str]:
        """Status and body text (for /readyz, /version and the like); never raises on HTTP errors."""
        resp = self._http.request("GET", self.server + path,
                                  headers={"Authorization": f"Bearer {self._token}"})
        return resp.status, resp.data.decode("utf-8", "replace")

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def apply(self, path: str, body: dict[str, Any], manager: str = "mobackup-test") -> Any:
        """Server-side apply (path names the object)."""
        return self.request("PATCH", path, body, content_type="application/apply-patch+yaml",
                            query={"fieldManager": manager, "force": "true"})

    def delete(self, path: str, body: dict[str, Any] | None = None, missing_ok: bool = True) -> Any:
        try:
            return self.request("DELETE", path, body)
        except ApiError as e:
            if e.status == 404 and missing_ok:
                return None
            raise

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 240,
              **query: Any) -> Iterator[dict[str, Any]]:
        """Yields watch events ({"type", "object"}); ends when the server closes the stream."""
        q = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
             "timeoutSeconds": str(timeout_seconds), **query}
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        resp = self._http.request("GET", _with_query(self.server + path, q), headers=headers,
                                  preload_content=False,
                                  timeout=urllib3.Timeout(connect=5, read=timeout_seconds + 30))
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, resp.read().decode("utf-8", "replace"), "WATCH", path)
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def _with_query(url: str, query: dict[str, Any] | None) -> str:
    if not query:
        return url
    from urllib.parse import urlencode

    return url + "?" + urlencode({k: v for k, v in query.items() if v is not None})


CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass",
    "CustomResourceDefinition", "PriorityClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "APIService", "CSIDriver", "VolumeSnapshotClass",
})


def object_path(obj: dict[str, Any], plural: str | None = None, default_namespace: str | None = None) -> str:
    """The REST path of an object; namespaced kinds without metadata.namespace go to default_namespace."""
    api_version: str = obj["apiVersion"]
    kind: str = obj["kind"]
    plural = plural or _plural(kind)
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = obj.get("metadata", {}).get("namespace")
    if not ns and kind not in CLUSTER_SCOPED_KINDS:
        ns = default_namespace
    name = obj["metadata"]["name"]
    return f"{base}/namespaces/{ns}/{plural}/{name}" if ns else f"{base}/{plural}/{name}"


def _plural(kind: str) -> str:
    k = kind.lower()
    if k.endswith("s"):
        return k + "es"
    if k.endswith("y"):
        return k[:-1] + "ies"
    return k + "s"
