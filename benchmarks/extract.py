"""Pipeline efficiency of extraction: end-to-end tiles/s vs the backbone alone on pre-decoded tiles.

    python benchmarks/extract.py [--models mv_hybrid vit_s24_dinov2] [--max-tiles 64] [--batch-size 32]
                                 [--workers 0] [--device auto] [--precision auto] [--repeats 3] [--json OUT]
                                 [--copies 1]

End to end = `run_pipeline` (the loop behind `mvh extract`): open + tissue detection + tiling of the real
sample slide, DataLoader decode, preprocessing, backbone, one store commit, into a fresh store per pass.
Backbone alone = the same tiles decoded beforehand into one uint8 tensor, embedded at the same batch size
(`Embedder.embed_uint8`, which includes the device copy and normalisation). Random-init weights (the speed
does not depend on them). Full-size models on CPU are slow, so only the first `--max-tiles` tissue tiles
are embedded. Figures are medians over `--repeats` alternating passes after one warm-up batch; ratio =
e2e / backbone (goal >= 0.9: the loader and the store must not be the bottleneck). On a CPU shared with
other jobs wall-clock rates drift, so the ratio of tiles per CPU-second of this process is printed too
(it counts everything the pipeline does in-process: exact with --workers 0).

`--copies N` extracts N linked copies of the slide (distinct names) in one run, the steady state of a
batch job: the DataLoader workers open, detect tissue and tile slide k+1 while slide k is embedded, so the
per-slide set-up (large for a small single-level slide like the sample) is hidden behind the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mvh.extractor.embedder import Embedder
from mvh.extractor.extract_config import ExtractConfig, SlideInput
from mvh.extractor.pipeline import _plan, run_pipeline
from mvh.extractor.sample import sample_slide_path
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import make_tile_grid, read_tile
from mvh.store import EmbeddingStore


def _sync(embedder: Embedder) -> None:
    if embedder.device.type == "cuda":
        torch.cuda.synchronize(embedder.device)


def backbone_pass(embedder: Embedder, tiles: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Tiles per wall second and per CPU second (this process) of the embedder on pre-decoded tiles."""
    _sync(embedder)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(tiles), batch_size):
        embedder.embed_uint8(tiles[i : i + batch_size])
    _sync(embedder)
    return len(tiles) / (time.perf_counter() - start), len(tiles) / (time.process_time() - cpu)


def pipeline_pass(embedder: Embedder, slides: list[Path], cfg: ExtractConfig) -> tuple[float, float, int]:
    """Tiles per wall second and per CPU second of one extraction into a fresh store, and the tile count."""
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore.create(Path(tmp) / "b.lance", embedder.fingerprint(cfg.mpp, cfg.tile_px))
        start, cpu = time.perf_counter(), time.process_time()
        results = run_pipeline(embedder, store, [SlideInput(s) for s in slides], cfg)
        _sync(embedder)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    n = sum(r.n_tiles for r in results)
    if n == 0:
        raise RuntimeError(f"{slides[0]}: extraction failed: {results[0].error}")
    return n / seconds, n / cpu_seconds, n


def stage_seconds(embedder: Embedder, slide: Path, cfg: ExtractConfig) -> dict[str, float]:
    """Seconds of the non-model stages for one slide: open + tissue + grid, tile decode, store commit."""
    start = time.perf_counter()
    record, grid = _plan(SlideInput(slide), cfg)
    planned = time.perf_counter()
    with open_slide(slide) as s:
        for i in range(len(grid)):
            read_tile(s, grid, i)
    decoded = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore.create(Path(tmp) / "b.lance", embedder.fingerprint(cfg.mpp, cfg.tile_px))
        committed = time.perf_counter()
        store.add_slide(record, grid.to_frame(), np.zeros((len(grid), embedder.dim), np.float32))
        committed = time.perf_counter() - committed
    return {
        "plan_s": round(planned - start, 3),
        "decode_s": round(decoded - planned, 3),
        "commit_s": round(committed, 3),
    }


def bench(model: str, slides: list[Path], args: argparse.Namespace) -> dict[str, object]:
    """One model: backbone-alone and end-to-end tiles/s and their ratio."""
    embedder = Embedder(model, random_init=True, device=args.device, precision=args.precision)
    cfg = ExtractConfig(
        model, random_init=True, batch_size=args.batch_size, workers=args.workers, max_tiles=args.max_tiles
    )
    slide = slides[0]
    with open_slide(slide) as s:
        grid = make_tile_grid(s, mpp=cfg.mpp, tile_px=cfg.tile_px, min_tissue=cfg.min_tissue)
        n = min(len(grid), args.max_tiles)
        tiles = torch.from_numpy(np.stack([read_tile(s, grid, i) for i in range(n)]))
    tiles = tiles.repeat(len(slides), 1, 1, 1)  # the copies' tiles, so both sides embed as many
    if embedder.device.type == "cuda":
        tiles = tiles.pin_memory()
    embedder.embed_uint8(tiles[: args.batch_size])  # warm-up (kernels, allocator)
    # Passes alternate so that drifting machine load hits both figures alike.
    alone_rates, e2e_rates, alone_cpu, e2e_cpu = [], [], [], []
    for _ in range(args.repeats):
        wall, cpu = backbone_pass(embedder, tiles, args.batch_size)
        alone_rates.append(wall)
        alone_cpu.append(cpu)
        wall, cpu, n_e2e = pipeline_pass(embedder, slides, cfg)
        e2e_rates.append(wall)
        e2e_cpu.append(cpu)
    alone, e2e = statistics.median(alone_rates), statistics.median(e2e_rates)
    stages = stage_seconds(embedder, slide, cfg)
    cpu_ratio = statistics.median(e2e_cpu) / statistics.median(alone_cpu)
    return {
        "model": model,
        "device": str(embedder.device),
        "gpu": torch.cuda.get_device_name(embedder.device) if embedder.device.type == "cuda" else None,
        "precision": embedder.precision,
        "tiles": n_e2e,
        "slides": len(slides),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "backbone_tiles_per_s": round(alone, 2),
        "end_to_end_tiles_per_s": round(e2e, 2),
        "ratio": round(e2e / alone, 3),
        # Per CPU-second of this process: robust to other users of a shared CPU (meaningful with workers=0).
        "cpu_time_ratio": round(cpu_ratio, 3),
        "passes_backbone": [round(r, 2) for r in alone_rates],
        "passes_end_to_end": [round(r, 2) for r in e2e_rates],
        "torch_threads": torch.get_num_threads(),
        **stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mv_hybrid", "vit_s24_dinov2"])
    parser.add_argument("--slide", type=Path, default=None)
    parser.add_argument("--max-tiles", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1, help="Extract N linked copies of the slide.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows as JSON here.")
    args = parser.parse_args()
    slide = (args.slide or sample_slide_path()).resolve()
    rows = []
    with tempfile.TemporaryDirectory() as links:
        slides = [slide]
        for k in range(1, args.copies):
            slides.append(Path(links) / f"{slide.stem}-copy{k}{slide.suffix}")
            slides[-1].symlink_to(slide)
        for model in args.models:
            rows.append(bench(model, slides, args))
            _print_row(rows[-1], args)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


def _print_row(row: dict[str, object], args: argparse.Namespace) -> None:
    print(
        f"{row['model']:>16} {row['device']:>6} {row['precision']:>4} slides={row['slides']} "
        f"tiles={row['tiles']:>4} bs={args.batch_size} workers={args.workers}  "
        f"backbone {row['backbone_tiles_per_s']:8.2f} tiles/s  "
        f"end-to-end {row['end_to_end_tiles_per_s']:8.2f} tiles/s  ratio {row['ratio']:.3f} "
        f"(CPU-time ratio {row['cpu_time_ratio']:.3f}; plan {row['plan_s']}s, decode {row['decode_s']}s, "
        f"commit {row['commit_s']}s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
