"""`run_import`: a folder of per-slide h5 files (TRIDENT's, CLAM's or mvh's own) into a store.

The store's model is the one the files name (`mvh.interop.provenance`): `external:<name>`, or the
whole fingerprint of mvh's own export. Each file's geometry comes from its attributes
(`mvh.interop.geometry`) or the flags that supply what is missing; every attribute, both dataset dtypes and
the file's tile order are kept in the slide row's `attrs` column, so an export writes them back exactly.
A broken file fails alone (recorded, exit 1); an empty slide (TRIDENT's `features` of shape (0,)) is done
with 0 tiles. Slide ids are checked before anything is written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.core.files import sha256_file
from mvh.errors import DataError, UsageError
from mvh.interop.geometry import Geometry, resolve_geometry
from mvh.interop.kept_attrs import file_order, kept_attrs
from mvh.interop.provenance import (
    FileModel,
    choose_model,
    imported_fingerprint,
    imported_hashes,
    read_file_model,
)
from mvh.interop.trident import H5Slide, files_that_crash_hdf5, read_h5, read_h5_header
from mvh.jobs import JobResult
from mvh.progress import FILES, Event, Progress, report
from mvh.store import DONE, EmbeddingStore, StoreFingerprint
from mvh.store.card import write_card
from mvh.store.schema import OLD_SLIDE_ATTRS, SLIDE_ATTRS
from mvh.store.slide_ids import check_slide_id

ATTRS = SLIDE_ATTRS  # the slides table's nullable JSON column of per-slide attributes
CONVENTION_NOTE = (
    "TRIDENT magnifications read as um/px = 10 / magnification (TRIDENT's convention: 20x = 0.5)"
)


def _positive(value: float | None, flag: str) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise UsageError(f"{flag} must be a finite number > 0, got {value}")


@dataclass(frozen=True)
class ImportConfig:
    """`mvh import`: which folder, which store, and the geometry the files may lack."""

    h5_dir: Path
    store: str
    model: str | None = None  # only for files that do not name their model
    mpp: float | None = None
    tile_px: int | None = None
    slide_mpp: float | None = None
    embedding_dtype: str | None = None  # None: mvh's fingerprint in the files, else float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "h5_dir", Path(self.h5_dir))
        object.__setattr__(self, "store", str(self.store))
        if self.model is not None and not self.model.strip():
            raise UsageError("--model is empty; name the tool/model that made the features")
        _positive(self.mpp, "--mpp")
        _positive(self.slide_mpp, "--slide-mpp")
        if self.tile_px is not None and self.tile_px <= 0:
            raise UsageError(f"--tile-px must be > 0, got {self.tile_px}")
        if self.embedding_dtype not in (None, "float32", "float16"):
            raise UsageError(f"--dtype {self.embedding_dtype!r}: use float32 or float16")

    def files(self) -> list[Path]:
        """The h5 files to import, sorted by name (UsageError when the folder is absent or holds none)."""
        if not self.h5_dir.is_dir():
            raise UsageError(
                f"{self.h5_dir}: not a folder; point H5_DIR at a folder of TRIDENT/CLAM .h5 files"
            )
        files = sorted(p for p in self.h5_dir.glob("*.h5") if p.is_file())
        if not files:
            inside = sorted(
                p.relative_to(self.h5_dir).as_posix()
                for p in self.h5_dir.glob("**/")
                if p != self.h5_dir and any(not f.name.endswith("_patches.h5") for f in p.glob("*.h5"))
            )  # TRIDENT's patches/<name>_patches.h5 hold coordinates only
            hint = f" (folders below holding .h5 files: {', '.join(inside[:4])})" if inside else ""
            raise UsageError(
                f"{self.h5_dir}: no .h5 files found; point at a folder of TRIDENT/CLAM feature files"
                f"{hint}, e.g. TRIDENT's features_<encoder>/ or CLAM's h5_files/"
            )
        return files


@dataclass
class ImportedFile:
    """One imported file."""

    file: str
    slide_id: str
    n_tiles: int


@dataclass
class FailedFile:
    """One file that could not be imported, and why."""

    file: str
    slide_id: str | None
    error: str


@dataclass
class ImportResult(JobResult, job="import"):
    """What `run_import` did: files imported, empty slides, failures, notes, the store's fingerprint."""

    store: str
    model: str
    n_files: int
    imported: list[ImportedFile] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    failed: list[FailedFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # slides whose file is unchanged since its import
    notes: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None

    @property
    def n_tiles(self) -> int:
        """Tiles imported in this run."""
        return sum(f.n_tiles for f in self.imported)

    @property
    def exit_code(self) -> int:
        """0 when every file was imported, 1 when some failed."""
        return 1 if self.failed else 0


class _Notes:
    """Notes of a job: kept for results.json and reported as progress NOTE events, each once."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.items: list[str] = []

    def __call__(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)
            report(self.progress, Event.NOTE, FILES, 0, text)


def _scan(
    cfg: ImportConfig, result: ImportResult
) -> tuple[list[tuple[str, H5Slide, Geometry]], list[FileModel]]:
    """Headers, geometry and named model of every file; slide ids checked before anything is written."""
    owners: dict[str, Path] = {}
    good = []
    models = []
    files = cfg.files()
    crashed = files_that_crash_hdf5(files)
    for path in files:
        header, error = None, ""
        try:
            if path in crashed:
                raise DataError(crashed[path])
            header = read_h5_header(path)
            model = read_file_model(header)
        except DataError as exc:
            error = " ".join(str(exc).split())
        name = path.stem if header is None or header.name is None else header.name
        slide_id = check_slide_id(name, f"{path} (attribute coords.name or file name)")
        if slide_id in owners:
            raise UsageError(
                f"{path} and {owners[slide_id]} both hold slide {slide_id!r}; rename one or import separately"
            )
        owners[slide_id] = path
        if header is not None:
            try:
                good.append((slide_id, header, resolve_geometry(header, cfg.tile_px, cfg.mpp, cfg.slide_mpp)))
                models.append(model)
                continue
            except DataError as exc:
                error = " ".join(str(exc).split())
        result.failed.append(FailedFile(str(path), slide_id, error))
    return good, models


def _open_store(
    cfg: ImportConfig,
    scanned: list[tuple[str, H5Slide, Geometry]],
    model: str,
    carried: StoreFingerprint | None,
) -> EmbeddingStore | None:
    with_dim = [(h, g) for _, h, g in scanned if h.dim is not None]
    if with_dim:
        header, geometry = with_dim[0]
        fp = imported_fingerprint(
            model,
            carried,
            cfg.h5_dir,
            geometry.tile_px,
            geometry.mpp,
            int(header.dim),
            cfg.embedding_dtype,  # type: ignore[arg-type]
        )
        return EmbeddingStore.open_or_create(cfg.store, fp)
    if EmbeddingStore.exists(cfg.store):
        return EmbeddingStore.open(cfg.store)
    if scanned:
        raise UsageError(
            f"{cfg.h5_dir}: no file holds embeddings, so their dim is unknown; "
            "import them into an existing store of that dim (--store)"
        )
    return None


def _int_attr(attrs: dict[str, Any], key: str) -> int | None:
    value = attrs.get(key)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    return None


def _text_attr(attrs: dict[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    return value if isinstance(value, str) and value else None


def _commit(
    store: EmbeddingStore, slide_id: str, slide: H5Slide, geometry: Geometry, sha256: str, note: _Notes
) -> int:
    fp = store.fingerprint
    x, y = slide.coords[:, 0], slide.coords[:, 1]
    n = len(slide.coords)
    tile_ids = slide.tile_ids or [f"{slide_id}:{a}:{b}:{geometry.size_l0}" for a, b in zip(x, y, strict=True)]
    if len(set(tile_ids)) != n:
        raise DataError(f"{slide.path}: two tiles share a tile id (or coordinates); fix the file")
    # Own tile ids can be unique while coordinates repeat: the same tile would be stored twice.
    shared = n - len(np.unique(slide.coords, axis=0)) if n else 0
    if shared:
        raise DataError(f"{slide.path}: {shared} tile(s) repeat another tile's coordinates; fix the file")
    tiles = pd.DataFrame(
        {
            "tile_id": pd.Series(tile_ids, dtype=object),
            "x": x,
            "y": y,
            "tile_px": np.full(n, fp.tile_px),
            "mpp": np.full(n, fp.mpp),
            "tissue_fraction": slide.tissue_fraction
            if slide.tissue_fraction is not None
            else np.full(n, np.nan, np.float32),
        }
    )
    fa, ca = slide.file_attrs, slide.coords_attrs
    width = _int_attr(fa, "width") if "width" in fa else _int_attr(ca, "level0_width")
    height = _int_attr(fa, "height") if "height" in fa else _int_attr(ca, "level0_height")
    record = {
        "slide_id": slide_id,
        "path": _text_attr(fa, "slide_path") or slide.path.name,  # a name: the store may be shared
        "size": slide.path.stat().st_size,
        "width": width,
        "height": height,
        "mpp": geometry.slide_mpp,
        "mpp_source": _text_attr(fa, "mpp_source") or geometry.sources.get("slide_mpp", "unknown"),
        "seconds": 0.0,
    }
    if {ATTRS, OLD_SLIDE_ATTRS} & set(store.schema()["slides"].names):  # under either name (before 0.2)
        order = file_order(x, y, tile_ids)
        record[ATTRS] = json.dumps({**kept_attrs(slide, geometry, order, note), "sha256": sha256})
    else:
        note(f"store {store.uri} has no `{ATTRS}` column: the files' attributes are not kept for export")
    dim = slide.features.shape[1] if slide.features.ndim == 2 and slide.features.shape[1] else store.dim
    features = slide.features if n else np.empty((0, dim), np.float32)
    if fp.embedding_dtype == "float16" and n and np.abs(features).max() > np.finfo(np.float16).max:
        raise DataError(f"{slide.path}: features exceed the float16 range; import with --dtype float32")
    store.add_slide(record, tiles, features)
    return n


def run_import(cfg: ImportConfig, *, progress: Progress | None = None) -> ImportResult:
    """Index a folder of per-slide h5 files into a store; a broken file fails alone."""
    result = ImportResult(store=cfg.store, model=cfg.model or "", n_files=len(cfg.files()))
    note = _Notes(progress)
    report(progress, Event.TOTAL, FILES, result.n_files)
    scanned, models = _scan(cfg, result)
    report(progress, Event.ADVANCE, FILES, len(result.failed))
    carried = None
    if models:
        result.model, carried = choose_model(cfg.model, models, cfg.h5_dir)
    store = _open_store(cfg, scanned, result.model, carried)
    if store is not None:
        store.check_writable()
    if any("10/mag" in v for _, _, g in scanned for v in g.sources.values()):
        note(CONVENTION_NOTE)
    imported = imported_hashes(store)
    for slide_id, header, geometry in scanned:
        report(progress, Event.STATUS, FILES, 0, header.path.name)
        try:
            sha256 = sha256_file(header.path)  # an unchanged re-import is recognised by it
            if imported.get(slide_id) == sha256:  # as extract skips done slides: no commit, index stays fresh
                result.skipped.append(slide_id)
                report(progress, Event.ADVANCE, FILES, 1)
                continue
            fp = store.fingerprint  # type: ignore[union-attr]
            if (geometry.tile_px, round(geometry.mpp, 6)) != (fp.tile_px, round(fp.mpp, 6)):
                raise DataError(
                    f"{header.path}: tiles of {geometry.tile_px} px at {geometry.mpp:g} um/px, but the store "
                    f"holds {fp.tile_px} px at {fp.mpp:g} um/px; import this file into another --store"
                )
            if header.dim is not None and header.dim != fp.embed_dim:
                raise DataError(
                    f"{header.path}: features have dim {header.dim}, the store {cfg.store} has {fp.embed_dim}"
                )
            n = _commit(store, slide_id, read_h5(header.path), geometry, sha256, note)  # type: ignore[arg-type]
        except OSError as exc:
            result.failed.append(
                FailedFile(str(header.path), slide_id, f"{header.path}: cannot read ({exc})")
            )
        except DataError as exc:
            result.failed.append(FailedFile(str(header.path), slide_id, " ".join(str(exc).split())))
        else:
            result.imported.append(ImportedFile(str(header.path), slide_id, n))
            if n == 0:
                result.empty.append(slide_id)
                note(f"{header.path}: slide {slide_id} has no tiles; recorded as done with 0 tiles")
        report(progress, Event.ADVANCE, FILES, 1)
    _record_failures(store, result, note)
    if result.skipped:
        note(f"{len(result.skipped)} file(s) unchanged since their import (same sha256): skipped")
    if store is not None and (result.imported or result.failed):
        write_card(store)  # the card's slide list follows the import; owner fields are kept
    result.notes = note.items
    result.fingerprint = None if store is None else store.fingerprint.to_dict()
    return result


def _record_failures(store: EmbeddingStore | None, result: ImportResult, note: _Notes) -> None:
    if store is None:
        if result.failed:
            note("no file could be read, so no store was created")
        return
    done = set(store.slide_ids(DONE))
    for failed in result.failed:
        if failed.slide_id in done:
            note(f"{failed.file} failed; the slide {failed.slide_id} already in the store is kept as it was")
            continue
        path = Path(failed.file)
        record = {"slide_id": failed.slide_id, "path": path.name, "size": path.stat().st_size}
        store.add_failed_slide(record, failed.error)


def import_h5(
    h5_dir: Path | str,
    store_uri: str | Path,
    model: str | None = None,
    mpp: float | None = None,
    tile_px: int | None = None,
    slide_mpp: float | None = None,
) -> EmbeddingStore:
    """Import a folder of h5 files and return the store (DataError if any file failed)."""
    result = run_import(
        ImportConfig(Path(h5_dir), str(store_uri), model, mpp=mpp, tile_px=tile_px, slide_mpp=slide_mpp)
    )
    if result.failed:
        raise DataError("; ".join(f.error for f in result.failed))
    return EmbeddingStore.open(store_uri)
