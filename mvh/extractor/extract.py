"""Batch extraction: slides -> tile grids -> one DataLoader stream -> backbone -> one store commit per slide.

The job: its config, inputs and results are in `mvh.extractor.extract_config`, slide discovery in
`mvh.extractor.slide_inputs`, and one device's pipeline (ONE DataLoader stream of all pending slides, one
store commit per slide, see `mvh.store.store` for the atomic commit protocol) in `mvh.extractor.pipeline`.

Several devices or machines (`--devices 0,1`, `--ray-address`): Ray (`mvh.extractor.ray_extract`), one
embedding actor per device, slides scheduled dynamically, this process the one committer. Done slides are
skipped unless `overwrite`, and only when their path, size and a cheap content hash match the done row: a
different file with the same id is refused (use `slide_id_from="path"`). Any exception while opening,
tiling or decoding one slide fails that slide only. The job shape: `run_extract(ExtractConfig(...),
progress=...) -> ExtractResult`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mvh.core.device import resolve_device
from mvh.core.files import sampled_hash
from mvh.errors import UsageError
from mvh.extractor.extract_config import ExtractConfig, ExtractResult, SlideInput, SlideResult
from mvh.extractor.pipeline import run_pipeline
from mvh.extractor.slide_inputs import _checked_inputs, find_slides
from mvh.progress import SLIDES, Event, Progress, report
from mvh.store import DONE, EmbeddingStore

log = logging.getLogger(__name__)


def parse_devices(text: str | None) -> list[str]:
    """`0,1` -> [cuda:0, cuda:1]; names such as `cpu` or `cuda:1` are kept; empty -> []."""
    if not text:
        return []
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        out.append(f"cuda:{item}" if item.isdigit() else item)
    return out


def _skip_or_refuse(source: SlideInput, row: pd.Series) -> bool:
    """True when `source` is the file a done row was made from (path, size, content hash); else exit 2."""
    try:
        size, digest = source.path.stat().st_size, sampled_hash(source.path)
    except OSError as exc:
        raise UsageError(f"{source.path}: cannot be read ({exc}); check the file") from exc
    same = (row["path"], row["size"], row["file_hash"]) == (str(source.path), size, digest)
    if same:
        return True
    raise UsageError(
        f"slide id {source.slide_id!r} of {source.path} is already done in the store from {row['path']} "
        "(another file, or the same one changed or moved): name slides by their relative path with "
        "--slide-id-from path, or re-embed it with --overwrite"
    )


def run_extract(cfg: ExtractConfig, *, progress: Progress | None = None) -> ExtractResult:
    """Embed the slides of `cfg` into its store; done slides (same file) are skipped unless `overwrite`."""
    start = time.perf_counter()
    given = [s for s in cfg.slides if isinstance(s, SlideInput)]
    paths = [s for s in cfg.slides if not isinstance(s, SlideInput)]
    slides = _checked_inputs(given, cfg.slide_id_from, [str(s.path) for s in given]) if given else []
    if paths or cfg.slides_csv is not None or not given:
        slides += find_slides(
            paths, cfg.recursive, cfg.glob, cfg.slides_csv, cfg.slide_mpp, cfg.slide_id_from
        )
        slides = _checked_inputs(slides, "stem", [str(p) for p in cfg.slides])
    if EmbeddingStore.exists(cfg.store):
        EmbeddingStore.open(cfg.store).check_writable()  # before loading weights or reading any slide
    devices = list(cfg.devices)
    if cfg.on_ray:
        if cfg.ray_address is None:  # --devices on this machine: a local Ray instance on those devices
            for d in devices:
                resolve_device(d)
        # Built on CPU only to check the weights and compute the fingerprint; the workers hold the model.
        embedder = dataclasses.replace(cfg, precision="auto").embedder("cpu")
    else:
        embedder = cfg.embedder(devices[0] if devices else cfg.device)
    store = EmbeddingStore.open_or_create(cfg.store, embedder.fingerprint(cfg.mpp, cfg.tile_px, cfg.dtype))
    store.check_writable()
    done = store.slides(DONE).set_index("slide_id")
    notes: list[str] = list(store.notes)
    report(progress, Event.TOTAL, SLIDES, len(slides))
    results: list[SlideResult] = []
    todo = []
    for s in slides:
        if s.slide_id in done.index and not cfg.overwrite and _skip_or_refuse(s, done.loc[s.slide_id]):
            results.append(SlideResult(s.slide_id, str(s.path), "skipped"))
            report(progress, Event.ADVANCE, SLIDES)
            continue
        if s.slide_id in done.index and done.loc[s.slide_id, "path"] != str(s.path):
            notes.append(
                f"slide {s.slide_id}: {s.path} replaces the done slide from {done.loc[s.slide_id, 'path']}"
            )
        todo.append(s)
    if cfg.on_ray:
        from mvh.extractor.ray_extract import RayOptions, run_on_ray

        del embedder
        options = RayOptions(
            address=cfg.ray_address or "local", cpus_per_worker=cfg.ray_cpus_per_worker,
            max_retries=cfg.ray_max_retries, workers=cfg.ray_workers or (len(devices) or None),
        )
        results += run_on_ray(cfg, store, todo, options, devices=devices, progress=progress)
        used = sorted({r.device for r in results if r.device}) or devices
    else:
        results += run_pipeline(embedder, store, todo, cfg, progress)
        used = [str(embedder.device)]
    if any(r.status == DONE for r in results):
        store.optimize()
    for r in results:
        if r.status == "failed" and r.error.endswith("(the tiles committed before are kept)"):
            notes.append(f"slide {r.slide_id}: re-embedding failed; its tiles committed before are kept")
    for note in notes:
        report(progress, Event.NOTE, SLIDES, 0, note)
    order = {s.slide_id: i for i, s in enumerate(slides)}
    results.sort(key=lambda r: order.get(r.slide_id, len(order)))
    fp = store.fingerprint
    return ExtractResult(
        cfg.store, fp.model, fp.weights_sha256, used, time.perf_counter() - start, results, notes
    )


def extract_slides(
    inputs: Sequence[SlideInput | Path | str],
    store_uri: str | Path,
    cfg: ExtractConfig,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> ExtractResult:
    """`run_extract` with the slides and store given here; `options` are other ExtractConfig fields."""
    devices = options.pop("devices", None)
    if devices is not None:
        options["devices"] = tuple(devices)
    return run_extract(
        dataclasses.replace(cfg, slides=tuple(inputs), store=str(store_uri), **options), progress=progress
    )
