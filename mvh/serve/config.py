"""Settings of `mvh serve`, validated in one place (UsageError naming the flag and the fix)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from mvh.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_UPLOAD_MB = 20.0
# Pixels a query image may decode to (a 1000 px tile is 1 MP; a 20 MB PNG can hold far more).
DEFAULT_MAX_PIXELS = 40_000_000


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """What `mvh serve` serves and how: stores, results folders, address, token and upload limits."""

    stores: list[str]
    results: list[Path] = field(default_factory=list)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    insecure_no_token: bool = False
    max_upload_mb: float = DEFAULT_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not self.stores:
            raise UsageError("mvh serve needs at least one --store STORE_DIR (a store made by `mvh extract`)")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a TCP port; give 1-65535 (0 picks a free one)")
        if self.token is not None and not self.token.strip():
            raise UsageError("--token is empty; give a secret string (e.g. `openssl rand -hex 16`)")
        if not is_loopback(self.host) and self.token is None and not self.insecure_no_token:
            raise UsageError(
                f"--host {self.host} is reachable from other machines and the app reads patient slides: "
                "give --token SECRET (or --insecure-no-token if the network is trusted)"
            )
        if not self.max_upload_mb > 0:
            raise UsageError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if self.max_pixels < 1:
            raise UsageError(f"max_pixels must be positive, got {self.max_pixels}")
        self.results = [Path(r) for r in self.results]
        for folder in self.results:
            if not (folder / "results.json").is_file():
                raise UsageError(
                    f"--results {folder}: no results.json there; point it at the --out folder of "
                    "`mvh eval survival` or `mvh eval st`"
                )

    @property
    def max_upload_bytes(self) -> int:
        """The upload cap in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)
