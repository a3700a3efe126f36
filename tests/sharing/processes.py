"""The one way the test servers (SeaweedFS, Azurite) are stopped: their whole process group."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen | None) -> None:
    """SIGTERM the group `process` leads, SIGKILL it after 20 s; nothing if it has already ended."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
