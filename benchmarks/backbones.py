"""Backbone throughput: tiles/s for mv_hybrid, vit_s12_dinov2 and vit_s24_dinov2 (random weights).

CPU: float32, inference mode. CUDA (when available): bf16 autocast, and MV_Hybrid with both selective
scans (mamba_ssm's kernel when it imports, ours). On CPU, MV_Hybrid is also timed with the plain
per-token scan loop swapped in, to show what the scan costs inside a forward.
Usage: python benchmarks/backbones.py [--batch 32 --size 224 --repeats 3 --threads 0 --device auto]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from scan import per_token_scan  # benchmarks/ is on sys.path when a script here runs

from mvh.extractor.models import create_model, mv_hybrid
from mvh.extractor.models.ssm import mamba_selective_scan_fn, selective_scan_torch

MODELS = ("mv_hybrid", "vit_s12_dinov2", "vit_s24_dinov2")


@contextlib.contextmanager
def scan_impl(fn: Callable | None) -> Iterator[None]:
    """Temporarily make MV_Hybrid call `fn` as its selective scan (None: the default dispatch)."""
    original = mv_hybrid.selective_scan
    if fn is not None:
        mv_hybrid.selective_scan = fn
    try:
        yield
    finally:
        mv_hybrid.selective_scan = original


def tiles_per_second(
    model: torch.nn.Module, x: torch.Tensor, repeats: int, autocast: bool
) -> tuple[float, float]:
    """(median tiles/s, median seconds per batch) over `repeats` timed batches after one warm-up."""
    times = []
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        for i in range(repeats + 1):
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return x.shape[0] / median, median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    run(args.models, device, args.batch, args.size, args.repeats)


def run(models: list[str], device: torch.device, batch: int, size: int, repeats: int) -> None:
    """Print tiles/s of each backbone on `device` (bf16 autocast on CUDA, float32 on CPU)."""
    on_gpu = device.type == "cuda"
    x = torch.randn(batch, 3, size, size, device=device)
    precision = "bf16 autocast" if on_gpu else "float32"
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"backbones, batch {batch}, {size} px, {precision}, {where}, median of {repeats}")
    for name in models:
        torch.manual_seed(0)
        model = create_model(name).to(device).eval()
        variants: list[tuple[str, Callable | None]] = [("", None)]
        if name == "mv_hybrid":
            if on_gpu:
                kernel = (
                    "mamba_ssm kernel" if mamba_selective_scan_fn() is not None else "ours (no mamba_ssm)"
                )
                variants = [(f" [scan: {kernel}]", None), (" [scan: ours]", selective_scan_torch)]
            else:
                variants = [(" [scan: ours]", None), (" [scan: per-token loop]", per_token_scan)]
        for label, fn in variants:
            with scan_impl(fn):
                rate, seconds = tiles_per_second(model, x, repeats, autocast=on_gpu)
            print(f"  {name + label:44s} {rate:9.1f} tiles/s   {seconds * 1e3:9.1f} ms/batch")


if __name__ == "__main__":
    main()
