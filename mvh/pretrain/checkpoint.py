"""Run-directory files: the resumable training state and the teacher weights that feed `mvh extract`.

- checkpoint.pt: student, teacher, optimiser, scaler, centring, step/data position, RNG states and the
  trajectory settings (read with `weights_only=True`: only tensors and plain Python values inside);
- teacher_checkpoint.pth: `{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}` (DINOv2 layout,
  read by `mvh.extractor.models.load_weights`); backbone.safetensors: the teacher backbone alone.
  An --fsdp run writes the same two weight files (gathered, by rank 0) and its training state as
  sharded DCP folders instead of checkpoint.pt (see `mvh.pretrain.fsdp`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvh.errors import CheckpointError

TRAIN_STATE = "checkpoint.pt"
TEACHER_CHECKPOINT = "teacher_checkpoint.pth"
BACKBONE_WEIGHTS = "backbone.safetensors"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_teacher(teacher_state: dict[str, torch.Tensor], run_dir: Path) -> tuple[Path, Path]:
    """Write teacher_checkpoint.pth ({"teacher": full state dict}) and backbone.safetensors; return both."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().clone() for k, v in teacher_state.items()}
    ckpt = run_dir / TEACHER_CHECKPOINT
    atomic_save({"teacher": state}, ckpt)
    backbone = {k[len("backbone.") :]: v.contiguous() for k, v in state.items() if k.startswith("backbone.")}
    weights = run_dir / BACKBONE_WEIGHTS
    tmp = weights.with_suffix(".safetensors.tmp")
    save_file(backbone, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    return ckpt, weights


TRAIN_STATE_KEYS = frozenset(
    {"student", "teacher", "optimizer", "scaler", "dino_centering", "ibot_centering", "step", "rng", "config"}
)


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a checkpoint.pt written by `pretrain` (one-line CheckpointError when unreadable or foreign)."""
    from mvh.extractor.models.checkpoint import load_torch_file

    try:
        state = load_torch_file(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; or start without --resume") from exc
    missing = sorted(TRAIN_STATE_KEYS - set(state)) if isinstance(state, dict) else ["(not a mapping)"]
    if missing:
        raise CheckpointError(
            f"{path}: not a training state written by `mvh pretrain` (missing {', '.join(missing)}); "
            "start without --resume"
        )
    return state
