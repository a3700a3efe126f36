"""The one way the test servers (SeaweedFS, Azurite) are stopped: their whole process group."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen | None, grace_s: float = 3.0) -> None:
    """SIGTERM the group `process` leads, SIGKILL it after `grace_s`; nothing if it has already ended.

    SeaweedFS takes ~25 s to shut down on SIGTERM (measured); the servers' data are temporary, so a test
    waits a few seconds, not the whole graceful shutdown.
    """
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
