"""DINOv2 training loop: student/teacher with DINO + iBOT heads, EMA teacher, KoLeo, multi-crop, resume.

Files in the run directory:
- config.yaml (the merged configuration, DINOv2-style keys), log.jsonl (one JSON record per step),
  loss_curve.png, results.json (exactly `PretrainResult.to_dict()`);
- checkpoint.pt (the state `resume` continues from exactly), teacher_checkpoint.pth and
  backbone.safetensors (the weights for `mvh extract`): see `mvh.pretrain.checkpoint`;
- with --fsdp, checkpoint_sharded/ (DCP, written by every rank) instead of checkpoint.pt: see
  `mvh.pretrain.fsdp`.

This module holds the job (`run_pretrain`) and its loop; the `Trainer` is in `mvh.pretrain.trainer`, the
torchrun environment in `mvh.pretrain.ranks`, checkpoint/resume in `mvh.pretrain.resume`, and the log,
loss curve and `PretrainResult` in `mvh.pretrain.train_results`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mvh.errors import UsageError
from mvh.pretrain.augment import MultiCropAugmentation
from mvh.pretrain.checkpoint import (
    BACKBONE_WEIGHTS,
    TEACHER_CHECKPOINT,
)
from mvh.pretrain.config import PretrainConfig, save_config
from mvh.pretrain.data import (
    MultiCropDataset,
    StepBatchSampler,
    build_tile_source,
    collate_multicrop,
)
from mvh.pretrain.fsdp import (
    SHARDED_DIR,
    check_fsdp_launch,
)
from mvh.pretrain.ranks import _Distributed, resolve_device
from mvh.pretrain.resume import _check_resumable, _save
from mvh.pretrain.train_results import LOG_FILE, LOSS_PNG, RESULTS, PretrainResult, _load_log, plot_losses
from mvh.pretrain.trainer import Trainer
from mvh.progress import STEPS, Event, Progress, report


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
