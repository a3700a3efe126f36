"""Run configuration: defaults, then a YAML file, then command-line overrides, merged once and saved.

The defaults are the MV_Hybrid authors' recipe (chokevin8/MVHybrid `Train_MVHybrid.yaml` over DINOv2's
`ssl_default_config.yaml`, augmentations of their `augmentations.py`). Every setting has a field name
(what the code reads) and a DINOv2-style dotted key (`crops.global_crops_size`, `optim.epochs`, ...):
the saved config.yaml and `mvh pretrain --print-config` use the dotted keys, so a run's recipe diffs
against the authors' yaml; a YAML file or `--set` may use either. Only the training loop reads a
`PretrainConfig`; layers, losses and heads get plain keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvh.errors import UsageError

CONFIG_FILENAME = "config.yaml"

# Settings that may differ between a run and its resumption without changing the trajectory.
# FSDP is the same mathematics as DDP (tested); its checkpoint layout differs, which resume checks itself.
RUNTIME_FIELDS = frozenset(
    {"out", "resume", "max_steps", "device", "workers", "save_every", "config", "fsdp"}
)


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run (the authors' recipe by default); validated on construction."""

    inputs: list[str] = field(default_factory=list)
    out: str = "pretrain_run"
    model: str = "mv_hybrid"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    mpp: float = 0.5
    slide_mpp: float | None = None
    tile_px: int | None = None
    min_tissue: float = 0.25
    overlap: int = 0
    max_tiles: int | None = None
    workers: int = 4
    # multi-crop augmentation (authors' augmentations.py)
    global_size: int = 256
    local_size: int = 112
    local_crops: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    horizontal_flip_p: float = 0.5
    vertical_flip_p: float = 0.0
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    # DINOv2's GaussianBlur(p) blurs with probability 1 - p; the authors pass p = 1.0, 0.1, 0.5.
    blur_p_global_1: float = 0.0
    blur_p_global_2: float = 0.9
    blur_p_local: float = 0.5
    blur_kernel_size: int = 9
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # heads and losses
    prototypes: int = 65536
    ibot_prototypes: int | None = None
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    learn_last_layer_norm: bool = True
    centering: str = "sinkhorn_knopp"
    student_temp: float = 0.1
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5
    mask_mode: str = "block"
    # optimisation and schedules
    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.002
    lr_reference_batch: int = 1024
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    wd_exempt_ssm: bool = False
    patch_embed_lr_mult: float = 0.2
    adamw_beta1: float = 0.9
    adamw_beta2: float = 0.999
    momentum: float = 0.992
    momentum_end: float = 1.0
    teacher_temp: float = 0.06
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    freeze_last_layer_epochs: float = 1.0
    reference_epochs: int = 200
    grad_clip: float = 3.0
    # run control
    device: str = "auto"
    fsdp: bool = False
    precision: str = "fp32"
    seed: int = 0
    save_every: int = 500
    max_steps: int | None = None
    resume: bool = False
    config: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, tuple) and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(float(v) for v in value))
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict of field names (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def trajectory_dict(self) -> dict[str, Any]:
        """The settings that determine the training trajectory (everything but run control)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def to_dinov2_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved settings nested under DINOv2's section names (what config.yaml holds)."""
        flat = self.to_dict()
        flat["ibot_prototypes"] = self.ibot_prototypes or self.prototypes
        nested: dict[str, dict[str, Any]] = {}
        for name, key in DINOV2_KEYS.items():
            section, leaf = key.split(".", 1)
            nested.setdefault(section, {})[leaf] = flat[name]
        return nested

    def to_yaml(self) -> str:
        """config.yaml text: DINOv2-style sections and keys."""
        return yaml.safe_dump(self.to_dinov2_dict(), sort_keys=False)


# Field name -> DINOv2-style key. Keys that exist in DINOv2/the authors' yaml keep their names; the
# others (data.*, crop probabilities, mvh's run control) follow the same `section.key` form.
DINOV2_KEYS: dict[str, str] = {
    "model": "student.arch",
    "model_overrides": "student.overrides",
    "inputs": "data.inputs",
    "mpp": "data.mpp",
    "slide_mpp": "data.slide_mpp",
    "tile_px": "data.tile_px",
    "min_tissue": "data.min_tissue",
    "overlap": "data.overlap",
    "max_tiles": "data.max_tiles",
    "global_size": "crops.global_crops_size",
    "local_size": "crops.local_crops_size",
    "local_crops": "crops.local_crops_number",
    "global_scale": "crops.global_crops_scale",
    "local_scale": "crops.local_crops_scale",
    "horizontal_flip_p": "crops.horizontal_flip_p",
    "vertical_flip_p": "crops.vertical_flip_p",
    "color_jitter": "crops.color_jitter",
    "color_jitter_p": "crops.color_jitter_p",
    "grayscale_p": "crops.grayscale_p",
    "blur_p_global_1": "crops.global_crop_1_blur_p",
    "blur_p_global_2": "crops.global_crop_2_blur_p",
    "blur_p_local": "crops.local_crops_blur_p",
    "blur_kernel_size": "crops.blur_kernel_size",
    "blur_sigma": "crops.blur_sigma",
    "dino_weight": "dino.loss_weight",
    "koleo_weight": "dino.koleo_loss_weight",
    "prototypes": "dino.head_n_prototypes",
    "head_hidden_dim": "dino.head_hidden_dim",
    "head_bottleneck_dim": "dino.head_bottleneck_dim",
    "head_layers": "dino.head_nlayers",
    "learn_last_layer_norm": "dino.learn_last_layer_norm",
    "student_temp": "dino.student_temp",
    "ibot_weight": "ibot.loss_weight",
    "ibot_prototypes": "ibot.head_n_prototypes",
    "mask_ratio": "ibot.mask_ratio_min_max",
    "mask_probability": "ibot.mask_sample_probability",
    "mask_mode": "ibot.mask_mode",
    "momentum": "teacher.momentum_teacher",
    "momentum_end": "teacher.final_momentum_teacher",
    "teacher_temp": "teacher.teacher_temp",
    "warmup_teacher_temp": "teacher.warmup_teacher_temp",
    "warmup_teacher_temp_epochs": "teacher.warmup_teacher_temp_epochs",
    "epochs": "optim.epochs",
    "lr": "optim.base_lr",
    "lr_reference_batch": "optim.lr_reference_batch",
    "min_lr": "optim.min_lr",
    "warmup_epochs": "optim.warmup_epochs",
    "weight_decay": "optim.weight_decay",
    "weight_decay_end": "optim.weight_decay_end",
    "wd_exempt_ssm": "optim.wd_exempt_ssm",
    "patch_embed_lr_mult": "optim.patch_embed_lr_mult",
    "adamw_beta1": "optim.adamw_beta1",
    "adamw_beta2": "optim.adamw_beta2",
    "freeze_last_layer_epochs": "optim.freeze_last_layer_epochs",
    "reference_epochs": "optim.schedule_reference_epochs",
    "grad_clip": "optim.clip_grad",
    "precision": "compute_precision.autocast",
    "batch_size": "train.batch_size_per_gpu",
    "centering": "train.centering",
    "workers": "train.num_workers",
    "seed": "train.seed",
    "out": "train.output_dir",
    "save_every": "train.save_every_steps",
    "max_steps": "train.max_steps",
    "device": "train.device",
    "fsdp": "train.fsdp",
    "resume": "train.resume",
    "config": "train.config_file",
}
FIELD_OF_KEY = {key: name for name, key in DINOV2_KEYS.items()}
_FIELDS = {f.name: f for f in dataclasses.fields(PretrainConfig)}
_DEFAULTS = {name: f.default for name, f in _FIELDS.items() if f.default is not dataclasses.MISSING}


def _field_name(key: str, source: str) -> str:
    if key in _FIELDS:
        return key
    if key in FIELD_OF_KEY:
        return FIELD_OF_KEY[key]
    raise UsageError(
        f"{source}: unknown setting {key!r}; known: {', '.join(sorted(FIELD_OF_KEY))} "
        "(see `mvh pretrain --print-config`)"
    )


def _coerce(name: str, value: Any, source: str) -> Any:
    default = _DEFAULTS.get(name)
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        if len(value) != len(default):
            raise UsageError(f"{source}: {DINOV2_KEYS[name]} needs {len(default)} values, got {list(value)}")
        return tuple(float(v) for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if name == "model_overrides" and not isinstance(value, dict):
        raise UsageError(f"{source}: student.overrides must be a mapping, got {value!r}")
    return value


def _flatten(mapping: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Nested DINOv2 sections -> {dotted key or field name: value} (student.overrides stays a mapping)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in FIELD_OF_KEY and dotted not in _FIELDS:
            out.update(_flatten(value, source, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Defaults, then the YAML file at `path`, then `overrides` (field names or DINOv2 dotted keys)."""
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
        for key, value in _flatten(loaded, str(path)).items():
            name = _field_name(key, str(path))
            merged[name] = _coerce(name, value, str(path))
    for key, value in (overrides or {}).items():
        name = _field_name(key, "command line")
        if name == "model_overrides" and isinstance(merged.get(name), dict) and isinstance(value, dict):
            value = {**merged[name], **value}
        merged[name] = _coerce(name, value, "command line")
    if path is not None:
        merged["config"] = str(path)
    try:
        return PretrainConfig(**merged)
    except TypeError as exc:
        raise UsageError(f"pretrain config: {exc}") from exc


def _positive_number(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


def _probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def validate_config(config: PretrainConfig) -> None:
    """Reject settings that cannot run, naming the DINOv2 key (and its field name) to fix."""
    c = config
    checks = [
        ("epochs", isinstance(c.epochs, int) and c.epochs >= 1, "must be an integer >= 1"),
        ("batch_size", isinstance(c.batch_size, int) and c.batch_size >= 1, "must be an integer >= 1"),
        ("local_crops", isinstance(c.local_crops, int) and c.local_crops >= 0, "must be an integer >= 0"),
        ("prototypes", isinstance(c.prototypes, int) and c.prototypes >= 2, "must be an integer >= 2"),
        ("centering", c.centering in ("sinkhorn_knopp", "softmax_center"), "sinkhorn_knopp|softmax_center"),
        ("mask_mode", c.mask_mode in ("block", "random"), "block or random"),
        ("mask_probability", _probability(c.mask_probability), "must be in [0, 1]"),
        ("mask_ratio", 0.0 <= c.mask_ratio[0] <= c.mask_ratio[1] < 1.0, "must be 0 <= min <= max < 1"),
        ("precision", c.precision in ("auto", "fp32", "bf16", "fp16"), "auto, fp32, bf16 or fp16"),
        ("save_every", isinstance(c.save_every, int) and c.save_every >= 1, "must be an integer >= 1"),
        ("fsdp", isinstance(c.fsdp, bool), "must be true or false"),
        ("blur_kernel_size", c.blur_kernel_size >= 1 and c.blur_kernel_size % 2 == 1, "must be odd and >= 1"),
        ("blur_sigma", 0.0 < c.blur_sigma[0] <= c.blur_sigma[1], "must be 0 < min <= max"),
        ("patch_embed_lr_mult", c.patch_embed_lr_mult >= 0, "must be >= 0"),
        ("lr", isinstance(c.lr, float) and math.isfinite(c.lr) and c.lr > 0, "must be a number > 0"),
        ("slide_mpp", c.slide_mpp is None or _positive_number(c.slide_mpp), "must be a number > 0"),
    ]
    checks += [
        (name, _probability(getattr(c, name)), "must be a probability in [0, 1]")
        for name in (
            "horizontal_flip_p",
            "vertical_flip_p",
            "color_jitter_p",
            "grayscale_p",
            "blur_p_global_1",
            "blur_p_global_2",
            "blur_p_local",
        )
    ]
    for name, ok, message in checks:
        if not ok:
            raise UsageError(
                f"pretrain config: {DINOV2_KEYS[name]} ({name}) = {getattr(c, name)!r}: {message}"
            )


def save_config(config: PretrainConfig, run_dir: Path) -> Path:
    """Write the merged config as run_dir/config.yaml (DINOv2-style keys)."""
    path = Path(run_dir) / CONFIG_FILENAME
    path.write_text(config.to_yaml())
    return path
