"""A real S3 server for the tests: SeaweedFS (Apache-2.0), one `weed server` process running its
master, volume server, filer and S3 gateway on loopback ports.

Why SeaweedFS: MinIO's server is AGPL-3.0 (the workplace's package list says "use something else"
for AGPL modules); SeaweedFS is a real, widely run S3 server under a permissive license, builds from
the Go module proxy, speaks path-style S3 with multipart uploads, serves TLS, survives a SIGKILL and a
restart on the same data, and enforces S3 Object Lock. `rclone serve s3` (MIT) was the other
candidate: lighter, but with no Object Lock.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import paths, procs

DEFAULT_REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str          # http(s)://127.0.0.1:PORT
    access_key: str
    secret_key: str
    bucket: str
    region: str
    data_dir: Path
    server: procs.Server
    # Starts the same server again (same ports, data and credentials) after a kill.
    launch: Callable[[], procs.Server] = field(repr=False)
    ca_file: Path | None = None

    @property
    def pid(self) -> int:
        return self.server.pid

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing, as a server on an IP needs)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            verify=str(self.ca_file) if self.ca_file else None,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def env(self) -> dict[str, str]:
        """The environment a mobackup process needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "MOBACKUP_S3_PATH_STYLE": "1",
        }

    def kill(self) -> None:
        """SIGKILL, as a crashed or lost server: no graceful shutdown."""
        os.killpg(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.pid_alive(self.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the S3 server (pid {self.pid}) did not die")
            time.sleep(0.05)

    def start_again(self) -> None:
        """After kill(): the same server on the same ports and data, ready to serve."""
        self.server = self.launch()
        _wait_ready(self)

    def stop(self) -> None:
        self.server.stop(timeout=10)


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = paths.free_port()
        if port not in ports:
            ports.append(port)
    return ports


def start_s3(state_dir: Path, bucket: str = "mobackup-test", access_key: str | None = None,
             secret_key: str | None = None, region: str = DEFAULT_REGION,
             tls: tuple[Path, Path, Path] | None = None, ip: str = "127.0.0.1") -> S3Server:
    """Start SeaweedFS with random credentials (in a 0600 config file, never argv), wait until it
    stores an object, create the bucket. `tls` = (certificate, key, CA file) serves HTTPS. `ip`:
    the address it listens on (the real node's pods reach the host's address, not loopback).
    Raises paths.MissingComponent if SeaweedFS cannot be built."""
    paths.ensure_built("seaweedfs")
    state_dir.mkdir(parents=True, exist_ok=True)
    data_dir = state_dir / "seaweedfs-data"
    data_dir.mkdir(exist_ok=True)
    access_key = access_key or "mobk" + secrets.token_hex(6)
    secret_key = secret_key or secrets.token_urlsafe(24)
    config = state_dir / "s3-identities.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"identities": [{"name": "admin", "credentials": [
            {"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, out)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    argv = [
        str(paths.binary("weed")), "server", f"-dir={data_dir}", f"-ip={ip}", f"-ip.bind={ip}",
        "-master.telemetry=false",  # no traffic leaves the machine
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        # Small volumes, created on demand: every bucket is a collection with volumes of its own.
        "-master.volumeSizeLimitMB=256", "-volume.max=1000",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",  # a test server has no clients to drain: stop at once
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    scheme = "http"
    if tls is not None:
        argv += [f"-s3.cert.file={tls[0]}", f"-s3.key.file={tls[1]}"]
        scheme = "https"
    # One volume per collection at a time (the default grows seven): many small test buckets.
    env = {"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}

    def launch() -> procs.Server:
        return procs.start_server("seaweedfs", argv, state_dir / "seaweedfs.log", env=env,
                                  pid_file=state_dir / "seaweedfs.pid")

    server = S3Server(f"{scheme}://{ip}:{s3}", access_key, secret_key, bucket, region, data_dir,
                      launch(), launch, tls[2] if tls else None)
    try:
        _wait_ready(server)
        server.client().create_bucket(Bucket=bucket)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server, timeout: float = 90.0) -> None:
    """Until an object can be written and deleted: the S3 gateway answers before the volume server
    has registered with the master, and a write before that fails."""
    client = server.client()
    probe = "mobackup-ready-probe"

    def stores() -> bool:
        if probe not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=probe)
        client.put_object(Bucket=probe, Key="probe", Body=b"ok")
        client.delete_object(Bucket=probe, Key="probe")
        return True

    procs.wait_until(stores, timeout, "SeaweedFS to store an object", server.server)
