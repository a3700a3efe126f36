"""Exchange embeddings with other tools: TRIDENT/CLAM-style per-slide h5 files, and one Parquet file.

h5 layout (one `<slide_id>.h5` per slide, as TRIDENT and CLAM write it):
- `features` float32 [N, dim], `coords` int64 [N, 2] (level-0 top-left x, y);
- attributes on `coords`: `patch_size` (tile px as embedded), `patch_size_level0` (tile footprint in
  level-0 px), `mpp` (um/px as embedded), `slide_mpp`, `name` (slide id);
- mvh extras read back on import when present: `tile_ids` and `tissue_fraction` datasets, and file
  attributes `slide_path`, `width`, `height`, `mpp_source`, `model`, `weights_sha256`.

Parquet: the tiles table of done slides (embedding as fixed_size_list) with the store fingerprint
as JSON in the schema metadata key `mvh.fingerprint`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mvh.errors import DataError, UsageError
from mvh.index.store import DONE, EmbeddingStore, StoreFingerprint, embeddings_to_arrow

EXTERNAL_WEIGHTS = "external"
FORMATS = ("h5", "parquet")


def _tile_id(slide_id: str, x: int, y: int, size_l0: int) -> str:
    # Same naming as mvh.extractor.tiling.tile_id (index must not import extractor).
    return f"{slide_id}:{x}:{y}:{size_l0}"


def _size_l0(tile_px: int, mpp: float, slide_mpp: float | None) -> int:
    if slide_mpp is None or not math.isfinite(slide_mpp) or slide_mpp <= 0:
        return int(tile_px)
    return int(round(tile_px * mpp / slide_mpp))


def export_h5(store: EmbeddingStore, out_dir: Path | str) -> list[Path]:
    """Write one TRIDENT/CLAM-style `<slide_id>.h5` per done slide into `out_dir`; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slides = store.slides(status=DONE).set_index("slide_id")
    fp = store.fingerprint
    paths = []
    for slide_id, emb, coords in store.iter_slides():
        rec = slides.loc[slide_id]
        tiles = store.slide_tiles(slide_id)
        slide_mpp = None if pd.isna(rec["mpp"]) else float(rec["mpp"])
        path = out / f"{slide_id}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=emb.astype(np.float32))
            ds = f.create_dataset("coords", data=coords.astype(np.int64))
            ds.attrs["patch_size"] = int(fp.tile_px)
            ds.attrs["patch_size_level0"] = _size_l0(fp.tile_px, fp.mpp, slide_mpp)
            ds.attrs["mpp"] = float(fp.mpp)
            ds.attrs["slide_mpp"] = float("nan") if slide_mpp is None else slide_mpp
            ds.attrs["name"] = slide_id
            f.create_dataset(
                "tile_ids", data=tiles["tile_id"].to_numpy(dtype=object), dtype=h5py.string_dtype()
            )
            f.create_dataset("tissue_fraction", data=tiles["tissue_fraction"].to_numpy(np.float32))
            for key in ("path", "mpp_source"):
                f.attrs["slide_path" if key == "path" else key] = "" if rec[key] is None else str(rec[key])
            for key in ("width", "height"):
                f.attrs[key] = -1 if pd.isna(rec[key]) else int(rec[key])
            f.attrs["model"] = fp.model
            f.attrs["weights_sha256"] = fp.weights_sha256
            f.attrs["fingerprint"] = json.dumps(fp.to_dict())
        paths.append(path)
    return paths


def export_parquet(store: EmbeddingStore, out: Path | str) -> Path:
    """Write the tiles of all done slides into one Parquet file (a directory gets `tiles.parquet`)."""
    out = Path(out)
    if out.suffix != ".parquet":
        out.mkdir(parents=True, exist_ok=True)
        out = out / "tiles.parquet"
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    fp = store.fingerprint
    schema = store.schema()["tiles"].with_metadata({b"mvh.fingerprint": json.dumps(fp.to_dict()).encode()})
    with pq.ParquetWriter(out, schema) as writer:
        for slide_id in store.slide_ids(DONE):
            tiles = store.slide_tiles(slide_id)
            emb, _ = store.slide_embeddings(slide_id)
            table = pa.Table.from_pandas(tiles, preserve_index=False)
            table = table.append_column("embedding", embeddings_to_arrow(emb, fp.embedding_dtype))
            writer.write_table(table.select(schema.names).cast(schema))
    return out


def export_store(store: EmbeddingStore, fmt: str, out: Path | str) -> list[Path]:
    """Export a store as `h5` (one file per slide) or `parquet` (one file); return the written paths."""
    if fmt == "h5":
        return export_h5(store, out)
    if fmt == "parquet":
        return [export_parquet(store, out)]
    raise UsageError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


def _attr(attrs: Any, key: str, default: Any = None) -> Any:
    if key not in attrs:
        return default
    value = attrs[key]
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _read_h5(path: Path) -> dict[str, Any]:
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise DataError(
                    f"{path}: no `features` and `coords` datasets; expected TRIDENT/CLAM h5 files"
                )
            coords_attrs = dict(f["coords"].attrs)
            out = {
                "features": np.asarray(f["features"][()], dtype=np.float32),
                "coords": np.asarray(f["coords"][()], dtype=np.int64),
                "coords_attrs": coords_attrs,
                "file_attrs": dict(f.attrs),
                "tile_ids": [t.decode() if isinstance(t, bytes) else str(t) for t in f["tile_ids"][()]]
                if "tile_ids" in f
                else None,
                "tissue_fraction": np.asarray(f["tissue_fraction"][()], np.float32)
                if "tissue_fraction" in f
                else None,
            }
    except OSError as exc:
        raise DataError(f"{path}: not a readable h5 file ({exc}); check the file") from exc
    feats, coords = out["features"], out["coords"]
    if feats.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or len(feats) != len(coords):
        raise DataError(
            f"{path}: features {feats.shape} and coords {coords.shape} must be [N, dim] and [N, 2]"
        )
    return out


def import_h5(
    h5_dir: Path | str,
    store_uri: str | Path,
    model: str,
    mpp: float | None = None,
    tile_px: int | None = None,
    embedding_dtype: str = "float32",
    progress: Callable[[str, int], None] | None = None,
) -> EmbeddingStore:
    """Index a folder of TRIDENT/CLAM h5 files into a store with model `external:<model>`."""
    files = sorted(Path(h5_dir).glob("*.h5"))
    if not files:
        raise UsageError(f"{h5_dir}: no .h5 files found; point at a folder of TRIDENT/CLAM feature files")
    first = _read_h5(files[0])
    tile_px = tile_px if tile_px is not None else _attr(first["coords_attrs"], "patch_size")
    mpp = mpp if mpp is not None else _attr(first["coords_attrs"], "mpp")
    if tile_px is None or mpp is None or (isinstance(mpp, float) and not math.isfinite(mpp)):
        raise UsageError(
            f"{files[0]}: no patch_size/mpp attributes; pass --tile-px and --mpp for these features"
        )
    name = model if model.startswith("external:") else f"external:{model}"
    fp = StoreFingerprint(
        model=name,
        model_config={},
        weights_sha256=EXTERNAL_WEIGHTS,
        weights_path=None,
        embed_dim=first["features"].shape[1],
        tile_px=int(tile_px),
        mpp=float(mpp),
        mean=None,
        std=None,
        embedding_dtype=embedding_dtype,
        extra={"imported_from": str(Path(h5_dir).resolve())},
    )
    store = EmbeddingStore.open_or_create(store_uri, fp)
    if progress is not None:
        progress("slides_total", len(files))
    for path in files:
        data = first if path == files[0] else _read_h5(path)
        _import_one(store, path, data)
        if progress is not None:
            progress("slide_done", 1)
    return store


def _import_one(store: EmbeddingStore, path: Path, data: dict[str, Any]) -> None:
    fp = store.fingerprint
    feats, coords = data["features"], data["coords"]
    if feats.shape[1] != fp.embed_dim:
        raise DataError(
            f"{path}: features have dim {feats.shape[1]}, the store {store.uri} has {fp.embed_dim}"
        )
    ca, fa = data["coords_attrs"], data["file_attrs"]
    slide_id = str(_attr(ca, "name", path.stem)) or path.stem
    slide_mpp = _attr(ca, "slide_mpp")
    slide_mpp = None if slide_mpp is None or not math.isfinite(float(slide_mpp)) else float(slide_mpp)
    size_l0 = int(_attr(ca, "patch_size_level0", _size_l0(fp.tile_px, fp.mpp, slide_mpp)))
    n = len(coords)
    tile_ids = data["tile_ids"] or [_tile_id(slide_id, int(x), int(y), size_l0) for x, y in coords]
    tissue = data["tissue_fraction"]
    tiles = pd.DataFrame(
        {
            "tile_id": tile_ids,
            "x": coords[:, 0],
            "y": coords[:, 1],
            "tile_px": np.full(n, fp.tile_px),
            "mpp": np.full(n, fp.mpp),
            "tissue_fraction": tissue if tissue is not None else np.full(n, np.nan, np.float32),
        }
    )
    width, height = _attr(fa, "width", -1), _attr(fa, "height", -1)
    record = {
        "slide_id": slide_id,
        "path": _attr(fa, "slide_path") or str(path),
        "size": path.stat().st_size,
        "width": None if width is None or int(width) < 0 else int(width),
        "height": None if height is None or int(height) < 0 else int(height),
        "mpp": slide_mpp,
        "mpp_source": _attr(fa, "mpp_source") or "imported",
        "seconds": 0.0,
    }
    store.add_slide(record, tiles, feats)
