"""Per-step schedules (cosine with linear warm-up) for lr, weight decay, teacher momentum and temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """[total_steps] values: linear `warmup_start -> base` for `warmup_steps`, then cosine `base -> final`."""
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    warmup = np.linspace(warmup_start, base, warmup_steps, endpoint=False)
    n_cos = total_steps - warmup_steps
    t = np.arange(n_cos) / max(n_cos - 1, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def warmup_then_constant(start: float, end: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """[total_steps] values: linear `start -> end` over `warmup_steps`, then `end` (teacher temperature)."""
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    ramp = np.linspace(start, end, warmup_steps, endpoint=False)
    return np.concatenate([ramp, np.full(total_steps - warmup_steps, end)]).astype(np.float64)


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 1024) -> float:
    """DINOv2's square-root scaling of the base learning rate with the total batch size."""
    return base_lr * math.sqrt(batch_size / reference_batch)


@dataclass(frozen=True)
class Schedules:
    """All per-step schedules of one run (arrays of length `total_steps`)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    last_layer_lr: np.ndarray

    @property
    def total_steps(self) -> int:
        """Number of optimisation steps."""
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        """The values at `step` (the last value past the end)."""
        i = min(step, self.total_steps - 1)
        return {
            "lr": float(self.lr[i]),
            "wd": float(self.weight_decay[i]),
            "mom": float(self.momentum[i]),
            "teacher_temp": float(self.teacher_temp[i]),
            "last_layer_lr": float(self.last_layer_lr[i]),
        }


def build_schedules(
    epochs: int,
    steps_per_epoch: int,
    peak_lr: float,
    min_lr: float = 1e-6,
    warmup_epochs: float = 10.0,
    weight_decay: float = 0.04,
    weight_decay_end: float = 0.4,
    momentum: float = 0.992,
    momentum_end: float = 1.0,
    teacher_temp: float = 0.06,
    warmup_teacher_temp: float = 0.04,
    warmup_teacher_temp_epochs: float = 30.0,
    freeze_last_layer_epochs: float = 1.0,
    reference_epochs: int = 200,
) -> Schedules:
    """The recipe's schedules; warm-ups given in epochs of a `reference_epochs` run shrink with short runs.

    The authors' 10 lr warm-up, 30 teacher-temperature warm-up and 1 frozen-last-layer epochs belong to
    their 200-epoch run (`Train_MVHybrid.yaml`), where they are exactly DINOv2's: a run of `epochs` <
    `reference_epochs` keeps the same fractions (so a 5-epoch test run still warms up and decays its lr).
    """
    total = max(epochs * steps_per_epoch, 1)
    fraction = min(1.0, epochs / reference_epochs)
    warmup = round(warmup_epochs * fraction * steps_per_epoch)
    temp_warmup = round(warmup_teacher_temp_epochs * fraction * steps_per_epoch)
    frozen = round(freeze_last_layer_epochs * fraction * steps_per_epoch)
    lr = cosine_schedule(peak_lr, min_lr, total, warmup)
    last_layer_lr = lr.copy()
    last_layer_lr[:frozen] = 0.0
    return Schedules(
        lr=lr,
        weight_decay=cosine_schedule(weight_decay, weight_decay_end, total),
        momentum=cosine_schedule(momentum, momentum_end, total),
        teacher_temp=warmup_then_constant(warmup_teacher_temp, teacher_temp, total, temp_warmup),
        last_layer_lr=last_layer_lr,
    )
