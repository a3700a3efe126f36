"""Checkpoint and resume of a pretraining run: whether --resume may continue from the run directory's
state (full checkpoint.pt or sharded DCP folder, same settings and world size), and the periodic save.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvh.errors import CheckpointError, UsageError
from mvh.pretrain.checkpoint import (
    TRAIN_STATE,
    atomic_save,
    load_train_state,
    save_teacher,
)
from mvh.pretrain.config import PretrainConfig
from mvh.pretrain.fsdp import (
    SHARDED_DIR,
    read_latest,
)
from mvh.pretrain.ranks import _Distributed
from mvh.pretrain.trainer import Trainer

logger = logging.getLogger(__name__)


@dataclass
class _ResumePoint:
    """Where --resume continues from: a full state (checkpoint.pt) or a sharded DCP folder (--fsdp)."""

    source: Path
    state: dict[str, Any] | None = None
    folder: Path | None = None


def _check_resumable(config: PretrainConfig, run_dir: Path, world_size: int) -> _ResumePoint:
    state_path = run_dir / TRAIN_STATE
    latest = read_latest(run_dir)
    if latest is not None and state_path.exists():
        raise UsageError(
            f"{run_dir}: holds both {TRAIN_STATE} and {SHARDED_DIR}/ (runs with and without --fsdp in one "
            "folder); move the one not to resume out of it"
        )
    if config.fsdp:
        if latest is None:
            if state_path.exists():
                raise UsageError(f"{state_path}: written by a run without --fsdp; resume it without --fsdp")
            raise CheckpointError(
                f"{run_dir / SHARDED_DIR}: no sharded training state to resume; run without --resume"
            )
        point = _ResumePoint(source=latest["path"], folder=latest["folder"])
        saved_config, saved_world = latest["config"], latest["world_size"]
    else:
        if not state_path.exists() and latest is not None:
            raise UsageError(
                f"{latest['path']}: written by an --fsdp run; resume it with torchrun ... --fsdp"
            )
        if not state_path.exists():
            raise CheckpointError(f"{state_path}: no training state to resume; run without --resume")
        state = load_train_state(state_path)
        point = _ResumePoint(source=state_path, state=state)
        saved_config, saved_world = state["config"], state.get("world_size")
    current = config.trajectory_dict()
    changed = sorted(k for k in current if saved_config.get(k) != current[k])
    if changed:
        raise UsageError(
            f"{point.source}: --resume with different settings ({', '.join(changed)}); "
            "use the command line of the original run"
        )
    if saved_world is not None and saved_world != world_size:
        raise UsageError(
            f"{point.source}: written by {saved_world} processes, this run has {world_size}; resume with "
            f"{saved_world} (nodes x --nproc-per-node): the global batch, lr and data order depend on it"
        )
    return point


def _save(trainer: Trainer, run_dir: Path, step: int, env: _Distributed) -> None:
    """Write the training state (checkpoint.pt by rank 0, or shards by every rank) and the teacher weights."""
    if trainer.sharded:
        trainer.save_sharded(step, run_dir, env.rank)
        teacher = trainer.teacher_state()  # a collective: every rank takes part, rank 0 gets the tensors
    elif env.main:
        atomic_save(trainer.state_dict(step), run_dir / TRAIN_STATE)
        teacher = trainer.teacher_state()
    else:
        return
    if env.main:
        save_teacher(teacher, run_dir)
        logger.info("step %d: saved the training state and teacher weights in %s", step, run_dir)
