"""Batch extraction: slides -> tile grids -> one DataLoader stream -> backbone -> one store commit per slide.

Pipeline (one device): ONE DataLoader streams all pending slides; each worker process takes every n-th
slide, opens and tiles it (tissue detection), then decodes its tiles into batches that fill up across
slide boundaries, so the device does not wait between slides and planning overlaps embedding. Batches
arrive pinned on CUDA and are copied non-blocking as uint8 (normalised on the device). Embeddings land
in per-slide buffers; a slide is committed to the store as soon as its last tile is embedded (see
`mvh.index.store` for the atomic commit protocol). A slide that cannot be opened, has no mpp, no
tissue or an unreadable tile is recorded as failed and the run goes on.

Several devices: pending slides are split by file size across one spawned process per device, each
running the pipeline above and writing to the same store (Lance appends from several processes are
safe; commit conflicts are retried by the store). Done slides are skipped unless `overwrite`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import multiprocessing as mp
import queue as queue_mod
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from mvh.errors import DataError, MvhError, StoreError, UsageError
from mvh.extractor.dataset import TileDataset
from mvh.extractor.embedder import Embedder, resolve_device
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import TileGrid, make_tile_grid, read_tile
from mvh.index.store import DONE, EmbeddingStore

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
Progress = Callable[[str, int], None]
_TILE_ERRORS = (MvhError, OSError, ValueError, openslide.OpenSlideError)


@dataclass(frozen=True)
class SlideInput:
    """A slide file and its optional user-given level-0 um/px."""

    path: Path
    mpp: float | None = None

    @property
    def slide_id(self) -> str:
        """The slide id (file stem), as `Slide.slide_id`."""
        return self.path.stem


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides how slides are embedded (picklable, so it travels to device workers)."""

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


@dataclass
class ExtractSummary:
    """What an extraction run did."""

    store: str
    model: str
    weights_sha256: str
    devices: list[str]
    seconds: float
    slides: list[SlideResult]

    def count(self, status: str) -> int:
        """Number of slides with `status`."""
        return sum(r.status == status for r in self.slides)

    @property
    def n_tiles(self) -> int:
        """Tiles embedded in this run."""
        return sum(r.n_tiles for r in self.slides if r.status == DONE)

    @property
    def tiles_per_s(self) -> float:
        """End-to-end throughput of this run."""
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """1 when any slide failed, else 0."""
        return 1 if self.count("failed") else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "store": self.store,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "devices": self.devices,
            "slides_done": self.count("done"),
            "slides_skipped": self.count("skipped"),
            "slides_failed": self.count("failed"),
            "tiles": self.n_tiles,
            "seconds": round(self.seconds, 3),
            "tiles_per_s": round(self.tiles_per_s, 2),
            "slides": [dataclasses.asdict(r) for r in self.slides],
        }


# ---------------------------------------------------------------------------------------- inputs
def _read_slides_csv(path: Path) -> list[SlideInput]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the slides CSV ({exc})") from exc
    if not rows or "path" not in rows[0]:
        raise DataError(f"{path}: the slides CSV needs a `path` column (and optionally `mpp`)")
    out = []
    for i, row in enumerate(rows, start=2):
        slide = Path(row["path"])
        slide = slide if slide.is_absolute() else path.parent / slide
        mpp = (row.get("mpp") or "").strip()
        try:
            value = float(mpp) if mpp else None
        except ValueError:
            raise DataError(f"{path}:{i}: mpp {mpp!r} is not a number of um/px") from None
        out.append(SlideInput(slide, value))
    return out


def find_slides(
    inputs: Sequence[Path | str] = (),
    recursive: bool = False,
    glob: str | None = None,
    slides_csv: Path | str | None = None,
    slide_mpp: float | None = None,
) -> list[SlideInput]:
    """Slide files from paths, directories (files matching `glob` or a slide suffix) and a CSV."""
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
    unique = list(dict.fromkeys(SlideInput(s.path.resolve(), s.mpp) for s in found))
    ids = Counter(s.slide_id for s in unique)
    clashes = sorted(k for k, n in ids.items() if n > 1)
    if clashes:
        paths = [str(s.path) for s in unique if s.slide_id == clashes[0]]
        raise UsageError(
            f"slides {paths} share the id {clashes[0]!r} (file stem); extract them into separate stores"
        )
    if not unique:
        raise UsageError(
            f"no slides found in {[str(p) for p in inputs]}: check the paths, --glob or --recursive"
        )
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


def _plan(source: SlideInput, cfg: ExtractConfig) -> tuple[dict[str, Any], TileGrid]:
    """Open and tile one slide: its store record and grid (SlideError / MissingMppError / NoTissueError)."""
    start = time.perf_counter()
    with open_slide(source.path, mpp=source.mpp) as slide:
        width, height = slide.dimensions
        record = {
            "slide_id": slide.slide_id,
            "path": str(source.path),
            "size": source.path.stat().st_size,
            "width": int(width),
            "height": int(height),
            "mpp": float(slide.mpp),
            "mpp_source": slide.mpp_source,
        }
        grid = make_tile_grid(slide, mpp=cfg.mpp, tile_px=cfg.tile_px, min_tissue=cfg.min_tissue)
    if cfg.max_tiles is not None and len(grid) > cfg.max_tiles:
        grid = grid.subset(np.arange(cfg.max_tiles))
    record["plan_seconds"] = time.perf_counter() - start
    return record, grid


class _SlideStream(IterableDataset):
    """Plans and decodes pending slides; each DataLoader worker takes every n-th slide.

    Yields messages: ("planned", k, (record, grid)) before any tile of slide k, ("failed", k, error) when
    slide k cannot be opened, tiled or decoded, and ("batch", keys int64 [B, 2] of (slide k, tile i),
    tiles uint8 [B, H, W, 3]). A worker's batches fill up across its slides, so batches span slide boundaries.
    """

    def __init__(self, slides: Sequence[SlideInput], cfg: ExtractConfig) -> None:
        self.slides = list(slides)
        self.cfg = cfg

    def __iter__(self) -> Iterator[tuple[str, Any, Any]]:
        info = get_worker_info()
        first, step = (info.id, info.num_workers) if info is not None else (0, 1)
        size = self.cfg.batch_size
        tiles: list[np.ndarray] = []
        keys: list[tuple[int, int]] = []
        for k in range(first, len(self.slides), step):
            source = self.slides[k]
            try:
                record, grid = _plan(source, self.cfg)
            except (MvhError, OSError) as exc:
                yield "failed", k, _message(exc)
                continue
            yield "planned", k, (record, grid)
            try:
                with open_slide(source.path, mpp=source.mpp) as slide:
                    for i in range(len(grid)):
                        tiles.append(read_tile(slide, grid, i))
                        keys.append((k, i))
                        if len(tiles) == size:
                            yield "batch", torch.tensor(keys), torch.from_numpy(np.stack(tiles))
                            tiles, keys = [], []
            except _TILE_ERRORS as exc:
                kept = [j for j, key in enumerate(keys) if key[0] != k]
                tiles, keys = [tiles[j] for j in kept], [keys[j] for j in kept]
                yield "failed", k, f"{source.path}: tile decode failed: {_message(exc)}"
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


def _emit(progress: Progress | None, event: str, n: int = 1) -> None:
    if progress is not None:
        progress(event, n)


def _failed_record(source: SlideInput) -> dict[str, Any]:
    size = source.path.stat().st_size if source.path.exists() else None
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

    def fail(k: int, error: str, record: dict[str, Any] | None = None) -> None:
        jobs.pop(k, None)
        source = slides[k]
        store.add_failed_slide(record or _failed_record(source), error)
        seconds = float((record or {}).get("seconds") or 0.0)
        results.append(SlideResult(source.slide_id, str(source.path), "failed", 0, seconds, error, device))
        _emit(progress, "slide_failed")

    def finish(k: int) -> None:
        job = jobs.pop(k)
        record = dict(job.record, seconds=job.record["plan_seconds"] + time.perf_counter() - job.started)
        try:
            store.add_slide(record, job.grid.to_frame(), job.buffer)
        except StoreError as exc:
            fail(k, _message(exc), record)
            return
        results.append(
            SlideResult(
                record["slide_id"], str(slides[k].path), DONE, len(job.grid), record["seconds"], "", device
            )
        )
        _emit(progress, "slide_done")

    stream = _SlideStream(slides, cfg)
    workers = min(cfg.workers, len(slides))
    for kind, key, payload in _batches(_loader(stream, None, workers, embedder.device)):
        if kind == "planned":
            record, grid = payload
            buffer = np.empty((len(grid), embedder.dim), dtype=np.float32)
            jobs[int(key)] = _Job(record, grid, buffer, started=time.perf_counter())
            _emit(progress, "tiles_total", len(grid))
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
            _emit(progress, "tiles", len(owners))
    for k in sorted(jobs):
        fail(
            k, f"{slides[k].path}: only {jobs[k].filled} of {len(jobs[k].grid)} tiles arrived", jobs[k].record
        )
    return results


# ---------------------------------------------------------------------------------------- several devices
def _split_by_size(slides: Sequence[SlideInput], n: int) -> list[list[SlideInput]]:
    """Greedy balance of slides over `n` shards by file size (largest first)."""
    shards: list[list[SlideInput]] = [[] for _ in range(n)]
    loads = [0] * n

    def size(s: SlideInput) -> int:
        return s.path.stat().st_size if s.path.exists() else 0

    for s in sorted(slides, key=size, reverse=True):
        k = loads.index(min(loads))
        shards[k].append(s)
        loads[k] += max(size(s), 1)
    return shards


def _device_worker(
    cfg: ExtractConfig, store_uri: str, slides: list[SlideInput], device: str, wid: int, events: Any
) -> None:
    """Entry point of one device process: run the pipeline, stream progress events, send the results."""
    try:
        embedder = cfg.embedder(device)
        store = EmbeddingStore.open_or_create(
            store_uri, embedder.fingerprint(cfg.mpp, cfg.tile_px, cfg.dtype)
        )
        results = run_pipeline(embedder, store, slides, cfg, lambda e, n: events.put(("event", wid, (e, n))))
        events.put(("results", wid, [dataclasses.asdict(r) for r in results]))
    except MvhError as exc:
        events.put(("error", wid, " ".join(str(exc).split())))


def _run_devices(
    cfg: ExtractConfig,
    store: EmbeddingStore,
    slides: Sequence[SlideInput],
    devices: Sequence[str],
    progress: Progress | None,
) -> list[SlideResult]:
    shards = _split_by_size(slides, len(devices))
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs = {}
    for wid, (device, shard) in enumerate(zip(devices, shards, strict=True)):
        if shard:
            proc = ctx.Process(
                target=_device_worker, args=(cfg, store.uri, shard, device, wid, events), daemon=False
            )
            proc.start()
            procs[wid] = (proc, device, shard)
    results: list[SlideResult] = []
    waiting = set(procs)
    dead: set[int] = set()
    while waiting:
        try:
            kind, wid, payload = events.get(timeout=0.5)
        except queue_mod.Empty:
            for wid in sorted(waiting):
                proc, device, shard = procs[wid]
                if proc.is_alive():
                    continue
                if wid in dead:  # dead and silent for two rounds: it crashed
                    waiting.discard(wid)
                    results += _crashed(store, shard, device, proc.exitcode)
                dead.add(wid)
            continue
        proc, device, shard = procs[wid]
        if kind == "event":
            _emit(progress, *payload)
        elif kind == "results":
            waiting.discard(wid)
            results += [SlideResult(**r) for r in payload]
        else:
            waiting.discard(wid)
            results += [
                SlideResult(s.slide_id, str(s.path), "failed", error=payload, device=device) for s in shard
            ]
    for proc, _, _ in procs.values():
        proc.join()
    return results


def _crashed(
    store: EmbeddingStore, shard: Sequence[SlideInput], device: str, code: int | None
) -> list[SlideResult]:
    """Results of a device worker that died: slides it committed are done, the rest failed."""
    rows = store.slides().set_index("slide_id")
    message = f"device worker {device} exited with code {code} before finishing; rerun to redo these slides"
    out = []
    for s in shard:
        if s.slide_id in rows.index and rows.loc[s.slide_id, "status"] == DONE:
            row = rows.loc[s.slide_id]
            out.append(
                SlideResult(
                    s.slide_id, str(s.path), DONE, int(row["n_tiles"]), float(row["seconds"]), "", device
                )
            )
        else:
            out.append(SlideResult(s.slide_id, str(s.path), "failed", error=message, device=device))
    return out


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


def extract_slides(
    inputs: Sequence[SlideInput | Path | str],
    store_uri: str | Path,
    cfg: ExtractConfig,
    *,
    recursive: bool = False,
    glob: str | None = None,
    slides_csv: Path | str | None = None,
    slide_mpp: float | None = None,
    device: str = "auto",
    devices: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> ExtractSummary:
    """Embed slides (files, folders, CSV rows) into the store at `store_uri`; done ones are skipped."""
    start = time.perf_counter()
    store_uri = str(store_uri)
    given = [s for s in inputs if isinstance(s, SlideInput)]
    paths = [s for s in inputs if not isinstance(s, SlideInput)]
    slides = given
    if paths or slides_csv is not None or not given:
        slides = given + find_slides(paths, recursive, glob, slides_csv, slide_mpp)
    if cfg.dtype not in ("float32", "float16"):
        raise UsageError(f"--dtype {cfg.dtype}: stored embeddings are float32 or float16")
    if cfg.max_tiles is not None and cfg.max_tiles < 1:
        raise UsageError(f"max_tiles={cfg.max_tiles} must be at least 1 (or None for all tiles)")
    if not (math.isfinite(cfg.mpp) and cfg.mpp > 0) or cfg.tile_px <= 0 or cfg.batch_size <= 0:
        raise UsageError(
            f"--mpp {cfg.mpp}, --tile {cfg.tile_px} and --batch-size {cfg.batch_size} must be positive"
        )
    devices = list(devices or [])
    if len(devices) > 1:
        for d in devices:
            resolve_device(d)
        # Built on CPU only to check the weights and compute the fingerprint before spawning workers.
        embedder = dataclasses.replace(cfg, precision="auto").embedder("cpu")
    else:
        embedder = cfg.embedder(devices[0] if devices else device)
    store = EmbeddingStore.open_or_create(store_uri, embedder.fingerprint(cfg.mpp, cfg.tile_px, cfg.dtype))
    done = set() if cfg.overwrite else set(store.slide_ids(DONE))
    _emit(progress, "slides_total", len(slides))
    results: list[SlideResult] = []
    todo = []
    for s in slides:
        if s.slide_id in done:
            results.append(SlideResult(s.slide_id, str(s.path), "skipped"))
            _emit(progress, "slide_skipped")
        else:
            todo.append(s)
    if len(devices) > 1:
        del embedder
        results += _run_devices(cfg, store, todo, devices, progress)
        used = devices
    else:
        results += run_pipeline(embedder, store, todo, cfg, progress)
        used = [str(embedder.device)]
    if any(r.status == DONE for r in results):
        store.optimize()
    order = {s.slide_id: i for i, s in enumerate(slides)}
    results.sort(key=lambda r: order.get(r.slide_id, len(order)))
    fp = store.fingerprint
    return ExtractSummary(store_uri, fp.model, fp.weights_sha256, used, time.perf_counter() - start, results)
