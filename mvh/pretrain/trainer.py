"""The `Trainer`: everything one run trains (student, EMA teacher, heads, optimiser, schedules, loss
scaler) and its per-step update, with the state it saves and restores (full or sharded).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mvh.core.precision import autocast_dtype, resolve_precision
from mvh.errors import UsageError
from mvh.pretrain.checkpoint import (
    rng_state,
    set_rng_state,
)
from mvh.pretrain.config import PretrainConfig
from mvh.pretrain.data import (
    keyed_generator,
)
from mvh.pretrain.dino_loss import TeacherCentering
from mvh.pretrain.fsdp import (
    device_mesh,
    full_state_dict,
    full_tensor,
    load_sharded,
    load_sharded_into,
    quiet_view_outputs,
    save_sharded,
    shard_network,
    sharded_state,
)
from mvh.pretrain.masking import sample_masks
from mvh.pretrain.network import build_network, compute_losses, ema_update, param_groups
from mvh.pretrain.ranks import _mean_over_ranks
from mvh.pretrain.schedules import build_schedules, scaled_lr


class Trainer:
    """Everything one run trains and its per-step update; built from a config at the edge of the library."""

    def __init__(
        self, config: PretrainConfig, steps_per_epoch: int, device: torch.device, world_size: int
    ) -> None:
        from mvh.extractor.models import create_model

        self.config, self.device, self.steps_per_epoch = config, device, steps_per_epoch
        self.world_size = world_size
        self.sharded = config.fsdp
        self.schedules = build_schedules(
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            peak_lr=scaled_lr(config.lr, config.batch_size * world_size, config.lr_reference_batch),
            min_lr=config.min_lr,
            warmup_epochs=config.warmup_epochs,
            weight_decay=config.weight_decay,
            weight_decay_end=config.weight_decay_end,
            momentum=config.momentum,
            momentum_end=config.momentum_end,
            teacher_temp=config.teacher_temp,
            warmup_teacher_temp=config.warmup_teacher_temp,
            warmup_teacher_temp_epochs=config.warmup_teacher_temp_epochs,
            freeze_last_layer_epochs=config.freeze_last_layer_epochs,
            reference_epochs=config.reference_epochs,
        )
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        self.student = build_network(
            create_model(config.model, **config.model_overrides),
            prototypes=config.prototypes,
            ibot_prototypes=config.ibot_prototypes,
            hidden_dim=config.head_hidden_dim,
            bottleneck_dim=config.head_bottleneck_dim,
            n_layers=config.head_layers,
            learn_last_layer_norm=config.learn_last_layer_norm,
        ).to(device)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        if self.sharded:  # before the optimiser is built: it must hold the sharded parameters
            mesh = device_mesh(device, world_size)
            shard_network(self.student, mesh)
            shard_network(self.teacher, mesh, reshard_after_forward=True)
        ibot_prototypes = config.ibot_prototypes or config.prototypes
        self.dino_centering = TeacherCentering(config.prototypes, config.centering).to(device)
        self.ibot_centering = TeacherCentering(ibot_prototypes, config.centering).to(device)
        groups = param_groups(self.student, config.patch_embed_lr_mult, config.wd_exempt_ssm)
        self.optimizer = torch.optim.AdamW(groups, betas=(config.adamw_beta1, config.adamw_beta2))
        self.autocast_dtype = autocast_dtype(resolve_precision(config.precision, device))
        self.scaler = _grad_scaler(device, self.autocast_dtype == torch.float16, self.sharded)
        self.model: nn.Module = self.student
        if world_size > 1 and not self.sharded:
            device_ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=device_ids, find_unused_parameters=True
            )
        patch = int(self.student.backbone.patch_size)
        self.mask_grid = (config.global_size // patch, config.global_size // patch)

    def state_dict(self, step: int) -> dict[str, Any]:
        """The full training state after `step` steps (what `resume` needs to continue exactly)."""
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "dino_centering": self.dino_centering.state_dict(),
            "ibot_centering": self.ibot_centering.state_dict(),
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "batch_in_epoch": step % self.steps_per_epoch,
            "rng": rng_state(),
            "config": self.config.trajectory_dict(),
            "world_size": self.world_size,
        }

    def _extra_state(self, step: int) -> dict[str, Any]:
        return {
            "scaler": self.scaler.state_dict(),
            "dino_centering": self.dino_centering.state_dict(),
            "ibot_centering": self.ibot_centering.state_dict(),
            "step": step,
        }

    def save_sharded(self, step: int, run_dir: Path, rank: int) -> Path:
        """FSDP: every rank writes its shards and RNG states of the state after `step` steps (DCP)."""
        state = sharded_state(self.student, self.teacher, self.optimizer, rank, self._extra_state(step))
        trajectory = self.config.trajectory_dict()
        return save_sharded(state, run_dir, step, self.world_size, trajectory, main=rank == 0)

    def load_sharded(self, folder: Path, rank: int) -> int:
        """FSDP: restore this rank's part of a `save_sharded` folder; return its step."""
        state = sharded_state(self.student, self.teacher, self.optimizer, rank, self._extra_state(0))
        load_sharded(state, folder)
        load_sharded_into(self.student, self.teacher, self.optimizer, state)
        self.scaler.load_state_dict(state["scaler"])
        self.dino_centering.load_state_dict(state["dino_centering"])
        self.ibot_centering.load_state_dict(state["ibot_centering"])
        set_rng_state(state[f"rng_rank{rank}"])
        return int(state["step"])

    def teacher_state(self) -> dict[str, torch.Tensor]:
        """The teacher's full state dict (gathered from the shards under FSDP: call it on every rank)."""
        return full_state_dict(self.teacher) if self.sharded else self.teacher.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a state from `state_dict`; return its step."""
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.dino_centering.load_state_dict(state["dino_centering"])
        self.ibot_centering.load_state_dict(state["ibot_centering"])
        set_rng_state(state["rng"])
        return int(state["step"])

    def masks(self, n_images: int, step: int, rank: int) -> torch.Tensor | None:
        """iBOT masks [n_images, N] of this rank's global crops (crop-major), keyed by (seed, step).

        The masks are drawn for the whole global batch and this rank takes its images' rows, so a run on
        W ranks masks exactly what a one-process run of the same global batch masks.
        """
        c = self.config
        if c.mask_probability <= 0 or c.ibot_weight <= 0:
            return None
        local = n_images // 2
        world = self.world_size
        masks = sample_masks(
            n_images * world,
            self.mask_grid,
            keyed_generator(c.seed, step, 1),
            c.mask_ratio[0],
            c.mask_ratio[1],
            c.mask_probability,
            c.mask_mode,
        ).view(2, world * local, -1)
        return masks[:, rank * local : (rank + 1) * local].reshape(n_images, -1).to(self.device)

    def step(self, batch: dict[str, torch.Tensor], step: int, rank: int = 0) -> dict[str, Any]:
        """One optimisation step on a collated multi-crop batch; returns the step's log values."""
        c = self.config
        values = self.schedules.at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = values["last_layer_lr" if group["last_layer"] else "lr"] * group["lr_multiplier"]
            group["weight_decay"] = values["wd"] * group["wd_multiplier"]
        global_crops = batch["global_crops"].to(self.device, non_blocking=True)
        local_crops = batch["local_crops"].to(self.device, non_blocking=True) if c.local_crops else None
        masks = self.masks(global_crops.shape[0], step, rank)
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        quiet = quiet_view_outputs() if self.sharded else contextlib.nullcontext()
        with autocast, quiet:
            out = compute_losses(
                self.model,
                self.teacher,
                global_crops,
                local_crops,
                masks,
                values["teacher_temp"],
                self.dino_centering,
                self.ibot_centering,
                student_temp=c.student_temp,
                dino_weight=c.dino_weight,
                ibot_weight=c.ibot_weight,
                koleo_weight=c.koleo_weight,
            )
        if self.world_size > 1:  # log the global batch's loss, as DINOv2 does (all-reduced mean)
            out.terms = _mean_over_ranks(out.terms, self.device)
        if not math.isfinite(out.terms["total"]):
            raise UsageError(f"pretrain: loss is {out.terms['total']} at step {step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = 0.0
        if c.grad_clip > 0:  # each part on its own, as DINOv2 does
            norm = nn.utils.clip_grad_norm_(self.student.backbone.parameters(), c.grad_clip)
            grad_norm = float(full_tensor(norm))
            nn.utils.clip_grad_norm_(self.student.dino_head.parameters(), c.grad_clip)
            nn.utils.clip_grad_norm_(self.student.ibot_head.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.teacher, self.student, values["mom"])
        return {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": out.terms,
            "lr": values["lr"],
            "wd": values["wd"],
            "momentum": values["mom"],
            "teacher_temp": values["teacher_temp"],
            "grad_norm_backbone": grad_norm,
        }


def _grad_scaler(device: torch.device, enabled: bool, sharded: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler; under FSDP the sharded one, which agrees across ranks on skipping a step."""
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=enabled)
    return torch.amp.GradScaler(device.type, enabled=enabled)
