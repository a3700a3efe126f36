"""ABMIL training throughput (patients/s): padded batches of patients vs one patient per step.

    python benchmarks/survival_mil.py [--patients 64] [--dim 384] [--tiles 64 512] [--repeats 3]
                                      [--max-tiles 4096] [--device auto]

Synthetic bags (uniform tile counts in --tiles), the NLL loss (defined for one patient per step), one
epoch per timing; figures are medians over --repeats epochs after one warm-up epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mvh.tasks.survival import SurvivalConfig, resolve_device, train_abmil


def patients_per_s(bags: list[np.ndarray], time_: np.ndarray, event: np.ndarray, batch: int, args) -> float:
    """Median patients/s of one training epoch with `batch` patients per optimiser step."""
    config = SurvivalConfig(
        loss="nll", epochs=1, batch_size=batch, max_tiles=args.max_tiles, device=args.device
    )
    device = resolve_device(args.device)
    train_abmil(bags, time_, event, config, device=device)
    rates = []
    for r in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_abmil(bags, time_, event, config, seed=r, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(bags) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--tiles", type=int, nargs=2, default=(64, 512))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tiles", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(int(rng.integers(*args.tiles)), args.dim)).astype(np.float32)
            for _ in range(args.patients)]
    time_ = rng.exponential(size=args.patients)
    event = (rng.random(args.patients) < 0.7).astype(int)
    one = patients_per_s(bags, time_, event, 1, args)
    batched = patients_per_s(bags, time_, event, 16, args)
    print(f"device {resolve_device(args.device)}, threads {torch.get_num_threads()}, "
          f"{args.patients} patients, dim {args.dim}, tiles {args.tiles[0]}-{args.tiles[1]}")
    print(f"one patient per step : {one:8.1f} patients/s (median of {args.repeats})")
    print(f"16 patients per step : {batched:8.1f} patients/s (median of {args.repeats})")
    print(f"ratio                : {batched / one:8.2f}x")


if __name__ == "__main__":
    main()
