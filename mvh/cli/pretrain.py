"""`mvh pretrain`: DINOv2 self-supervised pretraining of MV_Hybrid (or a ViT baseline) on tiles or slides.

Settings are merged once: the authors' recipe (the defaults), then `--config FILE.yaml`, then the options
given here (`--set key=value` reaches every setting, by DINOv2-style key such as `optim.epochs` or by field
name). The merged result is saved as RUN_DIR/config.yaml; `--print-config` prints it and exits.
Multi-GPU: `torchrun --nproc-per-node N -m mvh pretrain ...` (same options; DDP, or FSDP with `--fsdp`).
The trained-vs-random evidence on a slide is `python benchmarks/pretrain_evidence.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mvh.cli._app import app, console, guarded, parse_key_values, print_json
from mvh.cli._progress import progress_reporter


@app.command("pretrain")
@guarded
def pretrain_cmd(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="Folders of tile images and/or slide files (tiled on the fly at --mpp)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run directory (checkpoints, logs, curve) [default: pretrain_run]."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Backbone to train (see `mvh models`).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--overrides", help="Architecture overrides key=value, e.g. embed_dim=64,depth=4,num_heads=2."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs (authors' recipe: 200).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Tiles per step and GPU (64).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Base lr, scaled by sqrt(batch/1024) (0.002).")
    ] = None,
    global_size: Annotated[
        int | None, typer.Option("--global-size", help="Global crop side, px (256).")
    ] = None,
    local_size: Annotated[int | None, typer.Option("--local-size", help="Local crop side, px (112).")] = None,
    local_crops: Annotated[
        int | None, typer.Option("--local-crops", help="Local crops per tile (8).")
    ] = None,
    prototypes: Annotated[
        int | None, typer.Option("--prototypes", help="DINO/iBOT prototypes (65536).")
    ] = None,
    mpp: Annotated[
        float | None, typer.Option("--mpp", help="Tile resolution for slides, um/px (0.5).")
    ] = None,
    tile_px: Annotated[
        int | None, typer.Option("--tile-px", help="Tile side for slides (--global-size).")
    ] = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option("--slide-mpp", help="Scan um/px of slides whose metadata lacks it (as `mvh extract`)."),
    ] = None,
    overlap: Annotated[
        int | None, typer.Option("--overlap", help="Overlap of slide tiles, px at --mpp.")
    ] = None,
    max_tiles: Annotated[int | None, typer.Option("--max-tiles", help="Use at most this many tiles.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="DataLoader processes (4).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:i")] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", help="fp32 (the authors') | bf16 | fp16 | auto (bf16 on GPU)."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of weights, crops and masks (0).")] = None,
    save_every: Annotated[
        int | None, typer.Option("--save-every", help="Checkpoint every N steps (500).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this step (schedules still span --epochs).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue exactly from the run's training state (same options and world size)."
        ),
    ] = False,
    fsdp: Annotated[
        bool,
        typer.Option(
            "--fsdp",
            help="Under torchrun: shard student and teacher with FSDP (as the authors) instead of DDP.",
        ),
    ] = False,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of settings.")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any setting key=value by DINOv2 key or field name, e.g. optim.patch_embed_lr_mult=0.2.",
        ),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="Print the fully resolved config (YAML, DINOv2 keys) and exit."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Pretrain a backbone with DINOv2 (DINO + iBOT + KoLeo, EMA teacher); checkpoints feed `mvh extract`."""
    given: dict[str, Any] = parse_key_values(settings, "--set")
    options = {
        "out": out,
        "model": model,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "global_size": global_size,
        "local_size": local_size,
        "local_crops": local_crops,
        "prototypes": prototypes,
        "mpp": mpp,
        "tile_px": tile_px,
        "slide_mpp": slide_mpp,
        "overlap": overlap,
        "max_tiles": max_tiles,
        "workers": workers,
        "device": device,
        "precision": precision,
        "seed": seed,
        "save_every": save_every,
        "max_steps": max_steps,
    }
    given.update({k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None})
    if inputs:
        given["inputs"] = [str(p) for p in inputs]
    if overrides:
        given["model_overrides"] = parse_key_values(overrides, "--overrides")
    if resume:
        given["resume"] = True
    if fsdp:
        given["fsdp"] = True
    from mvh.pretrain.config import load_config

    cfg = load_config(config, given)
    if print_config:
        typer.echo(cfg.to_yaml(), nl=False)
        return
    from mvh.pretrain.train import run_pretrain

    main_rank = int(os.environ.get("RANK", "0")) == 0
    with progress_reporter(enabled=not as_json and main_rank) as progress:
        result = run_pretrain(cfg, progress=progress)
    if result.rank != 0:
        return  # under torchrun only the first process reports
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"pretrain {cfg.model} -> {result.run_dir}")
    for name in ("steps", "epochs", "tiles", "first loss", "last loss", "time (s)", "img/s"):
        table.add_column(name, justify="right")
    table.add_row(
        f"{result.steps}/{result.total_steps}",
        f"{result.epochs_done:.2f}",
        str(result.n_tiles),
        "-" if result.first_loss is None else f"{result.first_loss:.3f}",
        "-" if result.last_loss is None else f"{result.last_loss:.3f}",
        f"{result.seconds:.1f}",
        f"{result.images_per_second:.1f}",
    )
    console.print(table)
    console.print(
        f"weights for `mvh extract --weights`: {result.teacher_checkpoint}", highlight=False, soft_wrap=True
    )
