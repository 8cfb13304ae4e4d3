"""Prometheus metrics in the text exposition format, served by a small HTTP server thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Labels = tuple[tuple[str, str], ...]

BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))

HELP = {
    "mobackup_runs_total": ("counter", "Backup/restore/delete runs started (Jobs created), by kind."),
    "mobackup_successes_total": ("counter", "Runs that completed, by kind."),
    "mobackup_failures_total": ("counter", "Runs that failed, by kind."),
    "mobackup_transferred_bytes_total": ("counter", "Bytes newly stored (backups) or written (restores)."),
    "mobackup_run_duration_seconds": ("histogram", "Duration of finished runs, from Job creation."),
    "mobackup_last_success_timestamp_seconds": ("gauge", "Completion time of the newest Completed backup "
                                                         "of a source (unix seconds)."),
    "mobackup_last_success_size_bytes": ("gauge", "Logical size of the newest Completed backup of a source."),
    "mobackup_storage_available": ("gauge", "1 when the MOBackupStorage was reachable at its last check."),
    "mobackup_active_runs": ("gauge", "Runs currently Pending or Running, by kind."),
}


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    esc = [(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in items]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, dict[Labels, float]] = {}
        self.hist: dict[str, dict[Labels, list[float]]] = {}  # bucket counts..., sum, count

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self.lock:
            series = self.values.setdefault(name, {})
            k = _key(labels)
            series[k] = series.get(k, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            self.values.setdefault(name, {})[_key(labels)] = float(value)

    def set_max(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            series = self.values.setdefault(name, {})
            k = _key(labels)
            series[k] = max(series.get(k, float("-inf")), float(value))

    def get(self, name: str, **labels: str) -> float | None:
        with self.lock:
            return self.values.get(name, {}).get(_key(labels))

    def observe(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            h = self.hist.setdefault(name, {}).setdefault(_key(labels), [0.0] * (len(BUCKETS) + 2))
            for i, b in enumerate(BUCKETS):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def render(self) -> str:
        out: list[str] = []
        with self.lock:
            names = sorted(set(self.values) | set(self.hist) | set(HELP))
            for name in names:
                kind, text = HELP.get(name, ("untyped", name))
                out.append(f"# HELP {name} {text}")
                out.append(f"# TYPE {name} {kind}")
                for labels, v in sorted(self.values.get(name, {}).items()):
                    out.append(f"{name}{_fmt_labels(labels)} {_num(v)}")
                for labels, h in sorted(self.hist.get(name, {}).items()):
                    for i, b in enumerate(BUCKETS):
                        out.append(f"{name}_bucket{_fmt_labels(labels, (('le', _num(b)),))} {_num(h[i])}")
                    out.append(f"{name}_sum{_fmt_labels(labels)} {_num(h[-2])}")
                    out.append(f"{name}_count{_fmt_labels(labels)} {_num(h[-1])}")
        return "\n".join(out) + "\n"


REGISTRY = Registry()


def serve(port: int, registry: Registry = REGISTRY, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve GET /metrics on `port` from a daemon thread; returns the server (for shutdown in tests)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = registry.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
