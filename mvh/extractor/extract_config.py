"""The extraction job's inputs and outcomes: `SlideInput`, the validated `ExtractConfig`, and the
`SlideResult` / `ExtractResult` (results.json) of a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvh.core.precision import PRECISIONS
from mvh.errors import UsageError
from mvh.extractor.embedder import Embedder
from mvh.jobs import JobResult
from mvh.store import DONE

ID_SOURCES = ("stem", "path")


@dataclass(frozen=True)
class SlideInput:
    """A slide file, its optional user-given level-0 um/px and optional id (default: the file stem)."""

    path: Path
    mpp: float | None = None
    name: str | None = None

    @property
    def slide_id(self) -> str:
        """The slide id: `name` when given, else the file stem."""
        return self.name if self.name is not None else self.path.stem


def _positive(value: float | None, flag: str) -> None:
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise UsageError(f"{flag} {value} must be a positive, finite number")


@dataclass(frozen=True)
class ExtractConfig:
    """What to embed, where, and how; validated on construction (picklable: it travels to device workers).

    `slides` are files, folders and/or `SlideInput`s; `slides_csv` adds CSV rows (`path`, optional `mpp`).
    """

    model: str
    weights: str | None = None
    random_init: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    mpp: float = 0.5
    tile_px: int = 224
    min_tissue: float = 0.25
    batch_size: int = 64
    workers: int = 0
    precision: str = "auto"
    dtype: str = "float32"
    overwrite: bool = False
    seed: int = 0
    max_tiles: int | None = None  # only the first N tissue tiles of each slide (quick tries, benchmarks)
    slides: tuple[Path | SlideInput, ...] = ()
    store: str = "embeddings.lance"
    recursive: bool = False
    glob: str | None = None
    slides_csv: Path | None = None
    slide_mpp: float | None = None
    slide_id_from: str = "stem"
    device: str = "auto"
    devices: tuple[str, ...] = ()
    ray_address: str | None = None
    ray_cpus_per_worker: float = 1.0
    ray_workers: int | None = None
    ray_max_retries: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "slides", tuple(s if isinstance(s, SlideInput) else Path(s) for s in self.slides)
        )
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "store", str(self.store))
        if self.slides_csv is not None:
            object.__setattr__(self, "slides_csv", Path(self.slides_csv))
        if self.dtype not in ("float32", "float16"):
            raise UsageError(f"--dtype {self.dtype}: stored embeddings are float32 or float16")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}")
        if self.slide_id_from not in ID_SOURCES:
            raise UsageError(f"--slide-id-from {self.slide_id_from}: choose stem or path")
        _positive(self.mpp, "--mpp")
        _positive(self.slide_mpp, "--slide-mpp")
        for flag, value in (("--tile-px", self.tile_px), ("--batch-size", self.batch_size)):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{flag} {value} must be a whole number >= 1")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise UsageError(f"--workers {self.workers} must be 0 (decode in this process) or more")
        if not (math.isfinite(self.min_tissue) and 0.0 <= self.min_tissue <= 1.0):
            raise UsageError(f"--min-tissue {self.min_tissue} must be a fraction between 0 and 1")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise UsageError(f"max_tiles={self.max_tiles} must be at least 1 (or None for all tiles)")
        if not self.store.strip():
            raise UsageError("--store is empty: give a store folder (or LanceDB URI)")
        if self.ray_address is not None and not self.ray_address.strip():
            raise UsageError("--ray-address is empty: give `local`, `auto` or the cluster's address")
        if not (math.isfinite(self.ray_cpus_per_worker) and self.ray_cpus_per_worker > 0):
            raise UsageError(f"--ray-cpus-per-worker {self.ray_cpus_per_worker} must be a positive number")
        if self.ray_workers is not None and self.ray_workers < 1:
            raise UsageError(f"--ray-workers {self.ray_workers} must be at least 1")
        if self.ray_max_retries < 0:
            raise UsageError(f"--ray-max-retries {self.ray_max_retries} must be 0 or more")

    @property
    def on_ray(self) -> bool:
        """Whether the job runs on Ray: a cluster address was given, or several devices."""
        return self.ray_address is not None or len(self.devices) > 1

    def embedder(self, device: str) -> Embedder:
        """Build the embedder this config names on `device`."""
        return Embedder(
            self.model, self.weights, self.random_init, self.overrides, device, self.precision, self.seed
        )


@dataclass
class SlideResult:
    """Outcome of one slide in a run: done, skipped (already in the store) or failed with its error."""

    slide_id: str
    path: str
    status: str
    n_tiles: int = 0
    seconds: float = 0.0
    error: str = ""
    device: str = ""
    retries: int = 0  # times the slide was started again after its Ray worker died


@dataclass
class ExtractResult(JobResult, job="extract"):
    """What an extraction run did (results.json is `to_dict()`)."""

    store: str
    model: str
    weights_sha256: str
    devices: list[str]
    seconds: float
    slides: list[SlideResult]
    notes: list[str] = field(default_factory=list)
    slides_done: int = 0
    slides_skipped: int = 0
    slides_failed: int = 0
    tiles: int = 0
    tiles_per_s: float = 0.0
    retries: int = 0

    def __post_init__(self) -> None:
        self.retries = sum(r.retries for r in self.slides)
        self.slides_done = self.count(DONE)
        self.slides_skipped = self.count("skipped")
        self.slides_failed = self.count("failed")
        self.tiles = self.n_tiles
        self.tiles_per_s = round(self.n_tiles / self.seconds, 2) if self.seconds > 0 else 0.0

    def count(self, status: str) -> int:
        """Number of slides with `status`."""
        return sum(r.status == status for r in self.slides)

    @property
    def n_tiles(self) -> int:
        """Tiles embedded in this run."""
        return sum(r.n_tiles for r in self.slides if r.status == DONE)

    @property
    def exit_code(self) -> int:
        """1 when any slide failed, else 0."""
        return 1 if self.count("failed") else 0
