"""Which numeric precision a `--precision` option names on a device, and its autocast dtype."""

from __future__ import annotations

import torch

from mvh.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on CPU; fp16|bf16 need a GPU."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if precision not in ("auto", "fp32"):
            raise UsageError(f"--precision {precision} needs a CUDA device; on CPU use fp32 (or auto)")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The `torch.autocast` dtype of a resolved precision (None: float32, no autocast)."""
    return _AUTOCAST[precision]
