"""The tile pipeline side by side: mvh without a model, the JPEG decode limit, and TRIDENT's own pipeline.

    python benchmarks/pipeline.py SLIDE... [--workers 2] [--batch-size 64] [--repeats 2] [--device cpu]
        [--trident DIR] [--trident-deps DIR] [--models noop] [--whole-process SLIDE] [--json] [--out FILE]

Per slide and repeat, alternating (a, b, c, a, b, c...), same files, same number of worker processes:
- (a) mvh: `run_pipeline` (the loop behind `mvh extract`: open, tissue detection, grid, decode in
  `--workers` DataLoader processes, batches to the device tensor, normalisation there, one store commit)
  with the backbone replaced by a no-op returning zeros; `--models noop,mv_hybrid` adds real backbones
  (random weights; bf16 on CUDA);
- (a, host) with `--models noop,host`: (a) with normalisation left to the device (the uint8 batch is
  copied there and nothing runs): on a GPU this is the CPU's whole share of (a);
- (b) the decode limit: every JPEG tile of the file that (a)'s grid touches, read and decoded once with
  libjpeg-turbo (imagecodecs) in `--workers` processes; tiles/s counts the 224 px output tiles;
- (c) TRIDENT's pipeline from its own source (`--trident DIR`, a checkout; its extra dependencies in
  `--trident-deps`, a `pip install --target` folder): Otsu segmentation, 20x / 224 px coordinates and
  features with a no-op encoder (`benchmarks/pipeline_trident.py`); skipped with a note without DIR.
Rates are tiles / seconds inside the process (imports and model construction excluded). Tissue masks
differ (mvh: HSV saturation at 8 um/px, tiles >= 25% tissue; TRIDENT: two-pass Otsu at 1.25x, tiles
>= 25% inside its contours), so both tile counts are reported.
`--whole-process SLIDE` also times `mvh extract --model vit_s12_dinov2` (ViT-S/16, random weights) and
TRIDENT with timm's ViT-S/16, as whole processes (interpreter start to exit). On a GPU:
`--device cuda --models noop,mv_hybrid` (see benchmarks/gpu_pipeline.sh).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import torch

from mvh.extractor.embedder import Embedder
from mvh.extractor.extract_config import ExtractConfig, SlideInput
from mvh.extractor.jpeg_tiles import JpegPyramid
from mvh.extractor.pipeline import _plan, run_pipeline
from mvh.extractor.slide import open_slide
from mvh.store import EmbeddingStore

HERE = Path(__file__).resolve().parent
SCRATCH = Path("/tmp/pipeline-scratch")
VIT_S16 = "vit_s12_dinov2"  # ViT-S/16, 12 blocks, D 384: the size of timm's vit_small_patch16_224


class NoOp(torch.nn.Module):
    """A backbone that returns zeros [B, dim]: the pipeline without a model."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zeros [B, dim] for images x [B, 3, H, W] (already on the device)."""
        return x.new_zeros(x.shape[0], self.dim)


def _load() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


class HostShare(Embedder):
    """The no-op embedder with normalisation left to the device: the uint8 batch is copied to the device
    and nothing runs there. On a GPU, normalisation (and the model) run on the GPU, so this is the CPU's
    whole share of (a); on a CPU-only machine the "device" is the same cores, and (a) pays for both."""

    def embed_uint8(self, images: torch.Tensor) -> np.ndarray:
        """Zeros [B, dim] once the uint8 batch has reached the device."""
        on_device = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return np.zeros((on_device.shape[0], self.dim), np.float32)


def make_embedder(model: str, device: str) -> Embedder:
    """`noop` (a ViT-S/16 embedder whose model returns zeros), `host` (noop without the on-device
    normalisation: `HostShare`) or a registered backbone with random weights."""
    if model in ("noop", "host"):
        embedder = (HostShare if model == "host" else Embedder)(VIT_S16, random_init=True, device=device)
        embedder.model = NoOp(embedder.dim).to(embedder.device)
        return embedder
    precision = "bf16" if device.startswith("cuda") else "auto"
    return Embedder(model, random_init=True, device=device, precision=precision)


def mvh_pass(embedder: Embedder, slide: Path, cfg: ExtractConfig) -> dict[str, Any]:
    """(a): one `run_pipeline` of one slide into a fresh store: tiles, seconds."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        store = EmbeddingStore.create(Path(tmp) / "b.lance", embedder.fingerprint(cfg.mpp, cfg.tile_px))
        start = time.perf_counter()
        results = run_pipeline(embedder, store, [SlideInput(slide)], cfg)
        if embedder.device.type == "cuda":
            torch.cuda.synchronize(embedder.device)
        seconds = time.perf_counter() - start
    if results[0].status != "done":
        raise RuntimeError(f"{slide}: {results[0].error}")
    return {"tiles": results[0].n_tiles, "seconds": seconds}


def source_tiles(slide: Path, cfg: ExtractConfig) -> tuple[int, int, list[int]]:
    """(grid tiles, level, indices of the file's JPEG tiles the grid touches) for (b)."""
    _, grid = _plan(SlideInput(slide), cfg)
    with open_slide(slide) as s:
        pyramid = JpegPyramid.open(slide, s.level_dimensions)
    if pyramid is None:
        raise RuntimeError(f"{slide}: not a JPEG-tiled TIFF; the decode limit needs one")
    lv = pyramid.levels[grid.level]
    pyramid.close()
    x0 = np.floor(grid.x / grid.level_downsample).astype(np.int64)
    y0 = np.floor(grid.y / grid.level_downsample).astype(np.int64)
    needed: set[int] = set()
    for x, y in zip(x0.tolist(), y0.tolist(), strict=True):
        for ty in range(y // lv.tile_h, (y + grid.read_px - 1) // lv.tile_h + 1):
            for tx in range(x // lv.tile_w, (x + grid.read_px - 1) // lv.tile_w + 1):
                needed.add(ty * lv.across + tx)
    return len(grid), grid.level, sorted(needed)


def _decode_share(job: tuple[str, int, list[int]]) -> int:
    """Read and decode JPEG tiles of one level (a worker process of (b)); returns the pixels decoded."""
    path, level, indices = job
    with open_slide(path) as s:
        pyramid = JpegPyramid.open(path, s.level_dimensions)
    assert pyramid is not None
    lv = pyramid.levels[level]
    fd, pixels = os.open(path, os.O_RDONLY), 0
    for i in indices:
        data = os.pread(fd, int(lv.counts[i]), int(lv.offsets[i]))
        tile = imagecodecs.jpeg8_decode(data, tables=lv.tables, colorspace=lv.colorspace, outcolorspace="RGB")
        pixels += tile.shape[0] * tile.shape[1]
    os.close(fd)
    pyramid.close()
    return pixels


def decode_pass(slide: Path, plan: tuple[int, int, list[int]], workers: int) -> dict[str, Any]:
    """(b): decode the plan's JPEG tiles once in `workers` processes: output tiles, seconds, MP/s."""
    n_grid, level, indices = plan
    n = max(1, workers)
    shares = [
        (str(slide), level, indices[w * len(indices) // n : (w + 1) * len(indices) // n]) for w in range(n)
    ]
    start = time.perf_counter()
    if workers == 0:
        pixels = _decode_share(shares[0])
    else:
        with multiprocessing.get_context("fork").Pool(n) as pool:
            pixels = sum(pool.map(_decode_share, shares))
    seconds = time.perf_counter() - start
    return {
        "tiles": n_grid,
        "seconds": seconds,
        "jpeg_tiles": len(indices),
        "mp_per_s": pixels / seconds / 1e6,
    }


_BASELINE = """
import json, sys, tempfile, time, torch
from pathlib import Path
from mvh.extractor.embedder import Embedder
from mvh.extractor.extract_config import ExtractConfig, SlideInput
from mvh.extractor.pipeline import run_pipeline
from mvh.index.store import EmbeddingStore
slide, workers, batch, device, scratch = sys.argv[1:6]
workers, batch = int(workers), int(batch)
e = Embedder("vit_s12_dinov2", random_init=True, device=device)
e.model = lambda x: x.new_zeros(x.shape[0], e.dim)
cfg = ExtractConfig("vit_s12_dinov2", random_init=True, batch_size=batch, workers=workers)
with tempfile.TemporaryDirectory(dir=scratch) as tmp:
    store = EmbeddingStore.create(Path(tmp) / "b.lance", e.fingerprint(cfg.mpp, cfg.tile_px))
    start = time.perf_counter()
    r = run_pipeline(e, store, [SlideInput(Path(slide))], cfg)[0]
    print(json.dumps({"tiles": r.n_tiles, "seconds": time.perf_counter() - start, "status": r.status}))
"""


def baseline_pass(args: argparse.Namespace, slide: Path) -> dict[str, Any]:
    """(a) with an older mvh (`--baseline DIR`, e.g. `git archive` of a commit) in a subprocess."""
    command = [
        sys.executable,
        "-c",
        _BASELINE,
        str(slide),
        str(args.workers),
        str(args.batch_size),
        args.device,
        str(SCRATCH),
    ]
    env = dict(os.environ, PYTHONPATH=str(args.baseline))
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"baseline failed on {slide}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _trident_env(args: argparse.Namespace) -> dict[str, str]:
    paths = [str(p) for p in (args.trident_deps, args.trident) if p is not None]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONWARNINGS="ignore")


def trident_pass(args: argparse.Namespace, slide: Path, encoder: str = "noop") -> dict[str, Any]:
    """(c): TRIDENT on one slide in a subprocess: tiles, in-process seconds, stage seconds, wall seconds."""
    command = [
        sys.executable,
        str(HERE / "pipeline_trident.py"),
        str(slide),
        "--workers",
        str(args.workers),
        "--encoder",
        encoder,
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=_trident_env(args), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"TRIDENT failed on {slide}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), wall_s=wall)


def mvh_whole_process(args: argparse.Namespace, slide: Path) -> dict[str, Any]:
    """`mvh extract` with ViT-S/16 (random weights) on one slide as a whole process: tiles, wall seconds."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        command = [
            sys.executable,
            "-m",
            "mvh",
            "extract",
            str(slide),
            "--store",
            f"{tmp}/e.lance",
            "--model",
            VIT_S16,
            "--random-init",
            "--workers",
            str(args.workers),
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
            "--json",
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"mvh extract failed on {slide}: {done.stderr[-2000:]}")
    return {"tiles": json.loads(done.stdout)["tiles"], "wall_s": wall}


def _commit(trident: Path | None) -> str | None:
    if trident is None:
        return None
    out = subprocess.run(["git", "-C", str(trident), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def main() -> None:
    """Run the alternating passes and print (and optionally write) the table as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slides", nargs="+", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--models", default="noop", help="comma-separated: noop, host and/or registered backbones"
    )
    parser.add_argument("--trident", type=Path, default=None, help="a TRIDENT checkout (never committed)")
    parser.add_argument("--trident-deps", type=Path, default=None, help="pip --target folder of its extras")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="an older mvh tree: its (a) alternates too"
    )
    parser.add_argument("--whole-process", type=Path, default=None, help="slide for the whole-process runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (default: a table)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    notes = []
    if args.trident is None or not (args.trident / "trident").is_dir():
        notes.append(
            f"TRIDENT skipped: no checkout at {args.trident} (fetch mahmoodlab/TRIDENT, pass --trident)"
        )
        args.trident = None
    cfg = ExtractConfig(VIT_S16, random_init=True, batch_size=args.batch_size, workers=args.workers)
    embedders = {m: make_embedder(m, args.device) for m in args.models.split(",")}
    plans = {s: source_tiles(s, cfg) for s in args.slides}
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for slide in args.slides:
            passes: list[tuple[str, Any]] = [(f"a:{m}", e) for m, e in embedders.items()]
            if args.baseline is not None:
                passes.append(("a0:baseline", None))
            passes.append(("b:decode", None))
            if args.trident is not None:
                passes.append(("c:trident", None))
            for name, embedder in passes:
                load = _load()
                if name.startswith("a:"):
                    out = mvh_pass(embedder, slide, cfg)
                elif name == "a0:baseline":
                    out = baseline_pass(args, slide)
                elif name == "b:decode":
                    out = decode_pass(slide, plans[slide], args.workers)
                else:
                    out = trident_pass(args, slide)
                out.update(slide=slide.name, pass_=name, repeat=repeat, load_before=load, load_after=_load())
                out["tiles_per_s"] = out["tiles"] / out["seconds"]
                print(json.dumps(out), file=sys.stderr, flush=True)
                runs.append(out)
    summary: dict[str, dict[str, Any]] = {}
    for slide in args.slides:
        row: dict[str, Any] = {}
        for name in dict.fromkeys(r["pass_"] for r in runs if r["slide"] == slide.name):
            mine = [r for r in runs if r["slide"] == slide.name and r["pass_"] == name]
            row[name] = {
                "tiles": mine[0]["tiles"],
                "tiles_per_s": statistics.median(r["tiles_per_s"] for r in mine),
                "runs": [round(r["tiles_per_s"], 1) for r in mine],
            }
        a, b, c = row.get("a:noop"), row.get("b:decode"), row.get("c:trident")
        host = row.get("a:host")
        if a is not None and b is not None:
            row["a_over_b"] = a["tiles_per_s"] / b["tiles_per_s"]
            if c is not None:
                row["a_over_c"] = a["tiles_per_s"] / c["tiles_per_s"]
        if host is not None and b is not None:
            row["host_over_b"] = host["tiles_per_s"] / b["tiles_per_s"]
        summary[slide.name] = row
    whole = None
    if args.whole_process is not None:
        whole = {"load_before": _load(), "mvh": mvh_whole_process(args, args.whole_process)}
        if args.trident is not None:
            whole["trident"] = trident_pass(args, args.whole_process, encoder="vit_s16")
            whole["speedup"] = whole["trident"]["wall_s"] / whole["mvh"]["wall_s"]
        whole["load_after"] = _load()
    result = {
        "workers": args.workers,
        "batch_size": args.batch_size,
        "device": args.device,
        "cpus": os.cpu_count(),
        "trident_commit": _commit(args.trident),
        "summary": summary,
        "whole_process": whole,
        "runs": runs,
        "notes": notes,
    }
    text = json.dumps(result, indent=2, default=str)
    print(text if args.json else table(result))
    if args.out is not None:
        args.out.write_text(text)


def table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table (medians, tiles/s), whole-process times below it."""
    lines = ["| slide | pass | tiles | tiles/s (median) | runs |", "|---|---|---:|---:|---|"]
    for slide, row in result["summary"].items():
        for name, cell in row.items():
            if isinstance(cell, dict):
                lines.append(
                    f"| {slide} | {name} | {cell['tiles']} | {cell['tiles_per_s']:.0f} | {cell['runs']} |"
                )
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if not isinstance(v, dict))
        lines.append(f"| {slide} | ratios | | | {ratios} |")
    whole = result["whole_process"]
    if whole:
        for tool in ("mvh", "trident"):
            if tool in whole:
                lines.append(
                    f"whole process, {tool}: {whole[tool]['tiles']} tiles in {whole[tool]['wall_s']:.1f} s"
                )
    return "\n".join(lines + result["notes"])


if __name__ == "__main__":
    main()
