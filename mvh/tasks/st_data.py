"""Spatial-transcriptomics samples in the HEST-1k layout, and their spot embeddings in a store.

Accepted layout (each input is a directory or an `.h5ad` file; a sample's id is its `.h5ad` stem):

    COHORT/                       a HEST-1k download, or a flat folder
      st/<id>.h5ad                expression: spots x genes, RAW counts (X dense or sparse), obs_names =
                                  spot barcodes; spot CENTRES in level-0 (full-resolution) pixels in
                                  obsm["spatial"] as (x, y), or else obs columns pxl_col_in_fullres (x) and
                                  pxl_row_in_fullres (y); an obs column in_tissue, if present, keeps the
                                  spots where it is 1
      wsis/<id>.<tif|tiff|svs|ndpi|mrxs|scn|bif|...>   the whole-slide image, or
      patches/<id>.h5             spot patches: img [N, H, W, 3] uint8, barcode [N] or [N, 1] (bytes or
                                  str), coords [N, 2] level-0 TOP-LEFT (x, y); HEST writes 224 px at
                                  0.5 um/px centred on the spots
      metadata/<id>.json          optional: pixel_size_um_estimated (else pixel_size_um_embedded) =
                                  level-0 um/px of the WSI; HEST's estimate, preferred over the TIFF tags

    The flat form puts <id>.h5ad, <id>.<wsi suffix> and <id>.h5 side by side in one folder. With both a
    WSI and a patches file, the WSI is used (the spot tiles are then cut by mvh at the store's geometry).

The metadata CSV (`--meta`) has one row per sample: `sample_id` (or `id`), `patient`, `study` (or
`source` / `dataset_title`), and optionally `mpp` (level-0 um/px, overrides everything else). Without it
each sample is its own patient and all samples share study "unknown" (LOSO then refuses to run).

Embeddings: each sample is one slide of the store (slide_id = sample id) and each spot one tile
(tile_id = spot barcode), a `tile_px` tile at the store's um/px (224 px at 0.5 um/px = 112 um) centred on
the spot; samples already `done` in the store are not embedded again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mvh.errors import DataError, UsageError
from mvh.index.store import EmbeddingStore

log = logging.getLogger(__name__)

WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class STSample:
    """One ST sample: its expression file, image source, patient, study and optional level-0 um/px."""

    sample_id: str
    h5ad: Path
    wsi: Path | None
    patches: Path | None
    patient: str
    study: str
    mpp: float | None = None


@dataclass
class STExpression:
    """Spots of all samples, stacked: `spots` rows align with `counts` rows [N, G] (raw counts, CSR)."""

    spots: pd.DataFrame
    counts: sp.csr_matrix
    genes: list[str]

    def subset(self, rows: np.ndarray) -> STExpression:
        """The spots at `rows` (renumbered)."""
        return STExpression(self.spots.iloc[rows].reset_index(drop=True), self.counts[rows], self.genes)


def _find_companion(h5ad: Path, folder: str, suffixes: Sequence[str]) -> Path | None:
    stem = h5ad.stem
    for base in (h5ad.parent, h5ad.parent.parent / folder):
        for suffix in suffixes:
            for candidate in (base / f"{stem}{suffix}", base / f"{stem}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _metadata_mpp(h5ad: Path) -> float | None:
    path = h5ad.parent.parent / "metadata" / f"{h5ad.stem}.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    for key in ("pixel_size_um_estimated", "pixel_size_um_embedded"):
        if meta.get(key):
            return float(meta[key])
    return None


def read_meta_csv(path: Path) -> pd.DataFrame:
    """The samples table indexed by sample_id with columns patient, study, mpp (NaN when absent)."""
    if not path.is_file():
        raise DataError(f"{path}: metadata CSV not found; pass --meta with sample_id, patient, study columns")
    df = pd.read_csv(path, dtype=str)
    renames = {"id": "sample_id", "source": "study", "dataset_title": "study"}
    for old, new in renames.items():
        if old in df.columns and new not in df.columns:
            df = df.rename(columns={old: new})
    missing = [c for c in ("sample_id", "patient", "study") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; it needs sample_id (or id), patient, study")
    if df["sample_id"].duplicated().any():
        dup = df.loc[df["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DataError(f"{path}: sample_id {dup!r} appears twice; keep one row per sample")
    df["mpp"] = pd.to_numeric(df["mpp"], errors="raise") if "mpp" in df.columns else np.nan
    return df.set_index("sample_id")[["patient", "study", "mpp"]]


def _h5ad_files(inputs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_file() and item.suffix == ".h5ad":
            files.append(item)
        elif item.is_dir():
            folder = item / "st" if (item / "st").is_dir() else item
            found = sorted(folder.glob("*.h5ad"))
            if not found:
                raise DataError(f"{item}: no .h5ad file in it or in st/; see the README's ST layout")
            files.extend(found)
        else:
            raise DataError(f"{item}: not a directory or an .h5ad file; pass the cohort folder")
    return files


def find_samples(inputs: Sequence[Path], meta: Path | None = None) -> list[STSample]:
    """The samples of a HEST-style cohort (see the module docstring), sorted by id."""
    table = read_meta_csv(meta) if meta is not None else None
    samples: dict[str, STSample] = {}
    for h5ad in _h5ad_files(inputs):
        sid = h5ad.stem
        if sid in samples:
            raise DataError(f"{h5ad}: sample id {sid!r} given twice; sample ids (file stems) must be unique")
        wsi = _find_companion(h5ad, "wsis", WSI_SUFFIXES)
        patches = _find_companion(h5ad, "patches", (".h5",))
        if wsi is None and patches is None:
            raise DataError(f"{h5ad}: no WSI and no patches .h5 found for sample {sid}; see the ST layout")
        patient, study, mpp = sid, "unknown", None
        if table is not None:
            if sid not in table.index:
                raise DataError(f"{meta}: no row for sample {sid!r}; add it (sample_id, patient, study)")
            row = table.loc[sid]
            patient, study = str(row["patient"]), str(row["study"])
            mpp = None if pd.isna(row["mpp"]) else float(row["mpp"])
        if mpp is None:
            mpp = _metadata_mpp(h5ad)
        samples[sid] = STSample(sid, h5ad, wsi, patches, patient, study, mpp)
    if not samples:
        raise DataError("no ST samples found; pass the cohort folder or .h5ad files")
    return [samples[k] for k in sorted(samples)]


def read_sample(sample: STSample) -> tuple[pd.DataFrame, sp.csr_matrix, list[str]]:
    """One sample's spots (barcode, x, y centres in level-0 px), raw counts [n, G] (CSR) and gene names."""
    import anndata

    adata = anndata.read_h5ad(sample.h5ad)
    if "in_tissue" in adata.obs.columns:
        adata = adata[adata.obs["in_tissue"].astype(int).to_numpy() == 1]
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs.columns):
        xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    else:
        raise DataError(f"{sample.h5ad}: no spot coordinates; set obsm['spatial'] or obs pxl_*_in_fullres")
    barcodes = adata.obs_names.astype(str)
    if barcodes.duplicated().any():
        raise DataError(f"{sample.h5ad}: duplicate spot barcodes (obs_names); make them unique")
    genes = adata.var_names.astype(str)
    keep = ~genes.duplicated()
    counts = sp.csr_matrix(adata.X[:, np.flatnonzero(keep)] if not keep.all() else adata.X, dtype=np.float32)
    spots = pd.DataFrame({"barcode": barcodes.to_numpy(), "x": xy[:, 0], "y": xy[:, 1]})
    return spots, counts, genes[keep].tolist()


def load_expression(samples: Sequence[STSample]) -> STExpression:
    """Stack all samples' spots over the genes they all share (in the first sample's gene order)."""
    parts = [(s, *read_sample(s)) for s in samples]
    shared = set(parts[0][3])
    for _, _, _, genes in parts[1:]:
        shared &= set(genes)
    genes = [g for g in parts[0][3] if g in shared]
    if not genes:
        raise DataError("the samples share no gene names; check the .h5ad var_names")
    frames, blocks = [], []
    for sample, spots, counts, sample_genes in parts:
        index = {g: i for i, g in enumerate(sample_genes)}
        blocks.append(counts[:, [index[g] for g in genes]])
        frames.append(spots.assign(sample_id=sample.sample_id, patient=sample.patient, study=sample.study))
    spots = pd.concat(frames, ignore_index=True)[["sample_id", "patient", "study", "barcode", "x", "y"]]
    return STExpression(spots, sp.vstack(blocks, format="csr"), genes)


def _read_patches(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        missing = [k for k in ("img", "barcode", "coords") if k not in f]
        if missing:
            raise DataError(f"{path}: patches file lacks datasets {missing}; it needs img, barcode, coords")
        raw = np.asarray(f["barcode"]).reshape(-1)
        coords = np.asarray(f["coords"], dtype=np.int64).reshape(-1, 2)
    barcodes = np.array([b.decode() if isinstance(b, bytes) else str(b) for b in raw], dtype=object)
    return barcodes, coords


def _embed_patches(sample: STSample, embedder, store: EmbeddingStore, batch_size: int) -> None:
    import h5py

    fp = store.fingerprint
    barcodes, coords = _read_patches(sample.patches)
    started = time.perf_counter()
    with h5py.File(sample.patches, "r") as f:
        images = f["img"]
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != fp.tile_px:
            raise DataError(
                f"{sample.patches}: img has shape {images.shape}; the store holds {fp.tile_px} px RGB tiles "
                f"at {fp.mpp} um/px (use a store of that geometry or the WSI)"
            )
        emb = np.concatenate(
            [embedder.embed_images(np.asarray(images[i : i + batch_size]), batch_size)
             for i in range(0, len(images), batch_size)]
        ) if len(images) else np.zeros((0, fp.embed_dim), np.float32)
    tiles = pd.DataFrame({"tile_id": barcodes, "x": coords[:, 0], "y": coords[:, 1],
                          "tile_px": fp.tile_px, "mpp": fp.mpp, "tissue_fraction": np.nan})
    record = {"slide_id": sample.sample_id, "path": str(sample.patches), "mpp": fp.mpp,
              "mpp_source": "patches", "seconds": time.perf_counter() - started}
    store.add_slide(record, tiles, emb)


def _embed_wsi(sample: STSample, embedder, store: EmbeddingStore, batch_size: int, workers: int) -> None:
    from mvh.extractor.extract import embed_grid
    from mvh.extractor.slide import open_slide
    from mvh.extractor.tiling import make_tile_grid_at

    fp = store.fingerprint
    spots, _, _ = read_sample(sample)
    started = time.perf_counter()
    with open_slide(sample.wsi, mpp=sample.mpp) as slide:
        size_l0 = int(round(fp.tile_px * fp.mpp / slide.mpp))
        # HEST convention: top-left = centre - size // 2 (integer level-0 pixels).
        x = np.floor(spots["x"].to_numpy()).astype(np.int64) - size_l0 // 2
        y = np.floor(spots["y"].to_numpy()).astype(np.int64) - size_l0 // 2
        ids = spots["barcode"].tolist()
        grid = make_tile_grid_at(slide, x, y, mpp=fp.mpp, tile_px=fp.tile_px, tile_ids=ids)
        width, height = slide.dimensions
        record = {"slide_id": sample.sample_id, "path": str(sample.wsi), "mpp": slide.mpp,
                  "mpp_source": slide.mpp_source, "width": width, "height": height}
    emb = embed_grid(embedder, grid, batch_size=batch_size, workers=workers)
    record["seconds"] = time.perf_counter() - started
    store.add_slide(record, grid.to_frame(), emb)


def embed_samples(
    samples: Sequence[STSample],
    store: EmbeddingStore,
    embedder_factory: Callable[[], object],
    batch_size: int = 64,
    workers: int = 0,
    progress: Progress | None = None,
) -> list[str]:
    """Embed the spots of samples not yet done in `store` (the embedder is built only if needed).

    Returns the ids embedded in this call. A WSI is preferred over a patches file when both exist.
    """
    done = set(store.slide_ids("done"))
    todo = [s for s in samples if s.sample_id not in done]
    if not todo:
        return []
    embedder = embedder_factory()
    for sample in todo:
        log.info("embedding spots of %s into %s", sample.sample_id, store.uri)
        if sample.wsi is not None:
            _embed_wsi(sample, embedder, store, batch_size, workers)
        else:
            _embed_patches(sample, embedder, store, batch_size)
        if progress is not None:
            progress(sample.sample_id, 1)
    return [s.sample_id for s in todo]


def spot_embeddings(store: EmbeddingStore, spots: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] aligned with `spots` rows (sample_id, barcode) and a found mask [N] (bool)."""
    out = np.zeros((len(spots), store.dim), dtype=np.float32)
    found = np.zeros(len(spots), dtype=bool)
    done = set(store.slide_ids("done"))
    for sid, rows in spots.groupby("sample_id", sort=False).indices.items():
        if sid not in done:
            continue
        tiles = store.slide_tiles(sid)
        emb, _ = store.slide_embeddings(sid)
        position = pd.Index(tiles["tile_id"].astype(str)).get_indexer(spots["barcode"].iloc[rows].astype(str))
        hit = position >= 0
        out[rows[hit]] = emb[position[hit]]
        found[rows[hit]] = True
    return out, found


def sample_thumbnail(sample: STSample, max_size: int = 1024) -> tuple[np.ndarray | None, float]:
    """A thumbnail of the sample's image (WSI, else the h5ad's HEST downscaled image) and its scale
    (thumbnail px per level-0 px); (None, 1.0) when there is none."""
    if sample.wsi is not None:
        from mvh.extractor.slide import open_slide

        with open_slide(sample.wsi, mpp=sample.mpp) as slide:
            thumb = slide.thumbnail(max_size)
            return thumb, thumb.shape[1] / slide.dimensions[0]
    import anndata

    adata = anndata.read_h5ad(sample.h5ad, backed="r")
    try:
        st = adata.uns["spatial"]["ST"]
        image = np.asarray(st["images"]["downscaled_fullres"])
        scale = float(st["scalefactors"]["tissue_downscaled_fullres_scalef"])
        return image.astype(np.uint8), scale
    except (KeyError, TypeError):
        return None, 1.0
    finally:
        adata.file.close()


def check_split_metadata(samples: Sequence[STSample], splits: Sequence[str]) -> None:
    """Refuse LOSO when the studies are unknown or single (UsageError naming --meta)."""
    if "loso" in splits and len({s.study for s in samples}) < 2:
        raise UsageError("--split loso needs at least 2 studies: give --meta CSV with a study column")
