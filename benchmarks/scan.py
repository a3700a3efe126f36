"""Selective scan on CPU: ours vs the plain per-token loop vs mamba_ssm's `selective_scan_ref` formulation.

Prints median wall and CPU (process) times over interleaved repeats, the speed-up ratios and the max
abs difference to the per-token loop. On a shared machine the CPU times are the steadier figure.
Usage: python benchmarks/scan.py [--batch 32 --dim 384 --length 197 --state 16 --repeats 7 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mvh.extractor.models.ssm import selective_scan_torch


def per_token_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """The plain recurrence, one token at a time (float32)."""
    dtype = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return (y if D is None else y + u * D[:, None]).to(dtype)



def materialised_ref(u, delta, A, B, C, D, delta_bias):
    """The field's CPU reference formulation: exp(delta*A), delta*B*u over [B, D, L, N], then einsums."""
    delta = F.softplus(delta + delta_bias[:, None])
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_bu = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = delta_a[:, :, t] * h + delta_bu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def ours(u, delta, A, B, C, D, delta_bias):
    """mvh's scan (`selective_scan_torch`)."""
    return selective_scan_torch(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--length", type=int, default=197)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b, d, n, s = args.batch, args.dim, args.length, args.state
    inputs = (
        torch.randn(b, d, n, generator=g),
        torch.randn(b, d, n, generator=g) * 0.5,
        -torch.exp(torch.log(torch.arange(1, s + 1, dtype=torch.float32)).repeat(d, 1)),
        torch.randn(b, s, n, generator=g),
        torch.randn(b, s, n, generator=g),
        torch.randn(d, generator=g),
        torch.randn(d, generator=g) * 0.1,
    )
    def per_token_loop(*args: torch.Tensor) -> torch.Tensor:
        return per_token_scan(*args, delta_softplus=True)

    impls = {
        "ours": ours,
        "per-token loop": per_token_loop,
        "mamba_ssm ref formulation": materialised_ref,
    }
    times: dict[str, list[float]] = {name: [] for name in impls}
    cpu: dict[str, list[float]] = {name: [] for name in impls}
    with torch.inference_mode():
        baseline = per_token_loop(*inputs)
        diffs = {name: (fn(*inputs) - baseline).abs().max().item() for name, fn in impls.items()}
        for _ in range(args.repeats):
            for name, fn in impls.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(*inputs)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    print(
        f"selective scan, B={b} D={d} L={n} N={s}, float32, CPU threads={torch.get_num_threads()}, "
        f"{args.repeats} interleaved repeats"
    )
    wall = {name: statistics.median(ts) for name, ts in times.items()}
    proc = {name: statistics.median(ts) for name, ts in cpu.items()}
    for name in impls:
        print(
            f"  {name:26s} wall median {wall[name] * 1e3:8.1f} ms  cpu median {proc[name] * 1e3:8.1f} ms"
            f"  max|diff| vs loop {diffs[name]:.2e}"
        )
    for label, med in (("wall", wall), ("cpu", proc)):
        mine = med["ours"]
        print(
            f"  speed-up ({label}): {med['per-token loop'] / mine:5.2f}x vs per-token loop, "
            f"{med['mamba_ssm ref formulation'] / mine:5.2f}x vs mamba_ssm ref formulation"
        )


if __name__ == "__main__":
    main()
