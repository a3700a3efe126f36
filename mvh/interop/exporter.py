"""`run_export`: a store's done slides as TRIDENT-complete h5, CLAM's layout, or Parquet.

`h5`: one `<slide_id>.h5` per done slide; slides imported from h5 files get their attributes, dtypes and
row order back exactly, slides mvh tiled get every coords attribute TRIDENT writes (`mvh.interop.trident`).
`clam`: CLAM's `h5_files/<slide_id>.h5` and `pt_files/<slide_id>.pt` (a float32 tensor [N, D]).
`parquet`: the tiles table of done slides as `tiles.parquet` in the output folder; its schema metadata
(JSON) carries the fingerprint (`mvh.fingerprint`), mvh's version, the store's version and tag, the
dataset card and every slide with its level-0 size and um/px, slides without tissue included
(`mvh.interop.provenance.parquet_metadata`).
Every file is resolved inside the output folder.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mvh.errors import DataError, StoreError, UsageError
from mvh.interop.geojson import feature_collection, tile_features, write_collection
from mvh.interop.geometry import Geometry, trident_coords_attrs
from mvh.interop.kept_attrs import saved_attrs, to_file_order
from mvh.interop.provenance import parquet_metadata
from mvh.interop.trident import decode_attrs, write_h5
from mvh.interop.whole_file import write_whole
from mvh.jobs import JobResult, check_out_folder, out_folder
from mvh.progress import SLIDES, Event, Progress, report
from mvh.store import DONE, EmbeddingStore, StoreFingerprint, embeddings_to_arrow
from mvh.store.slide_ids import path_inside

FORMATS = ("h5", "clam", "parquet", "geojson")
PARQUET_FILE = "tiles.parquet"  # what `--format parquet` writes into the --out folder
WRITES = {"h5": "one SLIDE_ID.h5 per slide", "clam": "h5_files/ and pt_files/", "parquet": PARQUET_FILE,
          "geojson": "one SLIDE_ID.geojson per slide"}
INTERNAL_COLUMNS = ("commit",)  # store bookkeeping, not exported
MVH_ONLY = ("mpp", "slide_mpp")  # mvh's own coords attributes, not added to files imported without them


@dataclass(frozen=True)
class ExportConfig:
    """`mvh export`: which store, where, in which format, verified first or not."""

    store: str
    out: Path
    fmt: str = "h5"
    verify: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", str(self.store))
        object.__setattr__(self, "out", Path(self.out))
        if self.fmt not in FORMATS:
            raise UsageError(f"--format {self.fmt!r} is unknown: use one of {', '.join(FORMATS)}")
        # --out is a folder for every format (parquet writes OUT/tiles.parquet); `x.parquet` is refused
        object.__setattr__(self, "out", out_folder(self.out, WRITES[self.fmt]))


@dataclass
class ExportResult(JobResult, job="export"):
    """What `run_export` wrote."""

    store: str
    format: str
    out: str
    files: list[str] = field(default_factory=list)
    n_slides: int = 0
    n_tiles: int = 0
    verified: bool = False
    notes: list[str] = field(default_factory=list)


def _size_l0(tiles: pd.DataFrame, fp: StoreFingerprint, slide_mpp: float | None, slide_id: str) -> int:
    sizes = {t.rsplit(":", 1)[-1] for t in tiles["tile_id"]}
    if len(sizes) == 1 and next(iter(sizes)).isdigit():
        return int(next(iter(sizes)))  # the extractor names tiles slide:x:y:size_l0
    if slide_mpp is None:
        raise DataError(f"slide {slide_id}: its level-0 um/px is unknown; re-extract it with --slide-mpp")
    return int(round(fp.tile_px * fp.mpp / slide_mpp))


def _mvh_file_attrs(store: EmbeddingStore, rec: pd.Series) -> dict[str, Any]:
    fp = store.fingerprint.shared()
    attrs: dict[str, Any] = {
        "slide_path": "" if pd.isna(rec["path"]) else PurePath(str(rec["path"])).name,  # no local path
        "mpp_source": "" if pd.isna(rec["mpp_source"]) else str(rec["mpp_source"]),
        "model": fp.model,
        "weights_sha256": fp.weights_sha256,
        "fingerprint": json.dumps(fp.to_dict()),
    }
    for key in ("width", "height"):  # an unknown size is left out (h5 has no null), never -1
        if not pd.isna(rec[key]):
            attrs[key] = np.int64(int(rec[key]))
    return attrs


@dataclass
class _SlideFile:
    features: np.ndarray
    coords: np.ndarray
    coords_attrs: dict[str, Any]
    features_attrs: dict[str, Any]
    file_attrs: dict[str, Any]
    extras: dict[str, np.ndarray]
    added: list[str]
    no_level0: bool


def _geometry(
    saved: dict[str, Any] | None, tiles: pd.DataFrame, store: EmbeddingStore, rec: pd.Series
) -> Geometry:
    """The slide's geometry as imported (its `attrs`), else from the store's fingerprint and slide row."""
    if saved is not None and isinstance(saved.get("geometry"), dict):
        g = saved["geometry"]
        return Geometry(g["patch_size"], g["mpp"], g["slide_mpp"], g["patch_size_level0"], g["overlap"], {})
    fp = store.fingerprint
    slide_mpp = None if pd.isna(rec["mpp"]) else float(rec["mpp"])
    return Geometry(fp.tile_px, fp.mpp, slide_mpp, _size_l0(tiles, fp, slide_mpp, str(rec.name)), 0, {})


def _slide_file(store: EmbeddingStore, slide_id: str, rec: pd.Series, savetodir: str) -> _SlideFile:
    emb, coords = store.slide_embeddings(slide_id)
    tiles = store.slide_tiles(slide_id)
    saved = saved_attrs(rec)
    extras = {
        "tile_ids": tiles["tile_id"].to_numpy(dtype=object),
        "tissue_fraction": tiles["tissue_fraction"].to_numpy(np.float32),
    }
    geometry = _geometry(saved, tiles, store, rec)
    width = None if pd.isna(rec["width"]) else int(rec["width"])
    height = None if pd.isna(rec["height"]) else int(rec["height"])
    trident = trident_coords_attrs(slide_id, geometry, width, height, savetodir)
    mvh_attrs = _mvh_file_attrs(store, rec)
    if saved is None:
        return _SlideFile(
            features=emb.astype(np.float32),
            coords=coords.astype(np.int64),
            coords_attrs=trident,
            features_attrs={"name": slide_id, "savetodir": savetodir, "encoder": store.fingerprint.model},
            file_attrs=mvh_attrs,
            extras=extras,
            added=[],
            no_level0=geometry.slide_mpp is None,
        )
    order = to_file_order(saved.get("order"), tiles)
    if order is not None:
        emb, coords = emb[order], coords[order]
        extras = {k: v[order] for k, v in extras.items()}
    dtypes = saved["dtypes"]
    features = emb.astype(np.dtype(dtypes["features"]))
    if saved.get("features_shape") is not None and len(emb) == 0:
        features = np.empty(saved["features_shape"], np.dtype(dtypes["features"]))
    h5 = saved["h5"]
    coords_attrs = decode_attrs(h5["coords"])
    # Attributes the source file lacked (CLAM writes none) are completed; those it had are kept as they were.
    added = [k for k in trident if k not in coords_attrs and k not in MVH_ONLY]
    coords_attrs.update({k: trident[k] for k in added})
    return _SlideFile(
        features=features,
        coords=coords.astype(np.dtype(dtypes["coords"])),
        coords_attrs=coords_attrs,
        features_attrs=decode_attrs(h5["features"]),
        file_attrs={**decode_attrs(h5["file"]), **mvh_attrs},
        extras=extras,
        added=added,
        no_level0="level0_magnification" not in coords_attrs,
    )


def _write_pt(path: Path, features: np.ndarray) -> None:
    import torch  # CLAM's pt_files are torch tensors; torch is imported only for this format

    image = io.BytesIO()  # one plain write: on a full disk torch.save's own writer gives no errno
    torch.save(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), image)
    path.write_bytes(image.getbuffer())


def _export_slides(
    store: EmbeddingStore, cfg: ExportConfig, result: ExportResult, progress: Progress | None
) -> None:
    h5_dir = cfg.out / "h5_files" if cfg.fmt == "clam" else cfg.out
    pt_dir = cfg.out / "pt_files"
    h5_dir.mkdir(parents=True, exist_ok=True)
    if cfg.fmt == "clam":
        pt_dir.mkdir(parents=True, exist_ok=True)
    slides = store.slides(status=DONE).set_index("slide_id")
    report(progress, Event.TOTAL, SLIDES, len(slides))
    native, added, no_level0 = False, Counter[str](), []
    for slide_id, rec in slides.iterrows():
        sid = str(slide_id)
        target = path_inside(h5_dir, f"{sid}.h5")
        data = _slide_file(store, sid, rec, h5_dir.name)  # TRIDENT's savetodir, without the local path
        native = native or saved_attrs(rec) is None
        added.update(data.added)
        if data.no_level0:
            no_level0.append(sid)
        done = f"{result.n_slides} of {len(slides)} slide(s) were written to {cfg.out} before it"
        write_whole(
            target,
            lambda path, d=data: write_h5(
                path, d.features, d.coords, d.coords_attrs, d.features_attrs, d.file_attrs, d.extras
            ),
            done,
        )
        result.files.append(str(target))
        if cfg.fmt == "clam":
            pt = path_inside(pt_dir, f"{sid}.pt")
            write_whole(pt, lambda path, d=data: _write_pt(path, d.features), done)
            result.files.append(str(pt))
        result.n_slides += 1
        result.n_tiles += len(data.coords)
        report(progress, Event.ADVANCE, SLIDES, 1)
    if native:
        result.notes.append(
            "slides mvh tiled carry TRIDENT attributes with magnification = 10 / um-per-px "
            "(TRIDENT's convention) and overlap 0 (mvh's grid)"
        )
    if added:
        result.notes.append(
            "TRIDENT attributes the imported files lacked were added from the geometry given at import: "
            + ", ".join(f"{k} ({n} slide(s))" for k, n in sorted(added.items()))
        )
    if no_level0:
        result.notes.append(
            f"slides {no_level0[:5]} have no level-0 um/px: level0_magnification is not written, so TRIDENT "
            "cannot re-read their tiles (import with --slide-mpp to record it)"
        )


def export_parquet(store: EmbeddingStore, out: Path | str, progress: Progress | None = None) -> Path:
    """Write the tiles of all done slides into `out/tiles.parquet` (`out` is a folder) and return its path."""
    folder = out_folder(out, PARQUET_FILE)
    check_out_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = path_inside(folder, PARQUET_FILE)
    fp = store.fingerprint
    tiles_schema = store.schema()["tiles"]
    internal = [tiles_schema.get_field_index(n) for n in INTERNAL_COLUMNS if n in tiles_schema.names]
    for index in sorted(internal, reverse=True):
        tiles_schema = tiles_schema.remove(index)
    schema = tiles_schema.with_metadata(parquet_metadata(store))
    slide_ids = store.slide_ids(DONE)
    report(progress, Event.TOTAL, SLIDES, len(slide_ids))

    def write(path: Path) -> None:
        with pq.ParquetWriter(path, schema) as writer:
            for slide_id in slide_ids:
                tiles = store.slide_tiles(slide_id)
                emb, _ = store.slide_embeddings(slide_id)
                table = pa.Table.from_pandas(tiles, preserve_index=False)
                table = table.append_column("embedding", embeddings_to_arrow(emb, fp.embedding_dtype))
                writer.write_table(table.select(schema.names).cast(schema))
                report(progress, Event.ADVANCE, SLIDES, 1)

    write_whole(out, write, "nothing was written")
    return out


def _verify(store: EmbeddingStore, result: ExportResult) -> None:
    from mvh.store.integrity import verify_store

    verdict = verify_store(store)
    if not verdict.ok:
        found = "; ".join(f"{p.slide_id}: {p.kind} ({p.detail})" for p in verdict.problems[:3])
        raise StoreError(
            f"store {store.uri} failed verification ({len(verdict.problems)} problem(s): {found}); nothing "
            f"was exported; see `mvh verify --store {store.uri}`"
        )
    result.verified = True


def _export_geojson(
    store: EmbeddingStore, cfg: ExportConfig, result: ExportResult, progress: Progress | None
) -> None:
    """`<slide_id>.geojson` per done slide: its tile grid as QuPath detections, each tile's level-0
    footprint as the h5 export's `patch_size_level0` (`mvh.interop.geojson`)."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    slides = store.slides(status=DONE).set_index("slide_id")
    report(progress, Event.TOTAL, SLIDES, len(slides))
    for slide_id, rec in slides.iterrows():
        sid = str(slide_id)
        tiles = store.slide_tiles(sid)
        size = _geometry(saved_attrs(rec), tiles, store, rec).size_l0
        features = tile_features(tiles["x"].tolist(), tiles["y"].tolist(), size,
                                 tiles["tissue_fraction"].tolist())
        target = write_collection(path_inside(cfg.out, f"{sid}.geojson"), feature_collection(features))
        result.files.append(str(target))
        result.n_slides += 1
        result.n_tiles += len(tiles)
        report(progress, Event.ADVANCE, SLIDES, 1)


def run_export(cfg: ExportConfig, *, progress: Progress | None = None) -> ExportResult:
    """Export a store's done slides as TRIDENT-complete h5, CLAM's h5_files/pt_files, Parquet, or GeoJSON."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise UsageError(f"--out {cfg.out} is an existing file; remove it or name a new folder")
    store = EmbeddingStore.open_snapshot(cfg.store)
    result = ExportResult(store=cfg.store, format=cfg.fmt, out=str(cfg.out))
    if cfg.verify:
        _verify(store, result)
    if cfg.fmt == "parquet":
        result.files.append(str(export_parquet(store, cfg.out, progress)))
        result.n_slides = len(store.slide_ids(DONE))
        result.n_tiles = store.n_tiles
    elif cfg.fmt == "geojson":
        _export_geojson(store, cfg, result, progress)
    else:
        _export_slides(store, cfg, result, progress)
    for text in result.notes:
        report(progress, Event.NOTE, SLIDES, 0, text)
    return result


def export_h5(store: EmbeddingStore, out_dir: Path | str) -> list[Path]:
    """Write one TRIDENT-complete `<slide_id>.h5` per done slide into `out_dir`; return the paths."""
    result = ExportResult(store=store.uri, format="h5", out=str(out_dir))
    _export_slides(store, ExportConfig(store.uri, Path(out_dir), "h5"), result, None)
    return [Path(p) for p in result.files]
