"""Provenance across import and export: what made a folder of h5 files and the fingerprint a store of
them gets; what an export carries so that a second team knows what it holds, with no local path.

TRIDENT names the patch encoder in `features.attrs["encoder"]` (mahmoodlab/TRIDENT
`trident/wsi_objects/WSI.py` `extract_patch_features`; a missing name is saved as the string "None").
mvh's own export adds the file attributes `model` and `fingerprint` (the whole store fingerprint as
JSON), so a re-import gets back the model, config, weights sha256 and mean/std it was made with. CLAM
writes no name, so `--model` is needed there. A `--model` that contradicts the files, and files that
disagree, are refused (exit 2): a store never says one model while its files say another.

Nothing meant for sharing carries an absolute local path: `StoreFingerprint.shared` keeps a weights
file's name (its sha256 is the identity) and the name of the folder features were imported from. A
Parquet export carries in its schema metadata the fingerprint, mvh's version, the store's version and
tag, the dataset card and every slide, those without tissue (done with 0 tiles) and failed ones included
(`parquet_metadata`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd

from mvh import __version__
from mvh.errors import DataError, StoreError, UsageError
from mvh.interop.trident import H5Slide
from mvh.store import DONE, EmbeddingStore, StoreFingerprint
from mvh.store.card import build_card
from mvh.store.schema import SLIDE_ATTRS

EXTERNAL = "external:"  # prefix of the model name of features made by another tool
EXTERNAL_WEIGHTS = "external"  # their weights_sha256: the weights are not known to mvh
IMPORTED_FROM = "imported_from"


def bare(model: str) -> str:
    """A model name without the `external:` prefix (what the files and --model are compared by)."""
    return model.removeprefix(EXTERNAL)


def _text(value: Any) -> str | None:
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str) or value.strip() in ("", "None"):
        return None  # TRIDENT saves a missing encoder name as "None"
    return value.strip()


@dataclass(frozen=True)
class FileModel:
    """The model a file says made its features (None when it names none), where it says so, and mvh's
    whole fingerprint when the file carries one."""

    path: Path
    name: str | None
    where: str = ""
    fingerprint: StoreFingerprint | None = None


def read_file_model(slide: H5Slide) -> FileModel:
    """What `slide`'s attributes say made its features (DataError for an unreadable mvh fingerprint)."""
    raw = _text(slide.file_attrs.get("fingerprint"))
    if raw is not None:
        try:
            fp = StoreFingerprint.from_dict(json.loads(raw))
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError, StoreError) as exc:
            said = " ".join(str(exc).split())[:160]
            raise DataError(
                f"{slide.path}: file attribute `fingerprint` is not an mvh fingerprint ({said}); export the "
                "file again from its store"
            ) from exc
        return FileModel(slide.path, bare(fp.model), "file attribute `fingerprint`", fp)
    for where, attrs, key in (
        ("file attribute `model`", slide.file_attrs, "model"),
        ("`features` attribute `encoder`", slide.features_attrs, "encoder"),
    ):
        name = _text(attrs.get(key))
        if name is not None:
            return FileModel(slide.path, bare(name), where)
    return FileModel(slide.path, None)


def _one_fingerprint(files: list[FileModel]) -> StoreFingerprint | None:
    """The mvh fingerprint every file carries, None when none does; UsageError when they differ."""
    carried = [f for f in files if f.fingerprint is not None]
    if not carried:
        return None
    first = carried[0]
    for other in files:
        if other.fingerprint is None or not other.fingerprint.matches(first.fingerprint):  # type: ignore[arg-type]
            theirs = (
                "no mvh fingerprint" if other.fingerprint is None else f"<{other.fingerprint.describe()}>"
            )
            raise UsageError(
                f"{first.path} carries mvh's fingerprint <{first.fingerprint.describe()}> but {other.path} "  # type: ignore[union-attr]
                f"carries {theirs}: import them into separate --store paths"
            )
    return first.fingerprint


def choose_model(
    flag: str | None, files: list[FileModel], folder: Path
) -> tuple[str, StoreFingerprint | None]:
    """The model name of a store of `files` (without `external:`), and their mvh fingerprint if any.

    The files' own name is used; `--model` (`flag`) is needed only when no file names one, and one that
    contradicts a file is refused, as are files that disagree (UsageError, before anything is written).
    """
    named = [f for f in files if f.name is not None]
    for f in named:
        if f.name != named[0].name:
            raise UsageError(
                f"{named[0].path} says its features were made by {named[0].name!r} ({named[0].where}) but "
                f"{f.path} says {f.name!r}: import each model's files into its own --store"
            )
    fingerprint = _one_fingerprint(files)
    if flag is not None:
        wanted = bare(flag.strip())
        for f in named:
            if f.name != wanted:
                raise UsageError(
                    f"{f.path}: the file says its features were made by {f.name!r} ({f.where}), but --model "
                    f"is {flag!r}; drop --model (the files' name is used)"
                )
        return wanted, fingerprint
    if not named:
        raise UsageError(
            f"{folder}: the files do not name the model that made their features (no TRIDENT `encoder` "
            "attribute, no mvh fingerprint); pass --model NAME"
        )
    unnamed = next((f for f in files if f.name is None), None)
    if unnamed is not None:
        raise UsageError(
            f"{unnamed.path} does not name the model that made its features while {named[0].path} says "
            f"{named[0].name!r}; pass --model {named[0].name} if it is that model, or import it separately"
        )
    return str(named[0].name), fingerprint


def imported_fingerprint(
    name: str,
    carried: StoreFingerprint | None,
    folder: Path,
    tile_px: int,
    mpp: float,
    dim: int,
    dtype: str | None,
) -> StoreFingerprint:
    """The fingerprint of a store of imported features: mvh's own, carried by the files, kept whole;
    else `external:<name>` with unknown weights. The geometry is the files'."""
    if carried is not None:
        extra = {**carried.extra, IMPORTED_FROM: folder.name}
        return dataclasses.replace(
            carried, embedding_dtype=dtype or carried.embedding_dtype, extra=extra
        ).shared()
    return StoreFingerprint(
        model=f"{EXTERNAL}{name}",
        model_config={},
        weights_sha256=EXTERNAL_WEIGHTS,
        weights_path=None,
        embed_dim=dim,
        tile_px=tile_px,
        mpp=mpp,
        mean=None,
        std=None,
        embedding_dtype=dtype or "float32",
        extra={IMPORTED_FROM: folder.name},
    )


def _plain(value: Any) -> Any:
    """A slides-table value as strict JSON has it (NaN and NA -> None, numpy scalars -> Python)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


def slide_table(store: EmbeddingStore) -> list[dict[str, Any]]:
    """Every slide of `store` (done, failed, done with 0 tiles: no tissue) with its level-0 size and um/px
    and the file's name and hash, for a reader who has the tiles but not the store."""
    out = []
    for row in store.slides().to_dict("records"):
        item = {key: _plain(row.get(key)) for key in SLIDE_COLUMNS}
        path = row.get("path")
        item["file"] = PurePath(str(path)).name if isinstance(path, str) and path else None
        out.append(item)
    return out


SLIDE_COLUMNS = (
    "slide_id",
    "status",
    "n_tiles",
    "error",
    "width",
    "height",
    "mpp",
    "mpp_source",
    "file_hash",
    "size",
)


def parquet_metadata(store: EmbeddingStore) -> dict[bytes, bytes]:
    """What a Parquet export carries beside its tiles (schema metadata, JSON values): the fingerprint, mvh's
    version, the store's version and tag, its dataset card and every slide (`slide_table`)."""
    snapshot = {
        "version": store.version,
        "tag": store.location.tag,
        "table_versions": store.table_versions(),
    }
    values = {
        "mvh.fingerprint": store.fingerprint.shared().to_dict(),
        "mvh.version": __version__,
        "mvh.store": snapshot,
        "mvh.card": build_card(store).to_dict(),
        "mvh.slides": slide_table(store),
    }
    return {key.encode(): json.dumps(value, allow_nan=False).encode() for key, value in values.items()}


def imported_hashes(store: EmbeddingStore | None) -> dict[str, str]:
    """slide id -> sha256 of the file each done slide was imported from (slides that recorded one)."""
    if store is None:
        return {}
    out = {}
    for row in store.slides(DONE).to_dict("records"):
        text = row.get(SLIDE_ATTRS)
        saved = json.loads(text) if isinstance(text, str) and text else {}
        if isinstance(saved, dict) and isinstance(saved.get("sha256"), str):
            out[str(row["slide_id"])] = saved["sha256"]
    return out
