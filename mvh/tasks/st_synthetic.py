"""A synthetic spatial-transcriptomics cohort in the HEST layout, with a planted image -> expression signal.

Each sample is a small pyramidal TIFF (via `write_synthetic_slide`) tiled by non-overlapping spot
squares. Every spot has a latent `d` in [0, 1] that sets how strongly its square is stained; genes are
Poisson counts whose log-rate is linear in `d` (plus pure-noise genes). Each study stains with its own
colour, so a model trained on two studies meets an unseen colour in leave-one-study-out: the planted
signal is recoverable on random splits and degraded across studies. Used by tests, benchmarks and demos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

_STAIN = {
    0: np.array([92.0, 52.0, 140.0]),
    1: np.array([190.0, 40.0, 70.0]),
    2: np.array([40.0, 110.0, 90.0]),
    3: np.array([150.0, 120.0, 40.0]),
}


@dataclass(frozen=True)
class SyntheticCohort:
    """Paths of a written cohort and the planted truth (latent d per spot, gene weights)."""

    root: Path
    meta: Path
    sample_ids: list[str]
    latent: pd.DataFrame
    gene_weights: dict[str, float]


def write_synthetic_st_cohort(
    root: str | Path,
    studies: Sequence[str] = ("A", "B", "C"),
    samples_per_study: int = 2,
    grid: tuple[int, int] = (6, 4),
    spot_px: int = 224,
    mpp: float = 0.5,
    n_signal_genes: int = 8,
    n_noise_genes: int = 4,
    image: str = "wsi",
    seed: int = 0,
) -> SyntheticCohort:
    """Write `root/st/<id>.h5ad`, `root/wsis/<id>.tif` (or `root/patches/<id>.h5`) and `root/meta.csv`.

    Spot squares are `spot_px` level-0 px (a 224 px tile at 0.5 um/px when `mpp` = 0.5), laid on a
    `grid` = (columns, rows) without overlap. `image` is "wsi", "patches" or "both".
    """
    import anndata
    import scipy.sparse as sp

    from mvh.core.synthetic_slides import synthetic_he_rgb, write_synthetic_slide

    root = Path(root)
    rng = np.random.default_rng(seed)
    genes = [f"SIG{i}" for i in range(n_signal_genes)] + [f"NOISE{i}" for i in range(n_noise_genes)]
    weights = np.concatenate([np.linspace(-1.5, 1.5, n_signal_genes), np.zeros(n_noise_genes)])
    cols, rows = grid
    width, height = cols * spot_px, rows * spot_px
    meta_rows, latent_rows, ids = [], [], []
    for s_index, study in enumerate(studies):
        stain = _STAIN[s_index % len(_STAIN)]
        for j in range(samples_per_study):
            sid = f"{study}{j}"
            ids.append(sid)
            d = rng.random((rows, cols))
            texture = synthetic_he_rgb(width, height, None, seed=seed * 1000 + len(ids)).astype(np.float32)
            strength = np.kron(d, np.ones((spot_px, spot_px)))[..., None] * 0.7
            rgb = np.clip(texture * (1 - strength) + stain * strength, 0, 255).astype(np.uint8)
            cy, cx = np.mgrid[0:rows, 0:cols]
            centres = np.stack([cx.ravel() * spot_px + spot_px // 2, cy.ravel() * spot_px + spot_px // 2], 1)
            barcodes = [f"{sid}-r{r}c{c}" for r, c in zip(cy.ravel(), cx.ravel(), strict=True)]
            rate = np.exp(1.5 + np.outer(d.ravel() - 0.5, weights) * 2.0)
            counts = rng.poisson(rate)
            adata = anndata.AnnData(
                X=sp.csr_matrix(counts.astype(np.float32)),
                obs=pd.DataFrame(index=pd.Index(barcodes, name="barcode")),
                var=pd.DataFrame(index=pd.Index(genes, name="gene")),
            )
            adata.obsm["spatial"] = centres.astype(np.float64)
            (root / "st").mkdir(parents=True, exist_ok=True)
            adata.write_h5ad(root / "st" / f"{sid}.h5ad")
            if image in ("wsi", "both"):
                (root / "wsis").mkdir(parents=True, exist_ok=True)
                write_synthetic_slide(root / "wsis" / f"{sid}.tif", width, height, mpp, levels=2, image=rgb)
            if image in ("patches", "both"):
                _write_patches(root / "patches" / f"{sid}.h5", rgb, centres, barcodes, spot_px)
            meta_rows.append({"sample_id": sid, "patient": f"P{sid}", "study": study})
            latent_rows += [{"sample_id": sid, "barcode": b, "d": float(v)}
                            for b, v in zip(barcodes, d.ravel(), strict=True)]
    meta = root / "meta.csv"
    pd.DataFrame(meta_rows).to_csv(meta, index=False)
    gene_weights = dict(zip(genes, weights.tolist(), strict=True))
    return SyntheticCohort(root, meta, ids, pd.DataFrame(latent_rows), gene_weights)


def _write_patches(path: Path, rgb: np.ndarray, centres: np.ndarray, barcodes: list[str], size: int) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    top_left = centres - size // 2
    imgs = np.stack([rgb[y : y + size, x : x + size] for x, y in top_left])
    with h5py.File(path, "w") as f:
        f.create_dataset("img", data=imgs)
        f.create_dataset("coords", data=top_left.astype(np.int64))
        f.create_dataset("barcode", data=np.array([[b.encode()] for b in barcodes]))
