"""The one-device extraction pipeline: slides -> tile grids -> one DataLoader stream -> backbone -> one store
commit per slide.

ONE DataLoader streams all pending slides. With n worker processes, slides are dealt out whole,
round-robin, while every worker has one; the last `len(slides) % n` slides (the only slide of a
one-slide job) are split: each worker plans them (tissue detection on a low level) and decodes its own
contiguous share of their tiles (`tiles_of_worker`), so `--workers n` speeds up one slide as well.
Batches fill up across slide boundaries, so the device does not wait between slides and planning overlaps
embedding. Batches arrive pinned on CUDA and are copied non-blocking as uint8 (normalised on the device).
Embeddings land in per-slide buffers; a slide is committed to the store as soon as its last tile is
embedded. A slide that cannot be opened, has no mpp, no tissue or an unreadable tile is recorded as failed
and the run goes on.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from mvh.core.files import sampled_hash
from mvh.errors import MvhError, StoreError, StoreWriteError
from mvh.extractor.dataset import TileDataset
from mvh.extractor.embedder import Embedder
from mvh.extractor.extract_config import ExtractConfig, SlideInput, SlideResult
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import TileGrid, make_tile_grid, read_tile
from mvh.progress import SLIDES, TILES, Event, Progress, report
from mvh.store import DONE, EmbeddingStore

_PLAN_FAILED = "cannot be tiled"


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
