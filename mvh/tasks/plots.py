"""Figures of the task results (matplotlib, Agg backend, PNG files): what a reader looks at first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_gene_pcc(gene_pcc: dict[str, dict[str, float]], path: Path, title: str = "", top: int = 50) -> Path:
    """Bar chart of per-gene PCC, one bar group per model (genes sorted by the first model's r)."""
    plt = _pyplot()
    models = list(gene_pcc)
    first = gene_pcc[models[0]]
    genes = sorted(first, key=lambda g: -np.nan_to_num(first[g], nan=-2.0))[:top]
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(genes) * max(1, len(models)) + 2), 4))
    x = np.arange(len(genes))
    for i, m in enumerate(models):
        vals = [gene_pcc[m].get(g, np.nan) for g in genes]
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(vals, nan=0.0), width, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(genes, rotation=90, fontsize=7)
    ax.set_ylabel("Pearson r (test spots)")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_title(title or "Per-gene PCC")
    if len(models) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_spatial_expression(
    xy: np.ndarray,
    measured: np.ndarray,
    predicted: np.ndarray,
    genes: Sequence[str],
    gene_pcc: np.ndarray,
    path: Path,
    thumbnail: np.ndarray | None = None,
    thumb_scale: float = 1.0,
    n_genes: int = 3,
    title: str = "",
) -> Path:
    """Measured (top row) vs predicted (bottom row) expression of the best genes at the spot positions.

    `xy` [N, 2] are level-0 spot centres; `thumbnail` (uint8 [h, w, 3]) is drawn under them, level-0
    coordinates times `thumb_scale` giving thumbnail pixels.
    """
    plt = _pyplot()
    order = np.argsort(-np.nan_to_num(np.asarray(gene_pcc, dtype=float), nan=-2.0))[:n_genes]
    fig, axes = plt.subplots(2, max(len(order), 1), figsize=(3.2 * max(len(order), 1), 6.4), squeeze=False)
    pts = np.asarray(xy, dtype=float) * thumb_scale
    for j, g in enumerate(order):
        for i, (vals, label) in enumerate(((measured[:, g], "measured"), (predicted[:, g], "predicted"))):
            ax = axes[i, j]
            if thumbnail is not None:
                ax.imshow(thumbnail, interpolation="nearest")
            # Own colour scale per panel: the spatial pattern is the point (HEST's ridge has no intercept).
            sc = ax.scatter(pts[:, 0], pts[:, 1], c=vals, s=12, cmap="viridis", alpha=0.85)
            if thumbnail is None:
                ax.invert_yaxis()
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{genes[g]} {label}" + (f" (r={gene_pcc[g]:.2f})" if i else ""), fontsize=8)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Confusion matrix", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
