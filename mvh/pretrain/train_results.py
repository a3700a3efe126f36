"""What a pretraining run leaves for people: the file names of its run directory, the per-step log
(log.jsonl) read back on resume, the loss curve PNG and the `PretrainResult` (results.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvh.jobs import JobResult

LOG_FILE = "log.jsonl"
LOSS_PNG = "loss_curve.png"
RESULTS = "results.json"


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


def _load_log(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] < up_to_step]
