"""Which torch device a `--device` option names, checked against the machine."""

from __future__ import annotations

import torch

from mvh.errors import UsageError


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` -> cuda when available else cpu; `cpu`, `cuda`, `cuda:i` checked against the machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:i") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} asked for but no CUDA GPU is visible: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type != "cpu":
        raise UsageError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:i")
    return dev
