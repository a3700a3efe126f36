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

The metadata CSV (`--meta`, e.g. HEST's own metadata CSV) has one row per sample: `sample_id` (or `id`),
`patient`, and the study as `study` (or `dataset_title`, HEST's column, or `source`); optionally `mpp`
(level-0 um/px, overrides everything) and `pixel_size_um_estimated` (used when metadata/<id>.json is
absent). An empty `patient` cell makes the sample its own patient (HEST leaves most cells empty; merging
them would put unrelated samples in one group). Without `--meta` each sample is its own patient and all
samples share study "unknown" (LOSO then refuses to run). Every such choice is returned as a note.

Embeddings: each sample is one slide of the store (slide_id = sample id) and each spot one tile
(tile_id = spot barcode); `st_spots` cuts the spot tiles and keeps the store up to date.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mvh.errors import DataError, UsageError
from mvh.store import EmbeddingStore
from mvh.store.slide_ids import check_slide_id
from mvh.tasks.stores import SEP, select_tiles, slide_tile_key

WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
STUDY_COLUMNS = ("study", "dataset_title", "source")


@dataclass(frozen=True)
class STSample:
    """One ST sample: its expression file, image source, patient, study and optional level-0 um/px.

    `patient_source` says where the patient came from ("meta", or "own" when the sample is its own
    patient); `mpp_source` where the um/px came from (None: the slide file's own metadata).
    """

    sample_id: str
    h5ad: Path
    wsi: Path | None
    patches: Path | None
    patient: str
    study: str
    mpp: float | None = None
    patient_source: str = "meta"
    mpp_source: str | None = None


@dataclass
class STExpression:
    """Spots of all samples, stacked: `spots` rows align with `counts` rows [N, G] (raw counts, CSR)."""

    spots: pd.DataFrame
    counts: sp.csr_matrix
    genes: list[str]

    def subset(self, rows: np.ndarray) -> STExpression:
        """The spots at `rows` (renumbered)."""
        return STExpression(self.spots.iloc[rows].reset_index(drop=True), self.counts[rows], self.genes)


@dataclass
class MetaTable:
    """The --meta CSV: rows by sample_id (patient may be empty), and which column gave the study."""

    rows: pd.DataFrame
    study_column: str
    path: Path


def _find_companion(h5ad: Path, folder: str, suffixes: Sequence[str]) -> Path | None:
    stem = h5ad.stem
    for base in (h5ad.parent, h5ad.parent.parent / folder):
        for suffix in suffixes:
            for candidate in (base / f"{stem}{suffix}", base / f"{stem}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _metadata_mpp(h5ad: Path) -> tuple[float | None, str | None]:
    path = h5ad.parent.parent / "metadata" / f"{h5ad.stem}.json"
    if not path.is_file():
        return None, None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix or remove the metadata file") from None
    for key in ("pixel_size_um_estimated", "pixel_size_um_embedded"):
        if meta.get(key):
            return _positive_mpp(meta[key], f"{path} {key}"), f"metadata/{h5ad.stem}.json {key}"
    return None, None


def _positive_mpp(value: Any, where: str) -> float:
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: um/px {value!r} is not a number; give a positive number") from None
    if not np.isfinite(mpp) or mpp <= 0:
        raise DataError(f"{where}: um/px {value!r} must be a positive finite number")
    return mpp


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip()


def read_meta_csv(path: Path) -> MetaTable:
    """The samples table (HEST's metadata CSV or sample_id, patient, study[, mpp]) indexed by sample_id."""
    if not path.is_file():
        raise DataError(f"{path}: metadata CSV not found; pass --meta with sample_id, patient, study columns")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); pass a CSV with a header row") from None
    if "sample_id" not in df.columns and "id" in df.columns:
        df = df.rename(columns={"id": "sample_id"})
    study_column = next((c for c in STUDY_COLUMNS if c in df.columns), None)
    missing = [c for c in ("sample_id", "patient") if c not in df.columns]
    if study_column is None:
        missing.append("study")
    if missing:
        raise DataError(
            f"{path}: missing columns {missing}; needs sample_id (or id), patient, study (or dataset_title)"
        )
    if df["sample_id"].duplicated().any():
        dup = df.loc[df["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DataError(f"{path}: sample_id {dup!r} appears twice; keep one row per sample")
    out = pd.DataFrame(index=pd.Index(df["sample_id"], name="sample_id"))
    out["patient"] = [None if _blank(v) else str(v).strip() for v in df["patient"]]
    out["study"] = df[study_column].to_numpy()
    for column in ("mpp", "pixel_size_um_estimated"):
        values = df[column] if column in df.columns else pd.Series([""] * len(df))
        out[column] = [
            None if _blank(v) else _positive_mpp(v, f"{path} row {sid!r} column {column}")
            for sid, v in zip(df["sample_id"], values, strict=True)
        ]
    return MetaTable(out, study_column, path)


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


def find_samples(inputs: Sequence[Path], meta: Path | None = None) -> tuple[list[STSample], list[str]]:
    """The samples of a HEST-style cohort (see the module docstring), sorted by id, and the notes to show."""
    table = read_meta_csv(meta) if meta is not None else None
    samples: dict[str, STSample] = {}
    for h5ad in _h5ad_files(inputs):
        sid = check_slide_id(h5ad.stem, str(h5ad))
        if sid in samples:
            raise DataError(f"{h5ad}: sample id {sid!r} given twice; sample ids (file stems) must be unique")
        wsi = _find_companion(h5ad, "wsis", WSI_SUFFIXES)
        patches = _find_companion(h5ad, "patches", (".h5",))
        if wsi is None and patches is None:
            raise DataError(f"{h5ad}: no WSI and no patches .h5 found for sample {sid}; see the ST layout")
        patient, patient_source, study = sid, "own", "unknown"
        mpp, mpp_source = None, None
        csv_estimate = None
        if table is not None:
            if sid not in table.rows.index:
                raise DataError(f"{meta}: no row for sample {sid!r}; add it (sample_id, patient, study)")
            row = table.rows.loc[sid]
            study = str(row["study"])
            if not _blank(row["patient"]):
                patient, patient_source = str(row["patient"]), "meta"
            if not _blank(row["mpp"]):
                mpp, mpp_source = float(row["mpp"]), f"{Path(meta).name} mpp"
            estimate = row["pixel_size_um_estimated"]
            csv_estimate = None if _blank(estimate) else float(estimate)
        if mpp is None:
            mpp, mpp_source = _metadata_mpp(h5ad)
        if mpp is None and csv_estimate is not None:
            mpp, mpp_source = csv_estimate, f"{Path(meta).name} pixel_size_um_estimated"
        if patient_source == "own":
            # Prefixed so an own-patient can never coincide with a real patient's name.
            patient = f"own:{sid}"
        samples[sid] = STSample(sid, h5ad, wsi, patches, patient, study, mpp, patient_source, mpp_source)
    if not samples:
        raise DataError("no ST samples found; pass the cohort folder or .h5ad files")
    ordered = [samples[k] for k in sorted(samples)]
    return ordered, _sample_notes(ordered, table)


def _sample_notes(samples: Sequence[STSample], table: MetaTable | None) -> list[str]:
    notes = []
    own = [s.sample_id for s in samples if s.patient_source == "own"]
    if table is None:
        notes.append("no --meta: each sample is its own patient and the study is 'unknown'")
    else:
        notes.append(f"study of each sample from the {table.path.name} column {table.study_column!r}")
        if own:
            notes.append(f"{len(own)} sample(s) with an empty patient cell in {table.path.name} are each "
                         "their "
                         f"own patient: {', '.join(own[:10])}{' ...' if len(own) > 10 else ''}")
    sources: dict[str, list[str]] = {}
    for s in samples:
        sources.setdefault(s.mpp_source or "the slide file's metadata", []).append(s.sample_id)
    for source, ids in sources.items():
        notes.append(f"level-0 um/px from {source}: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}")
    return notes


def _coordinates(adata: Any, where: Path) -> np.ndarray:
    if "spatial" in adata.obsm:
        return np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    if {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs.columns):
        return adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    raise DataError(f"{where}: no spot coordinates; set obsm['spatial'] or obs pxl_*_in_fullres")


def read_sample(
    sample: STSample, barcodes: Sequence[str] | None = None
) -> tuple[pd.DataFrame, sp.csr_matrix, list[str]]:
    """One sample's spots (barcode, x, y centres in level-0 px), raw counts [n, G] (CSR) and gene names.

    With `barcodes`, exactly those spots in that order (HEST-Benchmark: the patches file's spots, no
    in_tissue filter; a barcode absent from the h5ad is a DataError); else the in-tissue spots.
    """
    import anndata

    try:
        adata = anndata.read_h5ad(sample.h5ad)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{sample.h5ad}: not a readable .h5ad ({exc}); re-download or re-write it") from None
    names = adata.obs_names.astype(str)
    if names.duplicated().any():
        raise DataError(f"{sample.h5ad}: duplicate spot barcodes (obs_names); make them unique")
    if barcodes is not None:
        position = pd.Index(names).get_indexer(list(barcodes))
        if (position < 0).any():
            missing = [b for b, p in zip(barcodes, position, strict=True) if p < 0][:5]
            raise DataError(f"{sample.h5ad}: barcodes {missing} of the patches file are not in the h5ad; "
                            "use the h5ad and patches file of the same sample")
        adata = adata[position]
    elif "in_tissue" in adata.obs.columns:
        adata = adata[adata.obs["in_tissue"].astype(int).to_numpy() == 1]
    xy = _coordinates(adata, sample.h5ad)
    genes = adata.var_names.astype(str)
    keep = ~genes.duplicated()
    counts = sp.csr_matrix(adata.X[:, np.flatnonzero(keep)] if not keep.all() else adata.X, dtype=np.float32)
    spots = pd.DataFrame({"barcode": adata.obs_names.astype(str).to_numpy(), "x": xy[:, 0], "y": xy[:, 1]})
    return spots, counts, genes[keep].tolist()


def load_expression(
    samples: Sequence[STSample], barcodes: dict[str, Sequence[str]] | None = None
) -> STExpression:
    """Stack all samples' spots over the genes they all share (in the first sample's gene order)."""
    parts = [(s, *read_sample(s, None if barcodes is None else barcodes[s.sample_id])) for s in samples]
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


def read_patches_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Barcodes [N] (str) and level-0 top-left coords [N, 2] (int64) of a HEST patches file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("img", "barcode", "coords") if k not in f]
            if missing:
                raise DataError(f"{path}: patches file lacks {missing}; it needs img, barcode, coords")
            raw = np.asarray(f["barcode"]).reshape(-1)
            coords = np.asarray(f["coords"], dtype=np.float64).reshape(-1, 2)
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 patches file ({exc}); re-write it") from None
    if not np.isfinite(coords).all():
        raise DataError(f"{path}: coords hold NaN or inf; re-write the patches file")
    barcodes = np.array([b.decode() if isinstance(b, bytes) else str(b) for b in raw], dtype=object)
    return barcodes, coords.astype(np.int64)


def spot_embeddings(store: EmbeddingStore, spots: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] aligned with `spots` rows (sample_id, barcode) and a found mask [N], in one scan."""
    keys = (spots["sample_id"].astype(str) + SEP + spots["barcode"].astype(str)).tolist()
    unique = list(dict.fromkeys(keys))
    done = set(store.slide_ids())
    samples = sorted({str(s) for s in spots["sample_id"]} & done)
    # streamed over the spots' samples only: memory is the spots, never the store
    _, emb, found = select_tiles(store, unique, slide_tile_key, slide_ids=samples)
    take = pd.Index(unique).get_indexer(keys)
    return np.asarray(emb[take]), found[take]


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
        raise UsageError("--split loso needs at least 2 studies: give --meta CSV with a study "
                         "(or dataset_title) column")
