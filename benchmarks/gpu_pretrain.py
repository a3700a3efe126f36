"""Pretraining throughput on one GPU: full-size mv_hybrid vs vit_s24_dinov2, the paper's recipe shapes.

    python benchmarks/gpu_pretrain.py [--batch-size 64 --steps 10 --warmup 3 --precision bf16 --json]

One full training step per iteration (teacher + student on 2 x 256 px global and 8 x 112 px local crops,
DINO + iBOT (65536 prototypes) + KoLeo, backward, clipping, AdamW, EMA) on synthetic tensors already on
the GPU, so the figure is the model's, not the data loader's. Prints median img/s (tiles per second) per
backbone, the ratio, peak memory and which selective scan ran. Skips cleanly (exit 0) without CUDA.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from mvh.extractor.models import create_model
from mvh.extractor.models.ssm import mamba_selective_scan_fn
from mvh.pretrain.dino_loss import TeacherCentering
from mvh.pretrain.masking import sample_masks
from mvh.pretrain.network import build_network, compute_losses, ema_update, param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    name: str,
    batch: int,
    steps: int,
    warmup: int,
    dtype: torch.dtype | None,
    prototypes: int,
    device: torch.device,
) -> dict:
    """Median img/s of full training steps of backbone `name`."""
    torch.manual_seed(0)
    student = build_network(create_model(name), prototypes=prototypes).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    centering = (TeacherCentering(prototypes).to(device), TeacherCentering(prototypes).to(device))
    optimizer = torch.optim.AdamW(param_groups(student), lr=1e-4)
    patch = int(student.backbone.patch_size)
    global_crops = torch.randn(2 * batch, 3, 256, 256, device=device)
    local_crops = torch.randn(8 * batch, 3, 112, 112, device=device)
    masks = sample_masks(2 * batch, (256 // patch, 256 // patch), torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = compute_losses(student, teacher, global_crops, local_crops, masks, 0.04, *centering)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        for part in (student.backbone, student.dino_head, student.ibot_head):
            torch.nn.utils.clip_grad_norm_(part.parameters(), 3.0)
        optimizer.step()
        ema_update(teacher, student, 0.992)
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "model": name,
        "batch": batch,
        "median_step_s": median,
        "img_per_s": batch / median,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss": out.terms["total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--models", nargs="+", default=["mv_hybrid", "vit_s24_dinov2"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="run on CPU (a check of the script itself)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device (this benchmark measures GPU pretraining throughput)")
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    if device.type == "cpu":
        dtype, args.precision = None, "fp32"
    results = []
    for name in args.models:
        try:
            results.append(
                bench(name, args.batch_size, args.steps, args.warmup, dtype, args.prototypes, device)
            )
        except torch.cuda.OutOfMemoryError:
            results.append({"model": name, "batch": args.batch_size, "error": "CUDA out of memory"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "scan": "mamba_ssm CUDA kernel"
        if mamba_selective_scan_fn() is not None
        else "PyTorch scan (no mamba_ssm)",
        "results": results,
    }
    rates = {r["model"]: r.get("img_per_s") for r in results}
    if len(rates) == 2 and all(rates.values()):
        first, second = args.models
        report["ratio"] = {f"{first}/{second}": rates[first] / rates[second]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['device']}, {args.precision}, scan: {report['scan']}")
    for r in results:
        if "error" in r:
            print(f"{r['model']:<18} batch {r['batch']}: {r['error']}")
        else:
            print(
                f"{r['model']:<18} batch {r['batch']}: {r['img_per_s']:8.1f} img/s "
                f"(median step {r['median_step_s'] * 1000:.0f} ms, peak {r['peak_mem_gib'] or 0:.1f} GiB)"
            )
    for key, value in report.get("ratio", {}).items():
        print(f"ratio {key}: {value:.2f}")


if __name__ == "__main__":
    main()
