"""Spot tiles of ST samples, and a store kept up to date with them (reuse keyed by barcode AND position).

Each sample is one slide of the store (slide_id = sample id) and each spot one tile (tile_id = spot
barcode): a `tile_px` tile at the store's um/px (224 px at 0.5 um/px = 112 um) centred on the spot,
top-left = floor(centre) - size // 2 in level-0 px (HEST's convention), or where a patches file says.
A stored spot embedding is reused only when the barcode AND its tile position match and the image file
is the one it was cut from (its size and `sampled_hash`, the store's one file identity, and the slide's um/px,
kept in the slide's `slide_attrs` with the h5ad's sha256; records from before carry `edge_sha256`, a hash of
the first and last MiB, and are still recognised); everything else is embedded again and reported. The
store is read in one scan.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.core.files import legacy_edge_sha256, sampled_hash, sha256_file
from mvh.errors import DataError, MissingMppError, UsageError
from mvh.progress import SAMPLES, Event, Progress, report
from mvh.store import EmbeddingStore
from mvh.tasks.st_data import STSample, read_patches_index
from mvh.tasks.st_result import DroppedSpot, FileIdentity, SampleSync
from mvh.tasks.stores import read_slides

log = logging.getLogger(__name__)


def file_identity(path: Path) -> dict[str, Any]:
    """Cheap identity of a (possibly huge) image file: name, size and its `sampled_hash`."""
    return {"name": path.name, "size": path.stat().st_size, "file_hash": sampled_hash(path)}


@dataclass
class SpotTiles:
    """Where each spot of one sample is cut: tile top-left (x, y) in level-0 px, from which image."""

    sample: STSample
    kind: str
    image: Path
    barcodes: np.ndarray
    x: np.ndarray
    y: np.ndarray
    slide_mpp: float | None = None
    mpp_source: str | None = None
    dims: tuple[int, int] | None = None
    identity: dict[str, Any] = field(default_factory=dict)

    def key(self) -> pd.MultiIndex:
        """(barcode, x, y) per spot: the key a stored embedding must match to be reused."""
        return pd.MultiIndex.from_arrays([self.barcodes.astype(str), self.x, self.y])


def _missing_mpp(sample: STSample) -> MissingMppError:
    return MissingMppError(
        f"{sample.wsi}: no um/px in its metadata; give it in the --meta CSV's mpp (or "
        f"pixel_size_um_estimated) column for sample {sample.sample_id}, or metadata/{sample.sample_id}.json"
    )


def plan_spot_tiles(
    sample: STSample, spots: pd.DataFrame, mpp: float, tile_px: int, drop_bad: bool
) -> tuple[SpotTiles, list[DroppedSpot]]:
    """The tiles of one sample's spots at the store's geometry, and the spots with bad coordinates.

    A WSI spot is bad when its centre is NaN/inf or outside the slide's level-0 extent (it would become a
    blank or white tile). Bad spots raise DataError naming them, or are returned (and left out of the
    tiles) when `drop_bad`. Patches-file samples are cut where the patches file says.
    """
    from mvh.extractor.slide import open_slide

    cx, cy = spots["x"].to_numpy(np.float64), spots["y"].to_numpy(np.float64)
    reason = np.where(np.isfinite(cx) & np.isfinite(cy), "", "non-finite coordinate").astype(object)
    if sample.wsi is None:
        barcodes, coords = read_patches_index(sample.patches)
        identity = {"image": file_identity(sample.patches), "h5ad_sha256": sha256_file(sample.h5ad)}
        tiles = SpotTiles(sample, "patches", sample.patches, barcodes, coords[:, 0], coords[:, 1],
                          identity=identity)
    else:
        try:
            slide_ctx = open_slide(sample.wsi, mpp=sample.mpp)
        except MissingMppError:
            raise _missing_mpp(sample) from None
        with slide_ctx as slide:
            width, height = slide.dimensions
            slide_mpp, mpp_source = slide.mpp, slide.mpp_source
        with np.errstate(invalid="ignore"):
            outside = (reason == "") & ~((cx >= 0) & (cx < width) & (cy >= 0) & (cy < height))
        reason[outside] = f"outside the slide ({width} x {height} px)"
        tiles = None
    bad = reason != ""
    records = [
        DroppedSpot(sample.sample_id, str(b), float(x), float(y), str(r))
        for b, x, y, r in zip(spots["barcode"][bad], cx[bad], cy[bad], reason[bad], strict=True)
    ]
    if records and not drop_bad:
        shown = "; ".join(f"{r.barcode} ({r.x:g}, {r.y:g}): {r.reason}" for r in records[:3])
        raise DataError(
            f"{sample.h5ad}: {len(records)} spot(s) with bad coordinates: {shown}"
            f"{' ...' if len(records) > 3 else ''}; fix the coordinates or pass --drop-bad-spots"
        )
    if tiles is None:
        good = ~bad
        size_l0 = int(round(tile_px * mpp / slide_mpp))
        # HEST convention: top-left = centre - size // 2 (integer level-0 pixels).
        x = np.floor(cx[good]).astype(np.int64) - size_l0 // 2
        y = np.floor(cy[good]).astype(np.int64) - size_l0 // 2
        identity = {"image": file_identity(sample.wsi), "h5ad_sha256": sha256_file(sample.h5ad),
                    "slide_mpp": slide_mpp}
        tiles = SpotTiles(sample, "wsi", sample.wsi, spots["barcode"].to_numpy(object)[good], x, y,
                          slide_mpp, mpp_source, (width, height), identity)
    return tiles, records


def _stored_attrs(slides: pd.DataFrame, sample_id: str) -> dict[str, Any] | None:
    if "slide_attrs" not in slides.columns:
        return None
    row = slides.loc[slides["slide_id"] == sample_id]
    if not len(row) or not isinstance(row["slide_attrs"].iloc[0], str):
        return None
    try:
        value = json.loads(row["slide_attrs"].iloc[0])
    except (TypeError, json.JSONDecodeError):
        return None
    return value.get("st") if isinstance(value, dict) else None


@dataclass
class SyncReport:
    """What `sync_store` did per sample: reused spots, embedded spots and why."""

    samples: list[SampleSync] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _embed_tiles(tiles: SpotTiles, rows: np.ndarray, embedder: Any, fp: Any, batch_size: int,
                 workers: int) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros((0, fp.embed_dim), np.float32)
    if tiles.kind == "patches":
        import h5py

        barcodes, _ = read_patches_index(tiles.image)
        position = pd.Index(barcodes).get_indexer(tiles.barcodes[rows])
        order = np.argsort(position, kind="stable")
        out = np.empty((len(rows), fp.embed_dim), np.float32)
        with h5py.File(tiles.image, "r") as f:
            images = f["img"]
            if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != fp.tile_px:
                raise DataError(
                    f"{tiles.image}: img has shape {images.shape}; the store holds {fp.tile_px} px RGB tiles "
                    f"at {fp.mpp} um/px (use a store of that geometry or the WSI)"
                )
            step = max(batch_size, 1) * 8
            for start in range(0, len(order), step):
                part = order[start : start + step]
                chunk = np.asarray(images[position[part].tolist()])
                out[part] = embedder.embed_images(chunk, batch_size)
        return out
    from mvh.extractor.pipeline import embed_grid
    from mvh.extractor.slide import open_slide
    from mvh.extractor.tiling import make_tile_grid_at

    with open_slide(tiles.image, mpp=tiles.slide_mpp) as slide:
        grid = make_tile_grid_at(slide, tiles.x[rows], tiles.y[rows], mpp=fp.mpp, tile_px=fp.tile_px,
                                 tile_ids=[str(b) for b in tiles.barcodes[rows]])
    return embed_grid(embedder, grid, batch_size=batch_size, workers=workers)


def _same_image(stored: Any, plan: SpotTiles) -> bool:
    """Whether a recorded image identity names the plan's image file, in the current or the older key."""
    current = plan.identity["image"]
    if not isinstance(stored, dict) or "edge_sha256" not in stored:
        return stored == current
    # written before ST used sampled_hash: compare the key it recorded, so old stores are not all "changed"
    return (stored == {"name": current["name"], "size": current["size"],
                       "edge_sha256": stored["edge_sha256"]}
            and stored["edge_sha256"] == legacy_edge_sha256(plan.image))


def _same_identity(attrs: dict[str, Any] | None, plan: SpotTiles) -> bool:
    """Whether recorded slide attrs say the same as the plan's (an older image key counts as the same)."""
    if attrs is None:
        return False
    rest = {key: value for key, value in attrs.items() if key != "image"}
    return _same_image(attrs.get("image"), plan) and rest == {
        key: value for key, value in plan.identity.items() if key != "image"}


def _image_changed(attrs: dict[str, Any] | None, plan: SpotTiles) -> str | None:
    if attrs is None:
        return None
    if not _same_image(attrs.get("image"), plan):
        return f"image file {plan.image.name} differs from the one embedded"
    if attrs.get("slide_mpp") != plan.identity.get("slide_mpp"):
        return f"slide um/px changed ({attrs.get('slide_mpp')} -> {plan.identity.get('slide_mpp')})"
    return None


def _check_is_st_sample(store: EmbeddingStore, sample_id: str, tile_ids: pd.Series, plan: SpotTiles) -> None:
    """Refuse to overwrite a slide of the same id that holds other tiles (e.g. an `mvh extract` grid)."""
    if not tile_ids.astype(str).isin(plan.barcodes.astype(str)).any():
        raise UsageError(
            f"store {store.uri}: slide {sample_id!r} holds {len(tile_ids)} tiles that are not spots of ST "
            f"sample {sample_id} (e.g. {tile_ids.iloc[0]!r}); evaluate with another store (--store-dir) so "
            "they stay"
        )


def sync_store(
    plans: Sequence[SpotTiles],
    store: EmbeddingStore,
    embedder_factory: Callable[[], Any],
    batch_size: int = 64,
    workers: int = 0,
    progress: Progress | None = None,
) -> tuple[dict[str, np.ndarray], SyncReport]:
    """Bring every sample's spots up to date in `store` and return their embeddings, read in ONE scan.

    A stored spot is reused when its (barcode, x, y) key matches and the image file (and slide um/px) is
    the one it was cut from; other spots are embedded (the embedder is built only if needed) and the sample
    is re-committed in one store commit. Returns per sample the embeddings [n, D] aligned with
    `plan.barcodes`, and a report of what was reused and embedded and why.
    """
    fp = store.fingerprint
    wanted = sorted({plan.sample.sample_id for plan in plans} & set(store.slide_ids()))
    # one streamed scan of the plans' samples (the store's reads refuse NaN/inf: StoreDamagedError)
    rows, emb = read_slides(store, wanted, ("slide_id", "tile_id", "x", "y"))
    slides = store.slides()
    done = set(slides.loc[slides["status"] == "done", "slide_id"]) if len(slides) else set()
    has_attrs = "slide_attrs" in slides.columns
    by_slide = rows.groupby("slide_id", sort=False).indices
    embedder = None
    result = SyncReport()
    if not has_attrs:
        result.notes.append(f"store {store.uri} keeps no per-slide attrs: spots are matched by barcode and "
                            "coordinates only (an image file replaced in place is not detected)")
    out: dict[str, np.ndarray] = {}
    report(progress, Event.TOTAL, SAMPLES, len(plans))
    for plan in plans:
        sid = plan.sample.sample_id
        report(progress, Event.STATUS, SAMPLES, 0, sid)
        stored_idx = np.asarray(by_slide.get(sid, []) if sid in done else [], dtype=np.int64)
        attrs = _stored_attrs(slides, sid)
        if attrs is None and len(stored_idx):
            _check_is_st_sample(store, sid, rows["tile_id"].iloc[stored_idx], plan)
        reasons: list[str] = []
        changed = _image_changed(attrs, plan) if len(stored_idx) else None
        if changed:
            reasons.append(changed)
            stored_idx = stored_idx[:0]
        stored = rows.iloc[stored_idx]
        stored_key = pd.MultiIndex.from_arrays(
            [stored["tile_id"].astype(str).to_numpy(), stored["x"].to_numpy(np.int64),
             stored["y"].to_numpy(np.int64)])
        position = stored_key.get_indexer(plan.key()) if len(stored_key) else np.full(len(plan.barcodes), -1)
        hit = position >= 0
        todo = np.flatnonzero(~hit)
        known = set(stored["tile_id"].astype(str))
        moved = sum(1 for b in plan.barcodes[todo] if str(b) in known)
        extra = len(stored) - int(hit.sum())
        if attrs is not None and attrs.get("h5ad_sha256") != plan.identity["h5ad_sha256"]:
            reasons.append(f"{plan.sample.h5ad.name} changed since it was embedded (sha256 differs)")
        if len(stored):
            if moved:
                reasons.append(f"{moved} spot(s) moved (same barcode, new tile position)")
            if len(todo) - moved:
                reasons.append(f"{len(todo) - moved} new spot(s)")
            if extra > 0:
                reasons.append(f"{extra} stored spot(s) no longer in the sample are removed")
        sample_emb = np.empty((len(plan.barcodes), fp.embed_dim), np.float32)
        sample_emb[hit] = emb[stored_idx[position[hit]]]
        started = time.perf_counter()
        if len(todo):
            store.check_writable()  # before the embedding work, not after it
            if embedder is None:
                embedder = embedder_factory()
            log.info("embedding %d spots of %s into %s", len(todo), sid, store.uri)
            sample_emb[todo] = _embed_tiles(plan, todo, embedder, fp, batch_size, workers)
        if len(todo) or extra > 0 or sid not in done or (has_attrs and not _same_identity(attrs, plan)):
            _commit(store, plan, sample_emb, time.perf_counter() - started)
        if len(stored) == 0:
            status = "embedded"
        else:
            status = "updated" if len(todo) or extra > 0 else "reused"
        result.samples.append(SampleSync(
            sample_id=sid, status=status, n_spots=len(plan.barcodes), n_reused=int(hit.sum()),
            n_embedded=len(todo), reasons=reasons, source=plan.kind,
            image=FileIdentity(**plan.identity["image"]), h5ad_sha256=plan.identity["h5ad_sha256"],
            slide_mpp=plan.identity.get("slide_mpp")))
        if reasons:
            result.notes.append(f"store {store.uri}, sample {sid}: {'; '.join(reasons)} -> "
                                f"{len(todo)} spot(s) embedded again, {int(hit.sum())} reused")
        out[sid] = sample_emb
        report(progress, Event.ADVANCE, SAMPLES, 1)
    return out, result


def _commit(store: EmbeddingStore, plan: SpotTiles, embeddings: np.ndarray, seconds: float) -> None:
    fp = store.fingerprint
    tiles = pd.DataFrame({"tile_id": plan.barcodes.astype(str), "x": plan.x, "y": plan.y,
                          "tile_px": fp.tile_px, "mpp": fp.mpp, "tissue_fraction": np.nan})
    record = {"slide_id": plan.sample.sample_id, "path": str(plan.image),
              "size": plan.identity["image"]["size"],
              "mpp": plan.slide_mpp if plan.kind == "wsi" else fp.mpp,
              "mpp_source": plan.mpp_source if plan.kind == "wsi" else "patches",
              "slide_attrs": json.dumps({"st": plan.identity}, sort_keys=True),
              "seconds": seconds}
    if plan.dims is not None:
        record["width"], record["height"] = plan.dims
    store.add_slide(record, tiles, embeddings)
