"""Does pretraining learn? Proxy tasks on a slide's tiles, pretrained backbone vs the same one at random init.

Two label-free proxies, scored on the inference embedding (what `mvh extract` stores):
- region: which of 4 slide regions (quadrants split at the median tile x and y) a tile comes from,
  by cross-validated kNN (cosine) and by a linear probe (logistic regression);
- views: two augmented views of every tile (random crops of 32-100% area, flips, colour jitter);
  top-1 retrieval accuracy of the other view of the same tile among all tiles' views.
The random-init model is built exactly as the training run built its starting weights (same seed), so
the comparison isolates what training changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mvh.core.vectors import l2_normalise
from mvh.errors import UsageError
from mvh.pretrain.augment import MultiCropAugmentation
from mvh.pretrain.data import keyed_generator


@dataclass
class ProxyScores:
    """Accuracies of one backbone on the proxy tasks."""

    region_knn: float
    region_linear: float
    view_top1: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class Evidence:
    """Trained vs random-init scores, with the chance levels and the data they were measured on."""

    trained: ProxyScores
    random_init: ProxyScores
    chance: dict[str, float]
    n_tiles: int
    setup: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "trained": self.trained.to_dict(),
            "random_init": self.random_init.to_dict(),
            "chance": self.chance,
            "n_tiles": self.n_tiles,
            "setup": self.setup,
        }


def region_labels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Quadrant 0..3 of each tile, split at the median x and y (balanced regions): int64 [N]."""
    return (x > np.median(x)).astype(np.int64) + 2 * (y > np.median(y)).astype(np.int64)


def knn_accuracy(
    embeddings: np.ndarray, labels: np.ndarray, k: int = 10, folds: int = 5, seed: int = 0
) -> float:
    """Stratified k-fold accuracy of a cosine kNN classifier on embeddings [N, D]."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine")
    return float(cross_val_score(knn, embeddings, labels, cv=splits).mean())


def linear_probe_accuracy(embeddings: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Stratified k-fold accuracy of a standardised logistic-regression probe on embeddings [N, D]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return float(cross_val_score(probe, embeddings, labels, cv=splits).mean())


def view_retrieval_top1(view_a: np.ndarray, view_b: np.ndarray) -> float:
    """Share of rows i of view_a [N, D] whose cosine-nearest row of view_b [N, D] is row i."""
    similarity = l2_normalise(view_a) @ l2_normalise(view_b).T
    return float((similarity.argmax(axis=1) == np.arange(len(view_a))).mean())


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Inference embeddings float32 [N, output_dim] of normalised images [N, 3, H, W]."""
    model.eval()
    parts = [model(images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(parts).numpy()


def score_backbone(
    model: nn.Module,
    tiles: torch.Tensor,
    views: tuple[torch.Tensor, torch.Tensor],
    labels: np.ndarray,
    seed: int = 0,
) -> ProxyScores:
    """Proxy scores of one backbone: tiles [N, 3, H, W] and two view batches, all normalised."""
    emb = embed(model, tiles)
    return ProxyScores(
        region_knn=knn_accuracy(emb, labels, seed=seed),
        region_linear=linear_probe_accuracy(emb, labels, seed=seed),
        view_top1=view_retrieval_top1(embed(model, views[0]), embed(model, views[1])),
    )


def _read_tiles(
    slide: Path, mpp: float, tile_px: int, min_tissue: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from mvh.extractor.slide import open_slide
    from mvh.extractor.tiling import make_tile_grid, read_tile

    with open_slide(slide) as handle:
        grid = make_tile_grid(handle, mpp=mpp, tile_px=tile_px, min_tissue=min_tissue)
        tiles = np.stack([read_tile(handle, grid, i) for i in range(len(grid.x))])
    return tiles, np.asarray(grid.x), np.asarray(grid.y)


def pretraining_evidence(
    slide: Path,
    weights: Path,
    model_name: str,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    mpp: float = 0.5,
    tile_px: int = 128,
    min_tissue: float = 0.25,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Evidence:
    """Proxy-task scores of `weights` vs the random init of the same seed, on non-overlapping slide tiles."""
    from mvh.extractor.models import create_model, get_model_info, load_weights

    info = get_model_info(model_name)
    mean = tuple(mean or info.mean)
    std = tuple(std or info.std)
    tiles, x, y = _read_tiles(Path(slide), mpp, tile_px, min_tissue)
    labels = region_labels(x, y)
    augment = MultiCropAugmentation(tile_px, tile_px, 0, global_scale=(0.32, 1.0), mean=mean, std=std)
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    originals = (torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255 - m) / sd
    pairs = [augment(t, keyed_generator(seed, 11, i))["global_crops"] for i, t in enumerate(tiles)]
    views = (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))

    torch.manual_seed(seed)  # the training run's seed: the very weights training started from
    random_model = create_model(model_name, **(overrides or {}))
    trained_model = create_model(model_name, **(overrides or {}))
    load_weights(trained_model, weights)
    return Evidence(
        trained=score_backbone(trained_model, originals, views, labels, seed),
        random_init=score_backbone(random_model, originals, views, labels, seed),
        chance={"region": float(np.bincount(labels).max() / len(labels)), "view_top1": 1.0 / len(tiles)},
        n_tiles=len(tiles),
        setup={
            "slide": str(slide),
            "weights": str(weights),
            "model": model_name,
            "overrides": overrides or {},
            "seed": seed,
            "mpp": mpp,
            "tile_px": tile_px,
        },  # fmt: skip
    )


def evidence_for_run(run_dir: Path, slide: Path, mpp: float = 0.5, tile_px: int = 128) -> Evidence:
    """`pretraining_evidence` for a `mvh pretrain` run directory (its model, overrides, seed, teacher)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    weights = run_dir / "teacher_checkpoint.pth"
    if not config_path.exists() or not weights.exists():
        raise UsageError(
            f"{run_dir}: not a finished `mvh pretrain` run (config.yaml, teacher_checkpoint.pth)"
        )
    from mvh.pretrain.config import load_config

    config = load_config(config_path)
    return pretraining_evidence(
        slide, weights, config.model, config.model_overrides, config.seed, mpp, tile_px
    )
