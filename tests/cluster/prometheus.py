"""A real Prometheus (Debian's `prometheus` package, installed by tests/setup.sh) for the tests: it
scrapes targets named in a file (rewritten when a target moves, e.g. a restarted operator on a new
port), evaluates rule files every second, and answers PromQL over its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

JOB = "mo-backup-operator-metrics"  # the job name the chart's Service gives the operator's scrape


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, state_dir: Path, rules: dict[str, Any] | None = None,
                 namespace: str = "mobackup-system") -> None:
        """`namespace`: the operator's, as its Service's targets are labelled (the chart's rules ask
        for `up` there)."""
        if shutil.which("prometheus") is None:
            raise RuntimeError("prometheus is not installed: run tests/setup.sh")
        self.dir = state_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.port = _free_port()
        self.targets = self.dir / "targets.json"
        self.scrape([])
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            # honor_labels as the chart's ServiceMonitor sets it: a metric's `namespace` is its run's.
            "scrape_configs": [{"job_name": JOB, "honor_labels": True,
                                "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}]}],
        }
        if rules:
            (self.dir / "rules.yaml").write_text(yaml.safe_dump(rules))
            config["rule_files"] = [str(self.dir / "rules.yaml")]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "prometheus.log").read_text()[-2000:]
                    raise RuntimeError(f"prometheus did not start: {log}") from None
                time.sleep(0.2)

    def scrape(self, targets: list[str]) -> None:
        """Scrape exactly these host:port targets from now on (Prometheus rereads the file every second)."""
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {"namespace": self.namespace}}]))
        tmp.replace(self.targets)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The answer now, or at the unix time `at` (a past evaluation: ALERTS keeps each alert's history)."""
        params: dict[str, Any] = {"query": promql, **({"time": at} if at is not None else {})}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def wait_for(self, promql: str, timeout: float = 60) -> list[dict[str, Any]]:
        """The first non-empty answer to `promql` within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(promql)):
            assert time.monotonic() < deadline, f"no series for {promql} after {timeout} s"
            time.sleep(0.5)
        return result

    def wait_gone(self, promql: str, timeout: float = 30) -> None:
        """Wait until `promql` has no series (an alert resolved: ALERTS ends with a stale marker)."""
        deadline = time.monotonic() + timeout
        while result := self.query(promql):
            assert time.monotonic() < deadline, f"{promql} still answers after {timeout} s: {result}"
            time.sleep(0.5)

    def seen(self, promql: str, since: float) -> bool:
        """Whether `promql` had a series at some evaluation since the unix time `since` (1 s steps)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": promql, "start": since, "end": time.time(), "step": 1})
        answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert answer["status"] == "success", answer
        return bool(answer["data"]["result"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
