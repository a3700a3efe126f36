"""Settings of `mvh serve`, validated in one place (UsageError naming the flag and the fix); no file I/O."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from mvh.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_UPLOAD_MB = 20.0
# Pixels a query image may decode to (a 1000 px tile is 1 MP; a 20 MB PNG can hold far more).
DEFAULT_MAX_PIXELS = 40_000_000
# Image queries arriving within this many ms of a waiting one share its model forward (see `batcher`).
DEFAULT_BATCH_WAIT_MS = 2.0
DEFAULT_MAX_BATCH = 16
# Intra-op threads of the model forward (one worker per store runs them): half the cores, leaving the
# rest to decode uploads and serve tiles. On 2 cores that is 1: a 2-thread OpenMP team busy-waits for its
# partner while other threads hold the other core (measured at load 8: a forward of 10 tiles took 780 ms
# of CPU with 2 threads, 49 ms with 1; on a quiet machine 37 ms vs 44 ms).
def default_torch_threads() -> int:
    """Half the cores this process may run on (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


# JPEG bytes of DeepZoom and stored tiles kept in memory (a 254 px DeepZoom tile is ~10-20 KB).
DEFAULT_TILE_CACHE_MB = 256.0


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
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
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    tile_cache_mb: float = DEFAULT_TILE_CACHE_MB
    torch_threads: int = field(default_factory=default_torch_threads)

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
        if not 1 <= self.max_batch <= 19:
            raise UsageError(
                f"max_batch must be 1-19 (FAISS searches 20+ queries differently), got {self.max_batch}"
            )
        if not 0 <= self.batch_wait_ms <= 1000:
            raise UsageError(f"batch_wait_ms must be 0-1000 ms, got {self.batch_wait_ms}")
        if self.torch_threads < 1:
            raise UsageError(f"torch_threads must be at least 1, got {self.torch_threads}")
        if not self.tile_cache_mb >= 0:
            raise UsageError(f"tile_cache_mb must be 0 or more, got {self.tile_cache_mb}")
        # the folders are checked when the app is built
        object.__setattr__(self, "results", [Path(r) for r in self.results])

    @property
    def max_upload_bytes(self) -> int:
        """The upload cap in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)
