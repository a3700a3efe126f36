"""The process environment of a pretraining run: the device of this rank, the torchrun process group
(or a single process), and the mean of loss terms over ranks.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

from mvh.core.device import resolve_device as resolve_shared_device


def resolve_device(name: str) -> torch.device:
    """The shared device resolution, with a bare `cuda` placed on this rank's GPU under torchrun."""
    device = resolve_shared_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


class _Distributed:
    """torchrun environment (WORLD_SIZE > 1, or any size with FSDP) or a single process."""

    def __init__(self, device: torch.device, fsdp: bool = False) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.started = False
        if (self.world_size > 1 or fsdp) and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.started = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group and, once the models are gone, free it and its threads here.

        DDP's reducer holds the group until its model is freed, so call this after the training loop
        returned. FSDP/DTensor caches hold it longer; a torchrun worker therefore ends without the
        interpreter's teardown, where freeing it could abort a finished rank (`mvh.cli.main`).
        """
        if self.started:
            dist.destroy_process_group()
            gc.collect()


def _mean_over_ranks(terms: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(terms)
    values = torch.tensor([terms[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, values.tolist(), strict=True)}
