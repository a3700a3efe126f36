"""A real Azure Blob Storage emulator for tests: Azurite (`azurite-blob` from the npm registry).

`Azurite` starts the blob service on 127.0.0.1 with a free port and a temporary folder, creates containers
with a SharedKey-signed PUT, makes read-only account SAS tokens, and stops the whole process group.
The signing is written here from Microsoft's "Authorize with Shared Key" and "Create an account SAS"
pages (stdlib hmac/hashlib) rather than pulling azure-storage-blob into the dev extra for two requests.
`make test` installs Azurite into tests/sharing/azurite/node_modules (its own package.json).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from tests.sharing.processes import stop_process_group

# The emulator's well-known account and key, published by Microsoft: not a secret, valid only on Azurite.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
API_VERSION = "2021-08-06"
SAS_VERSION = "2019-12-12"  # the account-SAS form without an encryption-scope line
PACKAGE_DIR = Path(__file__).with_name("azurite")


def azurite_binary() -> Path | None:
    """Path of `azurite-blob` installed by `make test` (npm ci in tests/sharing/azurite), if there."""
    binary = PACKAGE_DIR / "node_modules" / ".bin" / "azurite-blob"
    return binary if binary.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sign(text: str, key: str = ACCOUNT_KEY) -> str:
    """Base64 HMAC-SHA256 of `text` under the base64 account key (SharedKey and SAS both use it)."""
    digest = hmac.new(base64.b64decode(key), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def shared_key_authorization(
    method: str, path: str, query: dict[str, str], headers: dict[str, str], content_length: int
) -> str:
    """The `Authorization: SharedKey` value of a Blob request on Azurite's path-style URL `path`."""
    lower = {k.lower(): v for k, v in headers.items()}
    standard = [
        "content-encoding",
        "content-language",
        "content-length",
        "content-md5",
        "content-type",
        "date",
        "if-modified-since",
        "if-match",
        "if-none-match",
        "if-unmodified-since",
        "range",
    ]
    lower["content-length"] = str(content_length) if content_length else ""  # version 2015-02-21+: 0 is empty
    values = [lower.get(name, "") for name in standard]
    canonical_headers = "".join(f"{k}:{lower[k].strip()}\n" for k in sorted(lower) if k.startswith("x-ms-"))
    # path-style URLs carry the account in the path, so it appears twice in the canonical resource
    resource = f"/{ACCOUNT}{path}" + "".join(f"\n{k.lower()}:{query[k]}" for k in sorted(query))
    to_sign = "\n".join([method, *values]) + "\n" + canonical_headers + resource
    return f"SharedKey {ACCOUNT}:{_sign(to_sign)}"


def account_sas(permissions: str, hours: float = 2.0) -> str:
    """An account SAS token (no leading `?`) for the blob service with `permissions` (e.g. `rl`)."""
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)
    fields = {
        "sv": SAS_VERSION,
        "ss": "b",
        "srt": "sco",
        "sp": permissions,
        "se": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "spr": "https,http",
    }
    to_sign = "\n".join(
        [
            ACCOUNT,
            fields["sp"],
            fields["ss"],
            fields["srt"],
            "",
            fields["se"],
            "",
            fields["spr"],
            fields["sv"],
            "",
        ]
    )
    return urlencode({**fields, "sig": _sign(to_sign)}, quote_via=quote)


@dataclass
class Azurite:
    """A running Azurite blob service on loopback."""

    root: Path
    process: subprocess.Popen | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT`: what AZURITE_BLOB_STORAGE_URL names."""
        return f"http://127.0.0.1:{self.port}"

    def env(self, *, sas_token: str | None = None) -> dict[str, str]:
        """AZURE_* variables for the well-known account (its key, or `sas_token` instead of the key)."""
        variables = {
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURITE_BLOB_STORAGE_URL": self.endpoint,
            "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
        }
        if sas_token is None:
            variables["AZURE_STORAGE_ACCOUNT_KEY"] = ACCOUNT_KEY
        else:
            variables["AZURE_STORAGE_SAS_TOKEN"] = sas_token
        return variables

    def start(self, timeout_s: float = 60) -> Azurite:
        """Start the blob service and wait until it answers."""
        binary = azurite_binary()
        if binary is None:
            raise RuntimeError(f"azurite-blob not found: run `make test` (npm ci in {PACKAGE_DIR})")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        command = [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(data),
            "--silent",
            "--skipApiVersionCheck",  # object_store and Arrow's Azure SDK send newer API versions
            "--loose",
            "--disableTelemetry",  # no network but loopback in tests
        ]
        log = (self.root / "azurite.log").open("wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"azurite exited with {self.process.returncode}; see {self.root}/azurite.log"
                )
            try:
                self.request("GET", "", {"comp": "list"})
            except OSError:
                time.sleep(0.3)
                continue
            return self
        self.stop()
        raise RuntimeError(f"Azurite did not answer in {timeout_s:.0f} s; see {self.root}/azurite.log")

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> int:
        """One SharedKey-signed request to `/devstoreaccount1/<path>`; the HTTP status."""
        full = f"/{ACCOUNT}/{path}" if path else f"/{ACCOUNT}"
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
        signed = {"x-ms-date": now, "x-ms-version": API_VERSION, **(headers or {})}
        signed["Authorization"] = shared_key_authorization(method, full, query, signed, len(body))
        target = full + (f"?{urlencode(query)}" if query else "")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, target, body=body, headers=signed)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def create_container(self, name: str) -> None:
        """Create a container (Azurite starts with none): a SharedKey-signed `PUT ?restype=container`."""
        status = self.request("PUT", name, {"restype": "container"})
        if status not in (201, 409):
            raise RuntimeError(f"could not create container {name}: HTTP {status}")

    def stop(self) -> None:
        """Stop the emulator's process group."""
        stop_process_group(self.process)
        self.process = None
