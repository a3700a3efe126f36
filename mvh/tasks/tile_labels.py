"""Where the labelled tiles of `mvh eval classify` come from: an image folder or a labels CSV, the
embeddings of those tiles in a store (images embedded on demand), and the group of each tile.

The group of a tile is, in this order: the CSV's `group` column; its `patient` column; the slide of a
stored tile (`tile_id` CSVs); the SLIDE sub-folder of an image folder (`CLASS/SLIDE/*.png`); else the
image itself, and a note says nothing links images to slides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import DataError
from mvh.progress import IMAGES, Event, Progress, report
from mvh.tasks.stores import select_tiles, tile_key

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def read_label_csv(path: Path) -> pd.DataFrame:
    """Read a labels CSV: `tile_id` or `path`, `label`, optional `group`, `patient`, `split`."""
    try:
        df = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the labels CSV ({exc}); give tile_id or path, label") from exc
    if "label" not in df.columns or not ({"tile_id", "path"} & set(df.columns)):
        raise DataError(f"{path}: needs a 'label' column and a 'tile_id' or 'path' column")
    if df.empty:
        raise DataError(f"{path}: the labels CSV has no rows; give one row per labelled tile")
    for column in ("label", "group", "patient"):
        if column in df.columns and df[column].isna().any():
            n = int(df[column].isna().sum())
            raise DataError(f"{path}: {n} rows without a {column}; fill or drop them")
    key = "tile_id" if "tile_id" in df.columns else "path"
    if df[key].duplicated().any():
        raise DataError(f"{path}: {key} {df[key][df[key].duplicated()].iloc[0]!r} has several rows; keep one")
    return df


def read_image_folder(root: Path) -> pd.DataFrame:
    """Labels of a folder-per-class image set -> columns path (absolute), label, source (the SLIDE
    sub-folder below the class folder, or the image itself), and split when `train/` and `test/` exist."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; pass a folder with one subfolder per class")
    parts = [("train", root / "train"), ("test", root / "test")]
    given = all(p.is_dir() for _, p in parts)
    rows = []
    for split, base in parts if given else [(None, root)]:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    sub = f.parent.relative_to(class_dir)
                    row = {"path": str(f.resolve()), "label": class_dir.name,
                           "source": str(sub) if str(sub) != "." else str(f.resolve())}
                    if split is not None:
                        row["split"] = split
                    rows.append(row)
    if not rows:
        raise DataError(f"{root}: no png/jpg/tif images in class subfolders; see `mvh eval classify --help`")
    return pd.DataFrame(rows)


def tile_groups(table: pd.DataFrame, slides: np.ndarray | None) -> tuple[np.ndarray, str, list[str]]:
    """Group per labelled tile, what it is, and notes (see the module docstring for the order)."""
    if "group" in table.columns:
        return table["group"].to_numpy().astype(str), "group column", []
    if "patient" in table.columns:
        return table["patient"].to_numpy().astype(str), "patient column", []
    if slides is not None:
        return np.asarray(slides).astype(str), "slide", []
    if "source" in table.columns:
        source = table["source"].astype(str)
        if (source != table["path"]).all():
            return source.to_numpy(), "source folder", []
    note = ("nothing links the images to slides or patients: folds are split image by image (tiles of one "
            "slide may straddle train and test); put them in CLASS/SLIDE/ folders or give a CSV with a "
            "group or patient column")
    groups = table["source"] if "source" in table.columns else table["path"]
    return groups.to_numpy().astype(str), "image", [note]


def _image_tag(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]


def embed_image_files(
    paths: Sequence[str], store: Any, embedder_factory: Callable[[], Any], batch_size: int = 64,
    progress: Progress | None = None,
) -> list[str]:
    """Embed image files into `store` (one store slide per folder, tile_id = `<folder slide id>/<name>`),
    skipping folders already done; return the tile ids of `paths` in order."""
    from PIL import Image

    from mvh.extractor.slide import pil_to_rgb

    files = [Path(p) for p in paths]
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent.resolve(), []).append(f)
    done = set(store.slide_ids("done"))
    slide_of = {folder: f"images:{_image_tag(folder)}:{folder.name}" for folder in by_folder}
    embedder = None
    fp = store.fingerprint
    todo = {folder: members for folder, members in by_folder.items() if slide_of[folder] not in done}
    report(progress, Event.TOTAL, IMAGES, sum(len(m) for m in todo.values()))
    for folder in todo:
        slide_id = slide_of[folder]
        # The whole folder is one slide, so a later subset of it is found here.
        members = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        embedder = embedder or embedder_factory()
        chunks, sizes = [], []
        for start in range(0, len(members), 256):
            images = []
            for p in members[start : start + 256]:
                try:
                    with Image.open(p) as im:
                        images.append(pil_to_rgb(im))
                except OSError as exc:
                    raise DataError(f"{p}: cannot read the image ({exc}); remove or replace it") from exc
            sizes += [im.shape[1] for im in images]
            chunks.append(embedder.embed_images(images, batch_size))
            report(progress, Event.ADVANCE, IMAGES, len(images))
        tiles = pd.DataFrame({"tile_id": [f"{slide_id}/{p.name}" for p in members], "x": 0, "y": 0,
                              "tile_px": sizes, "mpp": fp.mpp, "tissue_fraction": np.nan})
        store.add_slide({"slide_id": slide_id, "path": str(folder), "mpp": fp.mpp, "mpp_source": "images"},
                        tiles, np.concatenate(chunks))
    return [f"{slide_of[f.parent.resolve()]}/{f.name}" for f in files]


def labelled_embeddings(store: Any, tile_ids: Sequence[str], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] of `tile_ids` and their slide ids [N], read in one store scan (DataError naming
    `source` when an id is not a done tile of the store)."""
    unique = list(dict.fromkeys(str(t) for t in tile_ids))
    rows, emb, found = select_tiles(store, unique, tile_key)  # streamed: memory is the labelled tiles
    if not found.all():
        missing = [t for t, f in zip(unique, found, strict=True) if not f]
        raise DataError(
            f"{source}: {len(missing)} tile_id(s) are not done tiles of store {store.uri} "
            f"(e.g. {missing[:3]}): fix or remove those rows (list tiles with `mvh export` or `mvh info`)"
        )
    take = pd.Index(unique).get_indexer([str(t) for t in tile_ids])
    return emb[take], rows["slide_id"].to_numpy().astype(str)[take]
