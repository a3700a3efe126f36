"""Batch extraction: slides -> tile grids -> one DataLoader stream -> backbone -> one store commit per slide.

Pipeline (one device): ONE DataLoader streams all pending slides. With n worker processes, slides are
dealt out whole, round-robin, while every worker has one; the last `len(slides) % n` slides (the only
slide of a one-slide job) are split: each worker plans them (tissue detection on a low level) and
decodes its own contiguous share of their tiles, so `--workers n` speeds up one slide as well. Batches
fill up across slide boundaries, so the device does not wait between slides and planning overlaps
embedding. Batches arrive pinned on CUDA and are copied non-blocking as uint8 (normalised on the
device). Embeddings land in per-slide buffers; a slide is committed to the store as soon as its last
tile is embedded (see `mvh.store.store` for the atomic commit protocol). A slide that cannot be
opened, has no mpp, no tissue or an unreadable tile is recorded as failed and the run goes on.

Several devices or machines (`--devices 0,1`, `--ray-address`): Ray (`mvh.extractor.ray_extract`), one
embedding actor per device, slides scheduled dynamically, this process the one committer. Done slides are
skipped unless `overwrite`, and only when their path, size and a cheap content hash match the done row: a
different file with the same id is refused (use `slide_id_from="path"`). Any exception while opening,
tiling or decoding one slide fails that slide only. The job shape: `run_extract(ExtractConfig(...),
progress=...) -> ExtractResult`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from mvh.core.device import resolve_device
from mvh.core.files import sampled_hash
from mvh.core.precision import PRECISIONS
from mvh.errors import DataError, MvhError, StoreError, StoreWriteError, UsageError
from mvh.extractor.dataset import TileDataset
from mvh.extractor.embedder import Embedder
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import TileGrid, make_tile_grid, read_tile
from mvh.jobs import JobResult
from mvh.progress import SLIDES, TILES, Event, Progress, report
from mvh.store import DONE, EmbeddingStore
from mvh.store.slide_ids import check_slide_id

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".svslide",
    ".bif",
    ".tif",
    ".tiff",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
)
ID_SOURCES = ("stem", "path")
_PLAN_FAILED = "cannot be tiled"


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


# ---------------------------------------------------------------------------------------- inputs
def _read_slides_csv(path: Path) -> list[SlideInput]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the slides CSV ({exc}); save it as UTF-8 text") from exc
    if not rows or "path" not in rows[0]:
        raise DataError(f"{path}: the slides CSV needs a `path` column (and optionally `mpp`)")
    out = []
    for i, row in enumerate(rows, start=2):
        cell = row.get("path")
        if not isinstance(cell, str) or not cell.strip() or "\0" in cell:
            raise DataError(f"{path}:{i}: empty or invalid `path` cell; give the slide file of each row")
        slide = Path(cell.strip())
        slide = slide if slide.is_absolute() else path.parent / slide
        mpp = row.get("mpp")
        mpp = mpp.strip() if isinstance(mpp, str) else ""
        try:
            value = float(mpp) if mpp else None
        except ValueError:
            raise DataError(f"{path}:{i}: mpp {mpp!r} is not a number of um/px") from None
        if value is not None and not (math.isfinite(value) and value > 0):
            raise DataError(f"{path}:{i}: mpp {mpp!r} must be a positive number of um/px")
        out.append(SlideInput(slide, value))
    return out


def _path_id(path: Path) -> str:
    """The id of `path` for `--slide-id-from path`: its path relative to the working folder, `/` as `__`."""
    relative = Path(os.path.relpath(path, Path.cwd()))
    if relative.parts and relative.parts[0] == "..":
        raise UsageError(
            f"{path}: --slide-id-from path names slides by their path below the current folder; run mvh "
            "from a folder that contains the slides"
        )
    return "__".join(relative.with_suffix("").parts)


def find_slides(
    inputs: Sequence[Path | str] = (),
    recursive: bool = False,
    glob: str | None = None,
    slides_csv: Path | str | None = None,
    slide_mpp: float | None = None,
    slide_id_from: str = "stem",
) -> list[SlideInput]:
    """Slide files from paths, folders (files matching `glob` or a slide suffix) and a CSV; ids checked."""
    found: list[SlideInput] = []
    for item in map(Path, inputs):
        if item.is_dir():
            candidates = item.rglob(glob or "*") if recursive else item.glob(glob or "*")
            files = sorted(
                p for p in candidates if p.is_file() and (glob or p.suffix.lower() in SLIDE_SUFFIXES)
            )
            found.extend(SlideInput(p, slide_mpp) for p in files)
        elif item.exists():
            found.append(SlideInput(item, slide_mpp))
        else:
            raise UsageError(f"{item}: no such slide file or directory")
    if slides_csv is not None:
        found.extend(_read_slides_csv(Path(slides_csv)))
    return _checked_inputs(found, slide_id_from, [str(p) for p in inputs])


def _checked_inputs(
    found: Sequence[SlideInput], slide_id_from: str, described: list[str]
) -> list[SlideInput]:
    """Resolved, de-duplicated inputs with safe, unique ids (UsageError naming the file otherwise)."""
    unique: list[SlideInput] = []
    for s in dict.fromkeys(SlideInput(s.path.resolve(), s.mpp, s.name) for s in found):
        name = s.name if s.name is not None or slide_id_from == "stem" else _path_id(s.path)
        item = SlideInput(s.path, s.mpp, name)
        check_slide_id(item.slide_id, str(s.path))
        unique.append(item)
    ids = Counter(s.slide_id for s in unique)
    clashes = sorted(k for k, n in ids.items() if n > 1)
    if clashes:
        paths = [str(s.path) for s in unique if s.slide_id == clashes[0]]
        raise UsageError(
            f"slides {paths} share the id {clashes[0]!r}: name slides by their relative path with "
            "--slide-id-from path, or extract them into separate stores"
        )
    if not unique:
        raise UsageError(f"no slides found in {described}: check the paths, --glob or --recursive")
    return unique


# ---------------------------------------------------------------------------------------- pipeline
def _loader(dataset: Dataset, batch_size: int | None, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        # A worker busy tiling a large slide must not hold back batches the others have ready; each
        # worker's own messages still arrive in order, which is all the pipeline relies on.
        in_order=False,
    )


def _batches(loader: DataLoader) -> Iterator[Any]:
    """Iterate a loader; lancedb's fork warning is silenced: the workers decode tiles, never touch Lance."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
        iterator = iter(loader)
    yield from iterator


def embed_grid(embedder: Embedder, grid: TileGrid, batch_size: int = 64, workers: int = 0) -> np.ndarray:
    """Embeddings float32 [N, dim] of a grid's tiles, decoded in `workers` DataLoader processes."""
    out = np.empty((len(grid), embedder.dim), dtype=np.float32)
    dataset = TileDataset(grid)
    try:
        for tiles, index in _batches(_loader(dataset, batch_size, workers, embedder.device)):
            out[index.numpy()] = embedder.embed_uint8(tiles)
    finally:
        dataset.close()
    return out


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _failure(source: SlideInput, what: str, exc: BaseException) -> str:
    """One line for a slide's failure: mvh errors as they are, others with their type (a corrupt file)."""
    if isinstance(exc, MvhError):
        return _message(exc) if what == _PLAN_FAILED else f"{what}: {_message(exc)}"
    return (
        f"{source.path}: {what} ({type(exc).__name__}: {_message(exc)}); the file may be corrupt or truncated"
    )


def _plan(source: SlideInput, cfg: ExtractConfig) -> tuple[dict[str, Any], TileGrid]:
    """Open and tile one slide: its store record and grid (SlideError / MissingMppError / NoTissueError)."""
    start = time.perf_counter()
    with open_slide(source.path, mpp=source.mpp) as slide:
        width, height = slide.dimensions
        record = {
            "slide_id": source.slide_id,
            "path": str(source.path),
            "size": source.path.stat().st_size,
            "file_hash": sampled_hash(source.path),
            "width": int(width),
            "height": int(height),
            "mpp": float(slide.mpp),
            "mpp_source": slide.mpp_source,
        }
        grid = make_tile_grid(slide, mpp=cfg.mpp, tile_px=cfg.tile_px, min_tissue=cfg.min_tissue)
    if grid.slide_id != source.slide_id:  # ids from paths (--slide-id-from path) also name the tiles
        grid = dataclasses.replace(grid, slide_id=source.slide_id, tile_ids=[])
    if cfg.max_tiles is not None and len(grid) > cfg.max_tiles:
        grid = grid.subset(np.arange(cfg.max_tiles))
    record["plan_seconds"] = time.perf_counter() - start
    return record, grid


def tiles_of_worker(k: int, n_slides: int, n_tiles: int, worker: int, workers: int) -> range:
    """The tiles of slide k (of `n_slides`) that DataLoader worker `worker` (of `workers`) decodes.

    Slides are dealt out whole while every worker gets one (slide k to worker k mod n); the remaining
    `n_slides % workers` slides are split in contiguous shares (neighbouring tiles share source tiles).
    """
    whole = n_slides - n_slides % workers
    if k < whole:
        return range(n_tiles) if k % workers == worker else range(0)
    return range(worker * n_tiles // workers, (worker + 1) * n_tiles // workers)


class _SlideStream(IterableDataset):
    """Plans and decodes pending slides, each worker its slides or its share of a split slide.

    Yields messages: ("planned", k, (record, grid)) before any tile of slide k, ("failed", k, error) when
    slide k cannot be opened, tiled or decoded, and ("batch", keys int64 [B, 2] of (slide k, tile i),
    tiles uint8 [B, H, W, 3]). Every worker that plans a split slide sends its "planned" and "failed"
    messages (the consumer keeps the first). A worker's batches fill up across its slides, so batches
    span slide boundaries.
    """

    def __init__(self, slides: Sequence[SlideInput], cfg: ExtractConfig) -> None:
        self.slides = list(slides)
        self.cfg = cfg

    def __iter__(self) -> Iterator[tuple[str, Any, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        size = self.cfg.batch_size
        tiles: list[np.ndarray] = []
        keys: list[tuple[int, int]] = []
        whole = len(self.slides) - len(self.slides) % workers
        for k, source in enumerate(self.slides):
            if k < whole and k % workers != worker:
                continue  # a whole slide of another worker
            try:
                record, grid = _plan(source, self.cfg)
            except Exception as exc:  # noqa: BLE001 (any failure of one slide fails that slide only)
                yield "failed", k, _failure(source, _PLAN_FAILED, exc)
                continue
            yield "planned", k, (record, grid)
            share = tiles_of_worker(k, len(self.slides), len(grid), worker, workers)
            if not share:
                continue
            try:
                with open_slide(source.path, mpp=source.mpp) as slide:
                    for i in share:
                        tiles.append(read_tile(slide, grid, i))
                        keys.append((k, i))
                        if len(tiles) == size:
                            yield "batch", torch.tensor(keys), torch.from_numpy(np.stack(tiles))
                            tiles, keys = [], []
            except Exception as exc:  # noqa: BLE001 (any failure of one slide fails that slide only)
                kept = [j for j, key in enumerate(keys) if key[0] != k]
                tiles, keys = [tiles[j] for j in kept], [keys[j] for j in kept]
                yield "failed", k, _failure(source, "tile decode failed", exc)
        if tiles:
            yield "batch", torch.tensor(keys), torch.from_numpy(np.stack(tiles))


@dataclass
class _Job:
    """A planned slide collecting its embeddings."""

    record: dict[str, Any]
    grid: TileGrid
    buffer: np.ndarray
    started: float
    filled: int = 0


def _failed_record(source: SlideInput) -> dict[str, Any]:
    try:
        size = source.path.stat().st_size
    except OSError:
        size = None
    return {"slide_id": source.slide_id, "path": str(source.path), "size": size, "mpp": source.mpp}


def run_pipeline(
    embedder: Embedder,
    store: EmbeddingStore,
    slides: Sequence[SlideInput],
    cfg: ExtractConfig,
    progress: Progress | None = None,
) -> list[SlideResult]:
    """Embed `slides` (all pending) into `store` on the embedder's device; return one result per slide."""
    device = str(embedder.device)
    results: list[SlideResult] = []
    jobs: dict[int, _Job] = {}
    closed: set[int] = set()  # done or failed: later messages of a split slide's other workers are void

    def fail(k: int, error: str, record: dict[str, Any] | None = None) -> None:
        jobs.pop(k, None)
        closed.add(k)
        source = slides[k]
        if not store.add_failed_slide(record or _failed_record(source), error):
            error += " (the tiles committed before are kept)"
        seconds = float((record or {}).get("seconds") or 0.0)
        results.append(SlideResult(source.slide_id, str(source.path), "failed", 0, seconds, error, device))
        report(progress, Event.ADVANCE, SLIDES)

    def finish(k: int) -> None:
        job = jobs.pop(k)
        closed.add(k)
        record = dict(job.record, seconds=job.record["plan_seconds"] + time.perf_counter() - job.started)
        try:
            store.add_slide(record, job.grid.to_frame(), job.buffer)
        except StoreWriteError:
            raise  # disk full / I/O error: every later write would fail too; stop with one line
        except StoreError as exc:
            fail(k, _message(exc), record)
            return
        results.append(
            SlideResult(
                record["slide_id"], str(slides[k].path), DONE, len(job.grid), record["seconds"], "", device
            )
        )
        report(progress, Event.ADVANCE, SLIDES)

    stream = _SlideStream(slides, cfg)
    for kind, key, payload in _batches(_loader(stream, None, cfg.workers, embedder.device)):
        if kind != "batch" and (int(key) in closed or (kind == "planned" and int(key) in jobs)):
            continue
        if kind == "planned":
            record, grid = payload
            buffer = np.empty((len(grid), embedder.dim), dtype=np.float32)
            jobs[int(key)] = _Job(record, grid, buffer, started=time.perf_counter())
            report(progress, Event.TOTAL, TILES, len(grid))
        elif kind == "failed":
            fail(int(key), payload, jobs[int(key)].record if int(key) in jobs else None)
        else:
            emb = embedder.embed_uint8(payload)
            owners, index = key[:, 0].numpy(), key[:, 1].numpy()
            for k in np.unique(owners).tolist():
                job = jobs.get(k)
                if job is None:  # the slide failed after some of its tiles were batched
                    continue
                rows = owners == k
                job.buffer[index[rows]] = emb[rows]
                job.filled += int(rows.sum())
                if job.filled == len(job.grid):
                    finish(k)
            report(progress, Event.ADVANCE, TILES, len(owners))
    for k in sorted(jobs):
        fail(
            k, f"{slides[k].path}: only {jobs[k].filled} of {len(jobs[k].grid)} tiles arrived", jobs[k].record
        )
    return results


# ---------------------------------------------------------------------------------------- entry point
def parse_devices(text: str | None) -> list[str]:
    """`0,1` -> [cuda:0, cuda:1]; names such as `cpu` or `cuda:1` are kept; empty -> []."""
    if not text:
        return []
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        out.append(f"cuda:{item}" if item.isdigit() else item)
    return out


def _skip_or_refuse(source: SlideInput, row: pd.Series) -> bool:
    """True when `source` is the file a done row was made from (path, size, content hash); else exit 2."""
    try:
        size, digest = source.path.stat().st_size, sampled_hash(source.path)
    except OSError as exc:
        raise UsageError(f"{source.path}: cannot be read ({exc}); check the file") from exc
    same = (row["path"], row["size"], row["file_hash"]) == (str(source.path), size, digest)
    if same:
        return True
    raise UsageError(
        f"slide id {source.slide_id!r} of {source.path} is already done in the store from {row['path']} "
        "(another file, or the same one changed or moved): name slides by their relative path with "
        "--slide-id-from path, or re-embed it with --overwrite"
    )


def run_extract(cfg: ExtractConfig, *, progress: Progress | None = None) -> ExtractResult:
    """Embed the slides of `cfg` into its store; done slides (same file) are skipped unless `overwrite`."""
    start = time.perf_counter()
    given = [s for s in cfg.slides if isinstance(s, SlideInput)]
    paths = [s for s in cfg.slides if not isinstance(s, SlideInput)]
    slides = _checked_inputs(given, cfg.slide_id_from, [str(s.path) for s in given]) if given else []
    if paths or cfg.slides_csv is not None or not given:
        slides += find_slides(
            paths, cfg.recursive, cfg.glob, cfg.slides_csv, cfg.slide_mpp, cfg.slide_id_from
        )
        slides = _checked_inputs(slides, "stem", [str(p) for p in cfg.slides])
    if EmbeddingStore.exists(cfg.store):
        EmbeddingStore.open(cfg.store).check_writable()  # before loading weights or reading any slide
    devices = list(cfg.devices)
    if cfg.on_ray:
        if cfg.ray_address is None:  # --devices on this machine: a local Ray instance on those devices
            for d in devices:
                resolve_device(d)
        # Built on CPU only to check the weights and compute the fingerprint; the workers hold the model.
        embedder = dataclasses.replace(cfg, precision="auto").embedder("cpu")
    else:
        embedder = cfg.embedder(devices[0] if devices else cfg.device)
    store = EmbeddingStore.open_or_create(cfg.store, embedder.fingerprint(cfg.mpp, cfg.tile_px, cfg.dtype))
    store.check_writable()
    done = store.slides(DONE).set_index("slide_id")
    notes: list[str] = list(store.notes)
    report(progress, Event.TOTAL, SLIDES, len(slides))
    results: list[SlideResult] = []
    todo = []
    for s in slides:
        if s.slide_id in done.index and not cfg.overwrite and _skip_or_refuse(s, done.loc[s.slide_id]):
            results.append(SlideResult(s.slide_id, str(s.path), "skipped"))
            report(progress, Event.ADVANCE, SLIDES)
            continue
        if s.slide_id in done.index and done.loc[s.slide_id, "path"] != str(s.path):
            notes.append(
                f"slide {s.slide_id}: {s.path} replaces the done slide from {done.loc[s.slide_id, 'path']}"
            )
        todo.append(s)
    if cfg.on_ray:
        from mvh.extractor.ray_extract import RayOptions, run_on_ray

        del embedder
        options = RayOptions(
            address=cfg.ray_address or "local", cpus_per_worker=cfg.ray_cpus_per_worker,
            max_retries=cfg.ray_max_retries, workers=cfg.ray_workers or (len(devices) or None),
        )
        results += run_on_ray(cfg, store, todo, options, devices=devices, progress=progress)
        used = sorted({r.device for r in results if r.device}) or devices
    else:
        results += run_pipeline(embedder, store, todo, cfg, progress)
        used = [str(embedder.device)]
    if any(r.status == DONE for r in results):
        store.optimize()
    for r in results:
        if r.status == "failed" and r.error.endswith("(the tiles committed before are kept)"):
            notes.append(f"slide {r.slide_id}: re-embedding failed; its tiles committed before are kept")
    for note in notes:
        report(progress, Event.NOTE, SLIDES, 0, note)
    order = {s.slide_id: i for i, s in enumerate(slides)}
    results.sort(key=lambda r: order.get(r.slide_id, len(order)))
    fp = store.fingerprint
    return ExtractResult(
        cfg.store, fp.model, fp.weights_sha256, used, time.perf_counter() - start, results, notes
    )


def extract_slides(
    inputs: Sequence[SlideInput | Path | str],
    store_uri: str | Path,
    cfg: ExtractConfig,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> ExtractResult:
    """`run_extract` with the slides and store given here; `options` are other ExtractConfig fields."""
    devices = options.pop("devices", None)
    if devices is not None:
        options["devices"] = tuple(devices)
    return run_extract(
        dataclasses.replace(cfg, slides=tuple(inputs), store=str(store_uri), **options), progress=progress
    )
