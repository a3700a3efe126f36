"""`mvh serve` faults: a client that drops its connection mid-upload."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.extractor.extract import extract_slides
from mvh.extractor.extract_config import ExtractConfig
from mvh.index.vector import build_index
from mvh.store.store import EmbeddingStore


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A synthetic slide embedded by tiny random-init MV_Hybrid, with its Flat index."""
    folder = tmp_path_factory.mktemp("serve_faults")
    slide = write_synthetic_slide(folder / "s.tiff", 448, 448, 0.5, tissue_rects=[(0, 0, 448, 448)])
    uri = str(folder / "embeddings.lance")
    extract_slides([slide], uri, ExtractConfig("mv_hybrid_tiny", random_init=True, workers=0), device="cpu")
    build_index(EmbeddingStore.open(uri))
    return uri


def _serve(store: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvh", "serve", "--store", store, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if found is None:
        proc.kill()
        raise AssertionError(f"mvh serve did not start: {line}{proc.stdout.read()}")
    url = found.group(0)
    for _ in range(300):  # the socket is bound before uvicorn listens on it
        try:
            httpx.get(url + "/api/health", timeout=2)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"mvh serve does not answer at {url}")


def test_a_client_dropping_mid_upload_is_one_log_line_and_the_server_goes_on(small_store: str) -> None:
    proc, url = _serve(small_store)
    try:
        port = int(url.rsplit(":", 1)[1])
        head = (
            "POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 1000000\r\n\r\n"
        )
        part = '--XyZ\r\nContent-Disposition: form-data; name="image"; filename="t.png"\r\n\r\n'
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head.encode() + part.encode() + b"\x89PNG" + b"\0" * 20000)
        assert httpx.get(url + "/api/health", timeout=30).json()["status"] == "ok"  # still serving
    finally:
        proc.send_signal(signal.SIGINT)  # graceful: the dropped request's handling finishes first
        output, _ = proc.communicate(timeout=60)
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output
    dropped = [line for line in output.splitlines() if "closed the connection" in line]
    assert len(dropped) == 1 and "POST /api/search" in dropped[0], output
