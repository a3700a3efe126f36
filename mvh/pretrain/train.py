"""DINOv2 training loop: student/teacher with DINO + iBOT heads, EMA teacher, KoLeo, multi-crop, resume.

Files in the run directory:
- config.yaml (the merged configuration, DINOv2-style keys), log.jsonl (one JSON record per step),
  loss_curve.png, results.json (exactly `PretrainResult.to_dict()`);
- checkpoint.pt (the state `resume` continues from exactly), teacher_checkpoint.pth and
  backbone.safetensors (the weights for `mvh extract`): see `mvh.pretrain.checkpoint`;
- with --fsdp, checkpoint_sharded/ (DCP, written by every rank) instead of checkpoint.pt: see
  `mvh.pretrain.fsdp`.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import math
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from mvh.core.device import resolve_device as resolve_shared_device
from mvh.core.precision import autocast_dtype, resolve_precision
from mvh.errors import CheckpointError, UsageError
from mvh.jobs import JobResult
from mvh.pretrain.augment import MultiCropAugmentation
from mvh.pretrain.checkpoint import (
    BACKBONE_WEIGHTS,
    TEACHER_CHECKPOINT,
    TRAIN_STATE,
    atomic_save,
    load_train_state,
    rng_state,
    save_teacher,
    set_rng_state,
)
from mvh.pretrain.config import PretrainConfig, save_config
from mvh.pretrain.data import (
    MultiCropDataset,
    StepBatchSampler,
    build_tile_source,
    collate_multicrop,
    keyed_generator,
)
from mvh.pretrain.dino_loss import TeacherCentering
from mvh.pretrain.fsdp import (
    SHARDED_DIR,
    check_fsdp_launch,
    device_mesh,
    full_state_dict,
    full_tensor,
    load_sharded,
    load_sharded_into,
    quiet_view_outputs,
    read_latest,
    save_sharded,
    shard_network,
    sharded_state,
)
from mvh.pretrain.masking import sample_masks
from mvh.pretrain.network import build_network, compute_losses, ema_update, param_groups
from mvh.pretrain.schedules import build_schedules, scaled_lr
from mvh.progress import STEPS, Event, Progress, report

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
LOSS_PNG = "loss_curve.png"
RESULTS = "results.json"


def resolve_device(name: str) -> torch.device:
    """The shared device resolution, with a bare `cuda` placed on this rank's GPU under torchrun."""
    device = resolve_shared_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


LOSS_CAPTION = (
    "A short demo run (tens of steps on one slide): expect the total to fall slowly and then flatten, most "
    "of the drop from KoLeo (it falls as the embeddings spread apart), while DINO and iBOT stay near their "
    "starting values (DINO near log of the number of prototypes) and creep down as the teacher sharpens. "
    "A total that rises from the start, or NaN, means the run is not learning."
)


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss terms per step as a PNG with a title and a caption saying what a healthy curve looks like."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    steps = [r["step"] for r in records]
    for key in ("total", "dino", "ibot", "koleo"):
        values = [r["loss"].get(key) for r in records]
        if any(v is not None for v in values):
            ax.plot(steps, values, label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, textwrap.fill(LOSS_CAPTION, 110), fontsize=7, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class PretrainResult(JobResult, job="pretrain"):
    """What a run produced (results.json is exactly `to_dict()`)."""

    run_dir: Path
    steps: int
    total_steps: int
    epochs_done: float
    n_tiles: int
    first_loss: float | None
    last_loss: float | None
    seconds: float
    images_per_second: float
    teacher_checkpoint: Path
    backbone_weights: Path
    resumed_from: int | None
    rank: int = 0
    # Provenance of the batch: the lr was scaled from `global_batch` = `batch_per_rank` x `world_size`.
    world_size: int = 1
    batch_per_rank: int = 0
    global_batch: int = 0
    parallel: str = "single"  # "single" process, "ddp" or "fsdp"
    notes: list[str] = field(default_factory=list)


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


def _load_log(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] < up_to_step]


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


def _mean_over_ranks(terms: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(terms)
    values = torch.tensor([terms[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, values.tolist(), strict=True)}


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


def _multicrop_dataset(config: PretrainConfig, progress: Progress | None) -> MultiCropDataset:
    from mvh.extractor.models import get_model_info

    info = get_model_info(config.model)
    brightness, contrast, saturation, hue = config.color_jitter
    augmentation = MultiCropAugmentation(
        global_size=config.global_size,
        local_size=config.local_size,
        n_local_crops=config.local_crops,
        global_scale=config.global_scale,
        local_scale=config.local_scale,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        jitter_probability=config.color_jitter_p,
        grayscale_probability=config.grayscale_p,
        horizontal_flip_probability=config.horizontal_flip_p,
        vertical_flip_probability=config.vertical_flip_p,
        blur_probabilities=(config.blur_p_global_1, config.blur_p_global_2, config.blur_p_local),
        blur_kernel_size=config.blur_kernel_size,
        blur_sigma=config.blur_sigma,
        mean=tuple(info.mean),  # type: ignore[arg-type]
        std=tuple(info.std),  # type: ignore[arg-type]
    )
    tiles = build_tile_source(
        [Path(p) for p in config.inputs],
        mpp=config.mpp,
        tile_px=config.tile_px or config.global_size,
        min_tissue=config.min_tissue,
        max_tiles=config.max_tiles,
        slide_mpp=config.slide_mpp,
        overlap=config.overlap,
        progress=progress,
    )
    return MultiCropDataset(tiles, augmentation, config.seed)


def recipe_notes(config: PretrainConfig, steps_per_epoch: int, n_tiles: int) -> list[str]:
    """What a run assumes or changes relative to the authors' recipe, for the user and results.json."""
    notes = [f"{n_tiles} tiles, {steps_per_epoch} steps per epoch, {config.epochs} epochs"]
    if config.epochs < config.reference_epochs:
        f = config.epochs / config.reference_epochs
        notes.append(
            f"{config.epochs} of the recipe's {config.reference_epochs} epochs: warm-ups keep their share "
            f"(lr {config.warmup_epochs * f:g}, teacher temperature "
            f"{config.warmup_teacher_temp_epochs * f:g}, frozen last layer "
            f"{config.freeze_last_layer_epochs * f:g} epochs)"
        )
    if config.precision != "fp32":
        notes.append(f"precision {config.precision}: the authors trained in float32")
    if config.vertical_flip_p > 0:
        notes.append(f"vertical flips at p {config.vertical_flip_p:g}: not in the authors' augmentations")
    if config.wd_exempt_ssm:
        notes.append("A_log and D exempt from weight decay: the authors decay them")
    return notes


def _loader(
    dataset: MultiCropDataset, config: PretrainConfig, start: int, stop: int, env: _Distributed, pin: bool
) -> DataLoader:
    """Collated batches of global steps [start, stop) for this rank."""
    sampler = StepBatchSampler(
        len(dataset), config.batch_size, config.seed, start, stop, env.rank, env.world_size
    )
    # Workers start from a fresh interpreter: forking a process that holds LanceDB/OpenSlide state is unsafe.
    context = "forkserver" if config.workers > 0 and "forkserver" in mp.get_all_start_methods() else None
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_multicrop,
        pin_memory=pin,
        multiprocessing_context=context,
    )


def _status_line(record: dict[str, Any]) -> str:
    loss = record["loss"]
    terms = " ".join(f"{k} {loss[k]:.3f}" for k in ("total", "dino", "ibot", "koleo") if k in loss)
    speed = f"{record['images_per_second']:.1f} img/s"
    return f"step {record['step'] + 1}: {terms} | lr {record['lr']:.2e} | {speed}"


def run_pretrain(config: PretrainConfig, *, progress: Progress | None = None) -> PretrainResult:
    """Train `config.model` with the DINOv2 recipe on `config.inputs`; write the run directory."""
    if not config.inputs:
        raise UsageError("pretrain: no inputs; pass folders of tile images or slide files")
    from mvh.extractor.models import create_model

    with torch.device("meta"):  # model name and --overrides checked before any slide is tiled
        create_model(config.model, **config.model_overrides)
    run_dir = Path(config.out)
    device = resolve_device(config.device)
    if config.fsdp:
        check_fsdp_launch(device)
    env = _Distributed(device, fsdp=config.fsdp)
    try:
        return _train(config, run_dir, device, env, progress)
    finally:
        env.close()  # after _train returned: its models, which hold the process group, are freed


def _train(
    config: PretrainConfig, run_dir: Path, device: torch.device, env: _Distributed, progress: Progress | None
) -> PretrainResult:
    """The training loop of `run_pretrain` on this rank (resume, steps, checkpoints, results)."""
    shown = progress if env.main else None
    point = _check_resumable(config, run_dir, env.world_size) if config.resume else None
    report(shown, Event.STATUS, STEPS, 0, "reading the inputs")
    dataset = _multicrop_dataset(config, shown)
    global_batch = config.batch_size * env.world_size
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise UsageError(
            f"pretrain: {len(dataset)} tiles is less than one batch of {global_batch}; lower --batch-size"
        )
    notes = recipe_notes(config, steps_per_epoch, len(dataset))
    trainer = Trainer(config, steps_per_epoch, device, env.world_size)
    # The run directory appears once the inputs are read and the model built: a failed start leaves none
    run_dir.mkdir(parents=True, exist_ok=True)
    if env.main:
        save_config(config, run_dir)
    step = 0
    if point is not None and point.folder is not None:
        step = trainer.load_sharded(point.folder, env.rank)
    elif point is not None and point.state is not None:
        step = trainer.load_state_dict(point.state)
    resumed_from = step if point is not None else None
    if point is not None:
        notes.append(f"resumed from step {resumed_from} of {point.source}")
    if config.fsdp:
        notes.append(
            f"FSDP over {env.world_size} processes: training state sharded in {run_dir / SHARDED_DIR} "
            "(every rank writes its shards); teacher_checkpoint.pth gathered and written by rank 0"
        )
    for note in notes:
        report(shown, Event.NOTE, STEPS, 0, note)
    total_steps = trainer.schedules.total_steps
    last_step = total_steps if config.max_steps is None else min(total_steps, config.max_steps)
    report(shown, Event.TOTAL, STEPS, last_step)
    report(shown, Event.ADVANCE, STEPS, step)
    report(shown, Event.STATUS, STEPS, 0, "first batch (loader workers starting)")
    records = _load_log(run_dir / LOG_FILE, step) if env.main else []
    if env.main:
        (run_dir / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))

    start_time = time.perf_counter()
    images_done = 0
    first_loss = None
    data = iter(_loader(dataset, config, step, last_step, env, pin=device.type == "cuda"))
    trainer.student.train()
    while step < last_step:
        tick = time.perf_counter()
        batch = next(data)
        record = trainer.step(batch, step, env.rank)
        step += 1
        n_images = batch["global_crops"].shape[0] // 2 * env.world_size
        images_done += n_images
        record["images_per_second"] = n_images / max(time.perf_counter() - tick, 1e-9)
        first_loss = record["loss"]["total"] if first_loss is None else first_loss
        if env.main:
            records.append(record)
            with open(run_dir / LOG_FILE, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            report(shown, Event.ADVANCE, STEPS, 1)
            report(shown, Event.STATUS, STEPS, 0, _status_line(record))
        if step % config.save_every == 0 or step == last_step:
            _save(trainer, run_dir, step, env)

    seconds = time.perf_counter() - start_time
    if env.main and records:
        plot_losses(records, run_dir / LOSS_PNG, f"DINOv2 pretraining of {config.model}: loss per step")
    result = PretrainResult(
        run_dir=run_dir,
        steps=step,
        total_steps=total_steps,
        epochs_done=step / steps_per_epoch,
        n_tiles=len(dataset),
        first_loss=first_loss,
        last_loss=records[-1]["loss"]["total"] if records else None,
        seconds=seconds,
        images_per_second=images_done / max(seconds, 1e-9),
        teacher_checkpoint=run_dir / TEACHER_CHECKPOINT,
        backbone_weights=run_dir / BACKBONE_WEIGHTS,
        resumed_from=resumed_from,
        rank=env.rank,
        world_size=env.world_size,
        batch_per_rank=config.batch_size,
        global_batch=global_batch,
        parallel="fsdp" if config.fsdp else ("ddp" if env.world_size > 1 else "single"),
        notes=notes,
    )
    if env.main:
        result.write_json(run_dir / RESULTS)
    return result
