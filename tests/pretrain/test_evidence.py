"""The trained-vs-random proxy evaluation: metrics on planted signals, and the run-directory wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from mvh.errors import UsageError
from mvh.extractor.models import create_model
from mvh.pretrain.evidence import (
    evidence_for_run,
    knn_accuracy,
    linear_probe_accuracy,
    region_labels,
    view_retrieval_top1,
)

from .conftest import TINY_ARCH


def test_region_labels_are_balanced_quadrants() -> None:
    x, y = np.meshgrid(np.arange(6), np.arange(4))
    labels = region_labels(x.ravel(), y.ravel())
    assert np.bincount(labels).tolist() == [6, 6, 6, 6]
    assert labels[0] == 0 and labels[5] == 1 and labels[18] == 2 and labels[23] == 3


def test_probes_find_a_planted_signal_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    noise = rng.normal(size=(120, 16))
    signal = noise + 3.0 * np.eye(16)[labels]
    assert knn_accuracy(signal, labels) > 0.9 and linear_probe_accuracy(signal, labels) > 0.9
    assert knn_accuracy(noise, labels) < 0.5 and linear_probe_accuracy(noise, labels) < 0.5


def test_view_retrieval_top1() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 8))
    assert view_retrieval_top1(a, a + 0.01 * rng.normal(size=a.shape)) == 1.0
    assert view_retrieval_top1(a, rng.normal(size=a.shape)) < 0.2


def test_evidence_of_untrained_weights_equals_random_init(tmp_path) -> None:
    from mvh.core.synthetic_slides import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "s.tiff", 512, 384, mpp=0.5, tissue_rects=[(0, 0, 512, 384)])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": "mv_hybrid_tiny", "model_overrides": TINY_ARCH, "seed": 3})
    )
    torch.manual_seed(3)
    init = create_model("mv_hybrid_tiny", **TINY_ARCH).state_dict()
    torch.save({"teacher": {f"backbone.{k}": v for k, v in init.items()}}, run / "teacher_checkpoint.pth")
    evidence = evidence_for_run(run, slide, tile_px=64)
    assert evidence.n_tiles == 48
    assert evidence.trained == evidence.random_init  # the same weights: the comparison is fair
    assert evidence.chance["view_top1"] == pytest.approx(1 / 48)
    with pytest.raises(UsageError, match="not a finished"):
        evidence_for_run(tmp_path, slide)
