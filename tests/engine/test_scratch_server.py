"""The scratch MatrixOne of drills, scoped restores and restores to a time dies with the mobackup
that started it: a killed run must not leave a server holding MatrixOne's fixed ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mobackup.engine import drill

pytestmark = pytest.mark.skipif(not drill.netns_available(), reason="bubblewrap cannot make namespaces here")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; it holds no port.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("hostname", [None, "mo-backup-host"], ids=["plain", "hostname"])
def test_scratch_server_dies_with_a_killed_mobackup(tmp_path: Path, hostname: str | None) -> None:
    # A stand-in for mo-service that records its pid and waits: what matters is the process tree.
    fake = tmp_path / "mo-service"
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/server.pid\nexec sleep 600\n")
    fake.chmod(0o755)
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from mobackup.engine.drill import ScratchServer
        ScratchServer(Path({str(fake)!r}), Path({str(tmp_path)!r}), {hostname!r}).start()
        time.sleep(600)
        """)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pid_file = tmp_path / "server.pid"
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the stand-in server never started"
        assert parent.poll() is None, "the starting process died"
        time.sleep(0.05)
    server = int(pid_file.read_text())
    assert _alive(server)
    parent.send_signal(signal.SIGKILL)  # no finally, no stop(): only the kernel can clean up
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(server):
        if time.monotonic() > deadline:
            os.kill(server, signal.SIGKILL)
            pytest.fail("the scratch server outlived the killed mobackup")
        time.sleep(0.05)
