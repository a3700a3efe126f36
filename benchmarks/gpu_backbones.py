"""One prepared GPU check: mamba_ssm's CUDA scan vs ours (outputs and gradients), then bf16 tiles/s.

1. Selective scan on CUDA at B=32, D=384, L=197, N=16: mamba_ssm's `selective_scan_fn` (when it imports)
   against our PyTorch scan, float32: max abs difference of y and of every gradient, and median times.
2. The whole mv_hybrid (seeded random init, batch 8, 224 px) under bf16 and fp16 autocast on CUDA,
   through the dispatch (the real kernel when mamba_ssm imports), forward and backward, against the
   float32 CPU path with our scan: max abs difference of the embeddings printed; any raise is a failure.
3. bf16 autocast throughput (batch 32, 224 px) of mv_hybrid (kernel and our scan), vit_s12, vit_s24.
Exits 0 with a message when no CUDA device is present. Usage: python benchmarks/gpu_backbones.py
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from mvh.extractor.models.ssm import mamba_selective_scan_fn, selective_scan_torch


def _timed(fn, repeats: int = 10) -> float:
    """Median seconds of `fn()` on CUDA after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_scan(kernel) -> bool:
    """Compare the CUDA kernel with our scan on outputs and gradients; print diffs and times."""
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, n, s = 32, 384, 197, 16
    base = {
        "u": torch.randn(b, d, n, device="cuda", generator=g),
        "delta": torch.randn(b, d, n, device="cuda", generator=g) * 0.5,
        "A": -torch.exp(torch.log(torch.arange(1, s + 1, device="cuda", dtype=torch.float32)).repeat(d, 1)),
        "B": torch.randn(b, s, n, device="cuda", generator=g),
        "C": torch.randn(b, s, n, device="cuda", generator=g),
        "D": torch.randn(d, device="cuda", generator=g),
        "delta_bias": torch.randn(d, device="cuda", generator=g) * 0.1,
    }
    grads = {}
    outputs = {}
    weights = torch.randn(b, d, n, device="cuda", generator=g)
    impls = {
        "mamba_ssm": lambda x: kernel(
            x["u"],
            x["delta"],
            x["A"],
            x["B"],
            x["C"],
            x["D"],
            z=None,
            delta_bias=x["delta_bias"],
            delta_softplus=True,
            return_last_state=False,
        ),
        "ours": lambda x: selective_scan_torch(**x, delta_softplus=True),
    }
    for name, fn in impls.items():
        leaves = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        y = fn(leaves)
        (y * weights).sum().backward()
        outputs[name] = y.detach()
        grads[name] = {k: v.grad for k, v in leaves.items()}
    ok = True
    diff = (outputs["mamba_ssm"] - outputs["ours"]).abs().max().item()
    print(f"  y: max|kernel - ours| = {diff:.2e}")
    ok &= torch.allclose(outputs["mamba_ssm"], outputs["ours"], rtol=1e-3, atol=1e-3)
    for k in base:
        gk, go = grads["mamba_ssm"][k], grads["ours"][k]
        rel = ((gk - go).abs().max() / go.abs().max().clamp_min(1e-12)).item()
        print(f"  grad {k:10s}: max|diff| / max|grad| = {rel:.2e}")
        ok &= rel < 1e-3
    with torch.inference_mode():
        for name, fn in impls.items():
            print(f"  forward {name:9s}: {_timed(lambda fn=fn: fn(base)) * 1e3:8.2f} ms (median of 10)")
    print(f"  kernel and ours agree: {ok}")
    return ok


def check_autocast_end_to_end() -> bool:
    """Full mv_hybrid under bf16/fp16 autocast on CUDA (forward + backward) vs the float32 CPU path."""
    from mvh.extractor.models import create_model

    torch.manual_seed(0)
    model = create_model("mv_hybrid").eval()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    model = model.cuda()
    ok = True
    for dtype in (torch.bfloat16, torch.float16):
        model.zero_grad(set_to_none=True)
        try:
            with torch.autocast("cuda", dtype=dtype):
                out = model(x.cuda())
            out.float().square().mean().backward()
        except RuntimeError as exc:
            print(f"  {dtype}: RAISED {type(exc).__name__}: {str(exc).splitlines()[0]}")
            ok = False
            continue
        diff = (out.float().cpu() - reference).abs().max().item()
        scale = reference.abs().max().item()
        finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        print(
            f"  {dtype}: max|autocast GPU - fp32 CPU| = {diff:.3e} (max|ref| {scale:.2f}); "
            f"grads finite {finite}"
        )
        ok &= finite and diff < 0.05 * scale
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_backbones: no CUDA device here; nothing to check (run it on a GPU machine).")
        return 0
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    kernel = mamba_selective_scan_fn()
    ok = True
    if kernel is None:
        print("1. selective scan: mamba_ssm does not import here; kernel comparison skipped")
    else:
        print("1. selective scan, B=32 D=384 L=197 N=16, float32: mamba_ssm kernel vs ours")
        ok = check_scan(kernel)
    print("2. mv_hybrid end to end under autocast through the dispatch, vs fp32 CPU:")
    ok &= check_autocast_end_to_end()
    print("3. backbones, bf16 autocast:")
    from backbones import MODELS, run  # benchmarks/ is on sys.path when this file runs as a script

    run(list(MODELS), torch.device("cuda"), batch=32, size=224, repeats=10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
