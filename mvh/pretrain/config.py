"""Run configuration: defaults, then a YAML file, then command-line overrides, merged once and saved.

Only the training loop reads a `PretrainConfig`; layers, losses and heads get plain keyword arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvh.errors import UsageError

CONFIG_FILENAME = "config.yaml"

# Settings that may differ between a run and its resumption without changing the trajectory.
RUNTIME_FIELDS = frozenset({"out", "resume", "max_steps", "device", "workers", "save_every", "config"})


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run (the paper's recipe by default)."""

    inputs: list[str] = field(default_factory=list)
    out: str = "pretrain_run"
    model: str = "mv_hybrid"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    mpp: float = 0.5
    tile_px: int | None = None
    min_tissue: float = 0.25
    overlap: int = 0
    max_tiles: int | None = None
    workers: int = 4
    # multi-crop augmentation
    global_size: int = 256
    local_size: int = 112
    local_crops: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1)
    # heads and losses
    prototypes: int = 65536
    ibot_prototypes: int | None = None
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    centering: str = "sinkhorn_knopp"
    student_temp: float = 0.1
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5
    mask_mode: str = "block"
    # optimisation and schedules
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.002
    lr_reference_batch: int = 1024
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum: float = 0.992
    momentum_end: float = 1.0
    teacher_temp: float = 0.06
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    freeze_last_layer_epochs: float = 1.0
    reference_epochs: int = 100
    grad_clip: float = 3.0
    # run control
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    save_every: int = 500
    max_steps: int | None = None
    resume: bool = False
    config: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def trajectory_dict(self) -> dict[str, Any]:
        """The settings that determine the training trajectory (everything but run control)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


_FIELDS = {f.name: f for f in dataclasses.fields(PretrainConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    if name not in _FIELDS:
        raise UsageError(f"{source}: unknown setting {name!r}; known: {', '.join(sorted(_FIELDS))}")
    default = getattr(PretrainConfig(), name)
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        if len(value) != len(default):
            raise UsageError(f"{source}: {name} needs {len(default)} values, got {list(value)}")
        return tuple(float(v) for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, dict) and not isinstance(value, dict):
        raise UsageError(f"{source}: {name} must be a mapping, got {value!r}")
    return value


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Defaults, then the YAML file at `path`, then `overrides` (the options given on the command line)."""
    merged: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(
                f"{path}: cannot read the config ({exc}); pass a YAML mapping of settings"
            ) from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"{path}: the config must be a YAML mapping of settings")
        merged.update({k: _coerce(k, v, str(path)) for k, v in loaded.items()})
    for key, value in (overrides or {}).items():
        if key == "model_overrides" and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}
        merged[key] = _coerce(key, value, "command line")
    if path is not None:
        merged["config"] = str(path)
    config = PretrainConfig(**merged)
    validate_config(config)
    return config


def validate_config(config: PretrainConfig) -> None:
    """Reject settings that cannot run, with the option to fix."""
    checks = [
        (config.epochs >= 1, "epochs must be >= 1"),
        (config.batch_size >= 1, "batch_size must be >= 1"),
        (config.local_crops >= 0, "local_crops must be >= 0"),
        (config.prototypes >= 2, "prototypes must be >= 2"),
        (
            config.centering in ("sinkhorn_knopp", "softmax_center"),
            "centering: sinkhorn_knopp or softmax_center",
        ),
        (config.mask_mode in ("block", "random"), "mask_mode: block or random"),
        (0.0 <= config.mask_probability <= 1.0, "mask_probability must be in [0, 1]"),
        (0.0 <= config.mask_ratio[0] <= config.mask_ratio[1] < 1.0, "mask_ratio must be 0 <= min <= max < 1"),
        (config.precision in ("auto", "fp32", "bf16", "fp16"), "precision: auto, fp32, bf16 or fp16"),
        (config.save_every >= 1, "save_every must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(f"pretrain config: {message}")


def save_config(config: PretrainConfig, run_dir: Path) -> Path:
    """Write the merged config as run_dir/config.yaml."""
    path = Path(run_dir) / CONFIG_FILENAME
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
