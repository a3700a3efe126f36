"""Survival MIL at cohort scale: bag loading from a real store, a GBSG2-scale run, training throughput.

    python benchmarks/survival_mil.py load  [--slides 1000 --tiles 2000 --dim 768 --dtype float16]
                                            [--store-dir DIR] [--per-slide 50]
    python benchmarks/survival_mil.py gbsg2 [--tiles 20 100 --dim 768 --dtype float16 --store-dir DIR]
    python benchmarks/survival_mil.py throughput [--patients 64 --dim 384 --tiles 64 512 --repeats 3
                                                  --threads 1]

`load` builds (once; reused from --store-dir) a LanceDB store of --slides slides x --tiles tiles with
`EmbeddingStore.add_slide`, compacts it as `mvh extract` does, then times `StoreBags.load` (one scan of
the cohort's slides) and, on --per-slide slides, the old one-filtered-scan-per-slide reading
(`slide_embeddings`), extrapolated to all slides. It also times one ABMIL training epoch on 64 of the
loaded patients at the default settings and estimates a 5-fold run from it (5 folds x 20 epochs over
64% of the patients as fit set), to put the loading time in proportion.

`gbsg2` is the whole `run_survival` at its defaults (5 folds, 20 epochs, early stopping, CoxPH inner CV)
on a cohort of GBSG2's size and outcomes (686 patients, times and events of sksurv's bundled GBSG2
data), 915 slides (229 patients with two), --tiles tiles per slide, embeddings that carry a noisy
copy of the outcome; it prints the job's own timings (results.json `seconds`).

`throughput` is ABMIL training patients/s, one patient per step vs batches of 16 (unpadded).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mvh.core.device import resolve_device
from mvh.store import EmbeddingStore, StoreFingerprint
from mvh.tasks.survival import (
    StoreBags,
    SurvivalConfig,
    SurvivalSettings,
    run_survival,
    train_abmil,
)


def _fingerprint(dim: int, dtype: str) -> StoreFingerprint:
    return StoreFingerprint(model="synthetic", model_config={}, weights_sha256="random-init",
                            weights_path=None, embed_dim=dim, tile_px=224, mpp=0.5, mean=None, std=None,
                            embedding_dtype=dtype)


def _add(store: EmbeddingStore, slide_id: str, emb: np.ndarray) -> None:
    n = len(emb)
    side = int(np.ceil(np.sqrt(n)))
    tiles = pd.DataFrame({"tile_id": [f"{slide_id}:{i}" for i in range(n)], "x": (np.arange(n) % side) * 448,
                          "y": (np.arange(n) // side) * 448, "tile_px": 224, "mpp": 0.5,
                          "tissue_fraction": 1.0})
    store.add_slide({"slide_id": slide_id, "path": None, "mpp": 0.25, "width": 448 * side,
                     "height": 448 * side}, tiles, emb)


def build_store(path: Path, n_slides: int, tiles: tuple[int, int], dim: int, dtype: str,
                level: np.ndarray | None = None, seed: int = 0) -> EmbeddingStore:
    """A store of `n_slides` slides (tiles uniform in [tiles[0], tiles[1]]), reused when already there."""
    if EmbeddingStore.exists(path):
        store = EmbeddingStore.open(path)
        if len(store.slide_ids()) == n_slides:
            return store
        raise SystemExit(f"{path} holds another store; remove it or pass another --store-dir")
    store = EmbeddingStore.create(path, _fingerprint(dim, dtype))
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim) / np.sqrt(dim)
    start = time.perf_counter()
    for i in range(n_slides):
        n = int(rng.integers(tiles[0], tiles[1] + 1))
        emb = rng.normal(size=(n, dim)).astype(np.float32)
        if level is not None:
            emb += (3.0 * level[i] + rng.normal(0, 1.0, (n, 1))) * direction
        _add(store, f"s{i:05d}", emb)
        if (i + 1) % 100 == 0:
            store.optimize()  # compaction + slide_id index keep each add_slide's lookups fast
            print(f"  built {i + 1}/{n_slides} slides ({time.perf_counter() - start:.0f} s)", flush=True)
    store.optimize()
    return store


def bench_load(args: argparse.Namespace) -> None:
    root = Path(args.store_dir or tempfile.mkdtemp(prefix="mvh_bags_"))
    start = time.perf_counter()
    store = build_store(root / "store", args.slides, (args.tiles, args.tiles), args.dim, args.dtype)
    print(f"store {store.uri}: {args.slides} slides x {args.tiles} tiles x {args.dim} {args.dtype} "
          f"(ready in {time.perf_counter() - start:.0f} s)")
    slides = store.slide_ids()
    patients = {f"P{i:05d}": [s] for i, s in enumerate(slides)}
    start = time.perf_counter()
    bags = StoreBags.load(store, patients)
    one_scan = time.perf_counter() - start
    gb = bags.embeddings.nbytes / 1e9
    print(f"StoreBags.load, one scan : {one_scan:7.1f} s for {len(bags.embeddings):,} tiles "
          f"({gb:.2f} GB in memory, {gb / one_scan:.2f} GB/s)")
    sample = slides[: args.per_slide]
    start = time.perf_counter()
    for s in sample:
        store.slide_embeddings(s)
    per_slide = (time.perf_counter() - start) / len(sample) * len(slides)
    print(f"one scan per slide       : {per_slide:7.1f} s (measured on {len(sample)} slides, extrapolated): "
          f"{per_slide / one_scan:.1f}x the one scan")
    settings = SurvivalSettings()
    device = resolve_device(settings.device)
    ids = list(patients)[:64]
    rng = np.random.default_rng(0)
    time_, event = rng.exponential(size=len(ids)), (rng.random(len(ids)) < 0.7).astype(int)
    epoch_settings = SurvivalSettings(epochs=1)
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    train_abmil([bags[p] for p in ids], time_, event, epoch_settings, device=device)
    per_patient = (time.perf_counter() - start) / len(ids)
    run = 5 * settings.epochs * 0.64 * len(slides) * per_patient
    print(f"ABMIL training           : {1 / per_patient:7.1f} patients/s at the defaults on {device}, "
          f"threads {settings.threads}")
    print(f"5-fold ABMIL run (est.)  : {run:7.0f} s (5 folds x {settings.epochs} epochs x "
          f"{int(0.64 * len(slides))} fit patients); loading = {100 * one_scan / run:.1f}% of it")


def bench_gbsg2(args: argparse.Namespace) -> None:
    from sksurv.datasets import load_gbsg2

    _, y = load_gbsg2()
    time_ = np.asarray(y["time"], dtype=np.float64)
    event = np.asarray(y["cens"]).astype(int)
    n = len(time_)
    rng = np.random.default_rng(0)
    two = np.sort(rng.choice(n, size=229, replace=False))
    slide_patient = np.sort(np.concatenate([np.arange(n), two]))
    score = -np.log(time_)
    level = ((score - score.mean()) / score.std())[slide_patient]
    root = Path(args.store_dir or tempfile.mkdtemp(prefix="mvh_gbsg2_"))
    store = build_store(root / "store", len(slide_patient), tuple(args.tiles), args.dim, args.dtype,
                        level=level)
    rows = [(f"s{i:05d}", f"P{p:03d}", time_[p], event[p]) for i, p in enumerate(slide_patient)]
    cohort = root / "cohort.csv"
    pd.DataFrame(rows, columns=["slide_id", "patient_id", "time", "event"]).to_csv(cohort, index=False)
    start, cpu = time.perf_counter(), time.process_time()
    result = run_survival(SurvivalConfig(cohort, store.uri, root / "out", SurvivalSettings()))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    s = result.seconds
    print(f"GBSG2 scale: {result.cohort.n_patients} patients, {result.cohort.n_slides} slides, "
          f"{result.cohort.n_tiles:,} tiles x {args.dim} {args.dtype}, defaults, device {result.device}, "
          f"threads {result.settings.threads}")
    print(f"  total {wall:.1f} s wall, {cpu:.1f} s CPU: validate {s['validate']:.1f} s, "
          f"load bags {s['load_bags']:.1f} s ({100 * s['load_bags'] / wall:.1f}%), "
          f"cross-validation {s['cross_validation']:.1f} s")
    print(f"  epochs run per fold {[f.epochs_run for f in result.folds]}")
    print(f"  C-index abmil {result.abmil.c_index.mean:.3f} ± {result.abmil.c_index.std:.3f}, "
          f"coxph {result.coxph.c_index.mean:.3f} ± {result.coxph.c_index.std:.3f}")


def patients_per_s(bags: list[np.ndarray], time_: np.ndarray, event: np.ndarray, batch: int, args) -> float:
    """Median patients/s of one training epoch with `batch` patients per optimiser step."""
    settings = SurvivalSettings(loss="nll", epochs=1, batch_size=batch, max_tiles=args.max_tiles,
                                device=args.device)
    device = resolve_device(args.device)
    train_abmil(bags, time_, event, settings, device=device)
    rates = []
    for r in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_abmil(bags, time_, event, settings, seed=r, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(bags) / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_throughput(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(int(rng.integers(*args.tiles)), args.dim)).astype(np.float32)
            for _ in range(args.patients)]
    time_ = rng.exponential(size=args.patients)
    event = (rng.random(args.patients) < 0.7).astype(int)
    one = patients_per_s(bags, time_, event, 1, args)
    batched = patients_per_s(bags, time_, event, 16, args)
    print(f"device {resolve_device(args.device)}, threads {torch.get_num_threads()}, "
          f"{args.patients} patients, dim {args.dim}, tiles {args.tiles[0]}-{args.tiles[1]}")
    print(f"one patient per step : {one:8.1f} patients/s (median of {args.repeats})")
    print(f"16 patients per step : {batched:8.1f} patients/s (median of {args.repeats})")
    print(f"ratio                : {batched / one:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    load = sub.add_parser("load", help="bag loading from a store on disk")
    load.add_argument("--slides", type=int, default=1000)
    load.add_argument("--tiles", type=int, default=2000)
    load.add_argument("--dim", type=int, default=768)
    load.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    load.add_argument("--store-dir", default=None)
    load.add_argument("--per-slide", type=int, default=50)
    gbsg2 = sub.add_parser("gbsg2", help="the whole run_survival at GBSG2 scale")
    gbsg2.add_argument("--tiles", type=int, nargs=2, default=(20, 100))
    gbsg2.add_argument("--dim", type=int, default=768)
    gbsg2.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    gbsg2.add_argument("--store-dir", default=None)
    throughput = sub.add_parser("throughput", help="ABMIL training patients/s")
    throughput.add_argument("--patients", type=int, default=64)
    throughput.add_argument("--dim", type=int, default=384)
    throughput.add_argument("--tiles", type=int, nargs=2, default=(64, 512))
    throughput.add_argument("--repeats", type=int, default=3)
    throughput.add_argument("--max-tiles", type=int, default=4096)
    throughput.add_argument("--device", default="auto")
    throughput.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"load": bench_load, "gbsg2": bench_gbsg2, "throughput": bench_throughput}[args.bench](args)


if __name__ == "__main__":
    main()
