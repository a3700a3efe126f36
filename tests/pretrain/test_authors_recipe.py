"""The defaults are the MV_Hybrid authors' recipe: config values, parameter groups, augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from mvh.extractor.models import create_model
from mvh.pretrain import augment
from mvh.pretrain.augment import HE_MEAN, HE_STD, MultiCropAugmentation
from mvh.pretrain.config import PretrainConfig, load_config
from mvh.pretrain.network import build_network, param_groups
from mvh.progress import STEPS, Event, Recorder

# chokevin8/MVHybrid, dino/dinov2/configs/train/Train_MVHybrid.yaml
TRAIN_MVHYBRID_YAML = {
    "crops.global_crops_size": 256,
    "crops.local_crops_size": 112,
    "crops.local_crops_number": 8,
    "crops.global_crops_scale": [0.32, 1.0],
    "crops.local_crops_scale": [0.05, 0.32],
    "optim.epochs": 200,
    "optim.base_lr": 0.002,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "teacher.momentum_teacher": 0.992,
    "teacher.final_momentum_teacher": 1,
    "teacher.warmup_teacher_temp": 0.04,
    "teacher.teacher_temp": 0.06,
    "teacher.warmup_teacher_temp_epochs": 30,
    "train.batch_size_per_gpu": 64,
    "train.centering": "sinkhorn_knopp",
    "dino.head_n_prototypes": 65536,
    "dino.head_bottleneck_dim": 256,
    "ibot.head_n_prototypes": 65536,
    "compute_precision.autocast": "fp32",  # compute_precision.*.mixed_precision.param_dtype: fp32
}
# facebookresearch/dinov2, dinov2/configs/ssl_default_config.yaml (keys the authors' yaml leaves as is)
SSL_DEFAULT_CONFIG_YAML = {
    "optim.patch_embed_lr_mult": 0.2,
    "optim.warmup_epochs": 10,
    "optim.min_lr": 1e-6,
    "optim.clip_grad": 3.0,
    "optim.freeze_last_layer_epochs": 1,
    "optim.adamw_beta1": 0.9,
    "optim.adamw_beta2": 0.999,
    "optim.lr_reference_batch": 1024,  # scaling_rule: sqrt_wrt_1024
    "dino.loss_weight": 1.0,
    "dino.koleo_loss_weight": 0.1,
    "dino.head_hidden_dim": 2048,
    "dino.head_nlayers": 3,
    "ibot.loss_weight": 1.0,
    "ibot.mask_sample_probability": 0.5,
    "ibot.mask_ratio_min_max": [0.1, 0.5],
}
# chokevin8/MVHybrid, dino/dinov2/data/augmentations.py and transforms.py (GaussianBlur(p) blurs with
# probability 1 - p; the views get p = 1.0, 0.1, 0.5), no solarisation, no vertical flip
AUGMENTATIONS_PY = {
    "crops.horizontal_flip_p": 0.5,
    "crops.vertical_flip_p": 0.0,
    "crops.color_jitter": [0.2, 0.2, 0.2, 0.1],
    "crops.color_jitter_p": 0.8,
    "crops.grayscale_p": 0.2,
    "crops.global_crop_1_blur_p": 0.0,
    "crops.global_crop_2_blur_p": 0.9,
    "crops.local_crops_blur_p": 0.5,
    "crops.blur_kernel_size": 9,
    "crops.blur_sigma": [0.1, 2.0],
}
# chokevin8/MVHybrid, dino/dinov2/layers/dino_head.py: weight_norm last layer, weight_g = 1, trainable
DINO_HEAD_PY = {"dino.learn_last_layer_norm": True}


def _flat(nested: dict) -> dict:
    return {f"{section}.{key}": value for section, keys in nested.items() for key, value in keys.items()}


@pytest.mark.parametrize(
    "table", [TRAIN_MVHYBRID_YAML, SSL_DEFAULT_CONFIG_YAML, AUGMENTATIONS_PY, DINO_HEAD_PY]
)
def test_defaults_are_the_authors_values(table):
    resolved = _flat(PretrainConfig().to_dinov2_dict())
    assert {key: resolved[key] for key in table} == table


def test_config_yaml_round_trips_and_takes_dinov2_keys(tmp_path):
    cfg = load_config(None, {"optim.epochs": 3, "crops.grayscale_p": 0.0, "lr": 0.01})
    assert (cfg.epochs, cfg.grayscale_p, cfg.lr) == (3, 0.0, 0.01)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again.trajectory_dict() == {**cfg.trajectory_dict(), "ibot_prototypes": cfg.prototypes}
    nested = yaml.safe_load(path.read_text())
    assert nested["optim"]["epochs"] == 3 and nested["student"]["arch"] == "mv_hybrid"
    with pytest.raises(Exception, match="crops.grayscale_p .grayscale_p. = 1.5"):
        load_config(None, {"crops.grayscale_p": 1.5})
    with pytest.raises(Exception, match="unknown setting 'optim.epoch'"):
        load_config(None, {"optim.epoch": 3})


def _groups_by_name(network, **kwargs) -> dict[str, dict]:
    by_param = {id(p): g for g in param_groups(network, **kwargs) for p in g["params"]}
    return {n: by_param[id(p)] for n, p in network.named_parameters() if p.requires_grad}


def test_parameter_groups_follow_dinov2_param_groups():
    net = build_network(create_model("mv_hybrid_tiny"), prototypes=16, hidden_dim=16, bottleneck_dim=8)
    groups = _groups_by_name(net)
    expected = {  # name: (lr multiplier, weight-decay multiplier, last layer), read off param_groups.py
        "backbone.patch_embed.proj.weight": (0.2, 1.0, False),
        "backbone.patch_embed.proj.bias": (0.2, 0.0, False),
        "backbone.cls_token": (1.0, 1.0, False),
        "backbone.mask_token": (1.0, 1.0, False),
        "backbone.blocks.blocks.0.mixer.A_log": (1.0, 1.0, False),
        "backbone.blocks.blocks.0.mixer.D": (1.0, 1.0, False),
        "backbone.blocks.blocks.0.mixer.dt_proj.bias": (1.0, 0.0, False),
        "backbone.blocks.blocks.0.norm1.weight": (1.0, 0.0, False),
        "backbone.blocks.blocks.0.channel_mixer.complex_weight_1": (1.0, 1.0, False),
        "backbone.norm.weight": (1.0, 0.0, False),
        "dino_head.mlp.0.weight": (1.0, 1.0, False),
        "dino_head.mlp.0.bias": (1.0, 0.0, False),
        "dino_head.last_layer.weight_g": (1.0, 1.0, True),
        "dino_head.last_layer.weight_v": (1.0, 1.0, True),
        "ibot_head.last_layer.weight_g": (1.0, 1.0, True),
    }
    got = {
        n: (groups[n]["lr_multiplier"], groups[n]["wd_multiplier"], groups[n]["last_layer"]) for n in expected
    }
    assert got == expected
    exempt = _groups_by_name(net, wd_exempt_ssm=True)
    assert exempt["backbone.blocks.blocks.0.mixer.A_log"]["wd_multiplier"] == 0.0
    assert exempt["backbone.blocks.blocks.0.mixer.D"]["wd_multiplier"] == 0.0
    vit = _groups_by_name(build_network(create_model("vit_dinov2_tiny"), 16, None, 16, 8))
    assert vit["backbone.blocks.0.ls1.gamma"]["wd_multiplier"] == 0.0
    assert vit["backbone.pos_embed"]["wd_multiplier"] == 1.0


def test_step_applies_lr_multiplier_and_weight_decay(synthetic_tiles, tmp_path):
    from mvh.pretrain.data import MultiCropDataset, build_tile_source, collate_multicrop
    from mvh.pretrain.trainer import Trainer

    from .conftest import tiny_settings

    cfg = load_config(None, tiny_settings(synthetic_tiles, tmp_path / "r", epochs=2))
    trainer = Trainer(cfg, steps_per_epoch=4, device=torch.device("cpu"), world_size=1)
    aug = MultiCropAugmentation(cfg.global_size, cfg.local_size, cfg.local_crops)
    data = MultiCropDataset(build_tile_source([synthetic_tiles]), aug, seed=0)
    trainer.step(collate_multicrop([data[(0, i)] for i in range(4)]), step=5)
    values = trainer.schedules.at(5)
    for group in trainer.optimizer.param_groups:
        base = values["last_layer_lr"] if group["last_layer"] else values["lr"]
        assert group["lr"] == pytest.approx(base * group["lr_multiplier"])
        assert group["weight_decay"] == pytest.approx(values["wd"] * group["wd_multiplier"])
    assert {g["lr_multiplier"] for g in trainer.optimizer.param_groups} == {0.2, 1.0}


def _grey(view: torch.Tensor) -> bool:
    rgb = view * torch.tensor(HE_STD).view(3, 1, 1) + torch.tensor(HE_MEAN).view(3, 1, 1)
    return bool((rgb.amax(0) - rgb.amin(0)).max() < 1e-4)


def test_measured_blur_and_grayscale_rates_are_the_authors(monkeypatch):
    """Blur counted per view through a spy; grayscale read off the pixels (R = G = B)."""
    blurred: list[int] = []
    real_blur = augment.gaussian_blur
    monkeypatch.setattr(
        augment, "gaussian_blur", lambda img, *a: blurred.append(img.width) or real_blur(img, *a)
    )
    aug = MultiCropAugmentation(global_size=40, local_size=24, n_local_crops=2)
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    n, grey, views = 600, 0, 0
    for i in range(n):
        out = aug(tile, torch.Generator().manual_seed(i))
        for v in out["global_crops"] + out["local_crops"]:
            grey += _grey(v)
            views += 1
    # Global crops are 40 px: 0.0 (crop 1) + 0.9 (crop 2) blurs per tile; local crops 0.5 each.
    assert blurred.count(40) / n == pytest.approx(0.9, abs=0.04)
    assert blurred.count(24) / (2 * n) == pytest.approx(0.5, abs=0.05)
    assert grey / views == pytest.approx(0.2, abs=0.03)


def test_first_global_crop_is_never_blurred(monkeypatch):
    calls: list[str] = []
    real_view = MultiCropAugmentation.view

    def spy(self, image, size, scale, generator, blur_probability):
        calls.append(f"{size}:{blur_probability}")
        return real_view(self, image, size, scale, generator, blur_probability)

    monkeypatch.setattr(MultiCropAugmentation, "view", spy)
    MultiCropAugmentation(global_size=40, local_size=24, n_local_crops=2)(
        np.zeros((64, 64, 3), dtype=np.uint8), torch.Generator().manual_seed(0)
    )
    assert calls == ["40:0.0", "40:0.9", "24:0.5", "24:0.5"]


def test_run_reports_through_the_progress_protocol_and_writes_results(synthetic_tiles, tmp_path):
    import json

    from mvh.pretrain.train import run_pretrain
    from mvh.pretrain.train_results import RESULTS, PretrainResult

    from .conftest import tiny_settings

    recorder = Recorder()
    cfg = load_config(None, tiny_settings(synthetic_tiles, tmp_path / "p", epochs=1))
    result = run_pretrain(cfg, progress=recorder)
    assert recorder.count(Event.TOTAL, STEPS) == result.steps == 4
    assert recorder.count(Event.ADVANCE, STEPS) == 4
    statuses = [d for e, t, _, d in recorder.calls if e == Event.STATUS and t == STEPS]
    assert statuses[0] == "reading the inputs" and statuses[-1].startswith("step 4: total ")
    notes = [d for e, _, _, d in recorder.calls if e == Event.NOTE]
    assert any("1 of the recipe's 200 epochs" in n for n in notes)
    saved = json.loads((result.run_dir / RESULTS).read_text())
    assert saved == result.to_dict() and saved["notes"] == notes
    assert PretrainResult.from_dict(saved).steps == 4
    assert (saved["world_size"], saved["global_batch"], saved["parallel"]) == (1, cfg.batch_size, "single")


def test_loss_curve_has_a_title_and_a_caption(tmp_path, monkeypatch):
    import matplotlib.figure

    from mvh.pretrain.train_results import LOSS_CAPTION, plot_losses

    saved = {}
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved["title"] = fig.axes[0].get_title()
        saved["texts"] = [t.get_text() for t in fig.texts]
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    records = [{"step": i, "loss": {"total": 5.0 - i, "dino": 3.0, "koleo": -0.1}} for i in range(5)]
    path = plot_losses(records, tmp_path / "loss.png", "DINOv2 pretraining of mv_hybrid_tiny: loss per step")
    assert path.stat().st_size > 0
    assert saved["title"] == "DINOv2 pretraining of mv_hybrid_tiny: loss per step"
    assert saved["texts"] and saved["texts"][0].replace("\n", " ") == LOSS_CAPTION
    assert "demo" in LOSS_CAPTION and "fall" in LOSS_CAPTION


@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_blur_equals_torchvision_gaussian_blur(size):
    """Ours vs torchvision's GaussianBlur(9, sigma) (what the authors' transforms.py uses)."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8))
    for seed in range(6):
        sigma = augment._uniform(0.1, 2.0, torch.Generator().manual_seed(seed))
        ours = np.asarray(augment.gaussian_blur(image, torch.Generator().manual_seed(seed), 9, (0.1, 2.0)))
        ref = np.asarray(TF.gaussian_blur(image, [9, 9], [sigma, sigma]))
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding at .5 ties only
        if sigma > 0.5:  # a visible blur (sigma near 0.1 leaves the image as it is)
            assert np.abs(ours.astype(int) - np.asarray(image).astype(int)).max() > 10


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"epochs": 0}, "optim.epochs"),
        ({"grayscale_p": 1.5}, "crops.grayscale_p"),
        ({"blur_kernel_size": 8}, "crops.blur_kernel_size"),
        ({"precision": "fp8"}, "compute_precision.autocast"),
        ({"mask_ratio": (0.6, 0.2)}, "ibot.mask_ratio_min_max"),
    ],
)
def test_config_validates_on_construction(changes, key):
    from mvh.errors import UsageError

    with pytest.raises(UsageError, match=f"^pretrain config: {key} "):
        PretrainConfig(**changes)


def test_normalisation_is_bit_identical_to_torchvision():
    from PIL import Image
    from torchvision.transforms import functional as TF

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (37, 50, 3), dtype=np.uint8))
    ours = augment.to_normalized_tensor(image, HE_MEAN, HE_STD)
    ref = TF.normalize(TF.to_tensor(image), list(HE_MEAN), list(HE_STD))
    assert ours.dtype == torch.float32 and torch.equal(ours, ref)
