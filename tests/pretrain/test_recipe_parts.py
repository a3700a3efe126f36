"""Schedules, masking, augmentation, data batching and config merging of the pretraining recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mvh.errors import DataError, UsageError
from mvh.pretrain.augment import HE_MEAN, HE_STD, MultiCropAugmentation, random_resized_crop_box
from mvh.pretrain.config import load_config
from mvh.pretrain.data import MultiCropDataset, StepBatchSampler, build_tile_source, collate_multicrop
from mvh.pretrain.masking import block_mask, sample_masks
from mvh.pretrain.schedules import build_schedules, cosine_schedule, scaled_lr


def test_cosine_schedule_warmup_and_endpoints() -> None:
    s = cosine_schedule(1.0, 0.1, total_steps=20, warmup_steps=5)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], [0.0, 0.2, 0.4, 0.6, 0.8])
    assert s[5] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1)
    mid = 5 + 7  # half way through the 15 cosine steps (t = 7/14)
    assert s[mid] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert np.all(np.diff(s[5:]) <= 0)


def test_recipe_schedules_and_short_run_scaling() -> None:
    assert scaled_lr(0.002, 1024) == pytest.approx(0.002)
    assert scaled_lr(0.002, 256) == pytest.approx(0.001)
    full = build_schedules(epochs=200, steps_per_epoch=10, peak_lr=0.002)  # the authors' 200 epochs
    assert full.lr[99] < full.lr[100] == pytest.approx(0.002)  # 10 warm-up epochs
    assert full.teacher_temp[0] == pytest.approx(0.04) and full.teacher_temp[300] == pytest.approx(0.06)
    assert full.momentum[0] == pytest.approx(0.992) and full.momentum[-1] == pytest.approx(1.0)
    assert full.weight_decay[0] == pytest.approx(0.04) and full.weight_decay[-1] == pytest.approx(0.4)
    assert np.all(full.last_layer_lr[:10] == 0) and full.last_layer_lr[10] > 0  # frozen for epoch 1
    short = build_schedules(epochs=20, steps_per_epoch=10, peak_lr=0.002)  # warm-ups shrink 10x
    assert short.lr[9] < short.lr[10] == pytest.approx(0.002)
    assert short.teacher_temp[30] == pytest.approx(0.06) and short.teacher_temp[29] < 0.06


@pytest.mark.parametrize("mode", ["block", "random"])
def test_masks_share_and_ratios(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    masks = sample_masks(40, (16, 16), gen, ratio_min=0.1, ratio_max=0.5, probability=0.5, mode=mode)
    counts = masks.sum(1)
    assert (counts > 0).sum() == 20  # half of the images masked
    ratios = counts[counts > 0].float() / 256
    assert ratios.min() >= 0.1 - 1 / 256 and ratios.max() <= 0.5
    assert ratios.max() - ratios.min() > 0.3  # the whole range is used in one batch


def test_block_mask_is_blocky_and_exact() -> None:
    mask = block_mask((16, 16), 64, torch.Generator().manual_seed(3)).view(16, 16)
    assert int(mask.sum()) == 64
    # block masks have many masked neighbours; random masks of the same density have about a quarter
    neighbours = (mask[1:] & mask[:-1]).sum() + (mask[:, 1:] & mask[:, :-1]).sum()
    assert neighbours > 64


def test_random_resized_crop_box_respects_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, h, w = random_resized_crop_box(200, 200, (0.05, 0.32), gen)
        assert 0 <= top and top + h <= 200 and 0 <= left and left + w <= 200
        assert 0.04 <= h * w / 40000 <= 0.33


def test_multicrop_views_sizes_normalisation_and_determinism() -> None:
    tile = np.full((96, 96, 3), [180, 137, 168], dtype=np.uint8)  # H&E-mean-like flat colour
    aug = MultiCropAugmentation(global_size=64, local_size=32, n_local_crops=3, jitter_probability=0.0)
    views = aug(tile, torch.Generator().manual_seed(0))
    assert [v.shape for v in views["global_crops"]] == [(3, 64, 64)] * 2
    assert [v.shape for v in views["local_crops"]] == [(3, 32, 32)] * 3
    expected = (np.array([180, 137, 168]) / 255 - np.array(HE_MEAN)) / np.array(HE_STD)
    np.testing.assert_allclose(views["global_crops"][0].mean((1, 2)).numpy(), expected, atol=1e-3)
    textured = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    full = MultiCropAugmentation(global_size=64, local_size=32, n_local_crops=2)
    a = full(textured, torch.Generator().manual_seed(5))
    b = full(textured, torch.Generator().manual_seed(5))
    c = full(textured, torch.Generator().manual_seed(6))
    assert torch.equal(a["local_crops"][1], b["local_crops"][1])
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])


def test_batches_are_keyed_by_step_and_resume_anywhere() -> None:
    full = list(StepBatchSampler(20, 4, seed=1, start=0, stop=15))  # 5 steps per epoch, 3 epochs
    assert len(full) == 15 and [b[0][0] for b in full] == [0] * 5 + [1] * 5 + [2] * 5
    for epoch in range(3):
        assert sorted(i for b in full[5 * epoch : 5 * epoch + 5] for _, i in b) == list(range(20))
    assert [i for _, i in full[0]] != [i for _, i in full[5]]  # a new permutation every epoch
    assert list(StepBatchSampler(20, 4, seed=1, start=7, stop=15)) == full[7:]  # resume mid-epoch
    assert list(StepBatchSampler(20, 4, seed=2, start=0, stop=5)) != full[:5]
    ranks = [list(StepBatchSampler(20, 2, seed=1, start=0, stop=15, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(ranks[0], ranks[1], strict=True)] == full  # ranks split each batch


def test_tile_folder_source_and_collate(tmp_path) -> None:
    for i in range(6):
        Image.fromarray(np.full((40, 40, 3), i * 40, dtype=np.uint8)).save(tmp_path / f"t{i}.png")
    source = build_tile_source([tmp_path], max_tiles=3)
    assert len(source) == 3 and source[2].shape == (40, 40, 3)
    assert [int(source[i][0, 0, 0]) for i in range(3)] == [0, 80, 200]  # evenly spread over the set
    data = MultiCropDataset(source, MultiCropAugmentation(32, 16, 2), seed=0)
    batch = collate_multicrop([data[(0, 0)], data[(0, 2)]])
    assert batch["global_crops"].shape == (4, 3, 32, 32) and batch["local_crops"].shape == (4, 3, 16, 16)
    assert torch.equal(batch["global_crops"][1], data[(0, 2)]["global_crops"][0])  # crop-major order
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        build_tile_source([empty])
    with pytest.raises(UsageError):
        build_tile_source([tmp_path / "missing"])


def test_config_merges_defaults_yaml_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "epochs: 3\nlr: 0.01\nmodel_overrides: {embed_dim: 64, depth: 4}\nglobal_scale: [0.5, 1]\n"
    )
    cfg = load_config(path, {"lr": 0.02, "model_overrides": {"depth": 2}})
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (3, 0.02, 64)
    assert cfg.model_overrides == {"embed_dim": 64, "depth": 2}
    assert cfg.global_scale == (0.5, 1.0)
    with pytest.raises(UsageError, match="unknown setting"):
        load_config(None, {"epoch": 3})
    with pytest.raises(UsageError, match="mask_ratio"):
        load_config(None, {"mask_ratio": [0.6, 0.2]})
