"""Survival figures: Kaplan-Meier curves of predicted risk groups, and MIL attention heatmaps.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state) and saved as PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_km(
    path: Path, time: np.ndarray, event: np.ndarray, groups: np.ndarray, p_value: float,
    title: str = "Kaplan-Meier",
) -> None:
    """Write Kaplan-Meier curves of the risk `groups` [N] (1 high, 0 low, -1 left out) to `path`."""
    from lifelines import KaplanMeierFitter

    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    groups = np.asarray(groups)
    fig = Figure(figsize=(5.5, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for mask, label, color in ((groups == 0, "low risk", "tab:blue"), (groups == 1, "high risk", "tab:red")):
        if mask.any():
            kmf = KaplanMeierFitter(label=f"{label} (n={int(mask.sum())})")
            kmf.fit(time[mask], event_observed=event[mask])
            kmf.plot_survival_function(ax=ax, ci_show=True, color=color, show_censors=True)
    p_text = "n/a" if np.isnan(p_value) else f"{p_value:.3g}"
    ax.set_title(f"{title}\nlog-rank p = {p_text}")
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0.0, 1.05)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def attention_canvas(
    thumb_shape: tuple[int, int],
    slide_size: tuple[int, int],
    coords: np.ndarray,
    footprint: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """Paint tile `values` [N] at level-0 `coords` [N, 2] (x, y) with level-0 `footprint` [N] into a
    thumbnail-sized float map [h, w] (NaN where no tile lies)."""
    h, w = thumb_shape
    sx, sy = w / slide_size[0], h / slide_size[1]
    canvas = np.full((h, w), np.nan, dtype=np.float64)
    x0 = np.floor(coords[:, 0] * sx).astype(int)
    y0 = np.floor(coords[:, 1] * sy).astype(int)
    x1 = np.maximum(np.ceil((coords[:, 0] + footprint) * sx).astype(int), x0 + 1)
    y1 = np.maximum(np.ceil((coords[:, 1] + footprint) * sy).astype(int), y0 + 1)
    for i in np.argsort(values, kind="stable"):
        canvas[max(y0[i], 0) : min(y1[i], h), max(x0[i], 0) : min(x1[i], w)] = values[i]
    return canvas


def plot_attention_heatmap(
    path: Path,
    thumbnail: np.ndarray,
    slide_size: tuple[int, int],
    coords: np.ndarray,
    footprint: np.ndarray,
    attention: np.ndarray,
    title: str,
) -> None:
    """Write the thumbnail [h, w, 3] with attention [N] drawn at tile positions (percentile within slide)."""
    attention = np.asarray(attention, dtype=np.float64)
    ranks = np.argsort(np.argsort(attention, kind="stable"), kind="stable")
    scaled = ranks / max(len(attention) - 1, 1)
    canvas = attention_canvas(
        thumbnail.shape[:2], slide_size, np.asarray(coords), np.asarray(footprint), scaled
    )
    fig = Figure(figsize=(11, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax_img, ax_map = fig.subplots(1, 2)
    ax_img.imshow(thumbnail)
    ax_img.set_title("slide")
    ax_map.imshow(thumbnail)
    image = ax_map.imshow(np.ma.masked_invalid(canvas), cmap="inferno", alpha=0.55, vmin=0.0, vmax=1.0)
    ax_map.set_title("attention")
    for ax in (ax_img, ax_map):
        ax.set_axis_off()
    fig.colorbar(image, ax=ax_map, fraction=0.046, pad=0.02, label="attention (percentile within slide)")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
