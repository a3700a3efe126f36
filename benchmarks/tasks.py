"""Wall time of the task evaluations on synthetic data of the paper's scale.

- ST: `evaluate_st` (StandardScaler -> PCA(256) -> Ridge per fold, HVGs per fold; `--regressor ridge` is
  HEST's predict_folds, `ridge-exact` the direct solve) on N spots x D dims with
  G target genes out of 5*G measured, random k-fold and leave-one-study-out; plus reading those spot
  embeddings back from a LanceDB store (`spot_embeddings`), which is what `mvh eval st` adds on a rerun.
- Classification: UNI's linear probe (its objective, L-BFGS, C = D * classes / 100), the sklearn variant,
  and cosine kNN (k=20) on N tiles x D dims, 80/20 given split.

    .venv/bin/python benchmarks/tasks.py                       # 50k x 768 x 200; 100k x 768
    .venv/bin/python benchmarks/tasks.py --spots 5000 --tiles 10000 --repeats 1   # quick

Prints medians over --repeats runs (seconds) and the planted-signal scores as a sanity check.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mvh.tasks.classify import ClassifierSettings, evaluate_classification
from mvh.tasks.st_eval import STProtocol, evaluate_st


def st_cohort(n: int, dim: int, n_genes: int, n_studies: int, seed: int = 0):
    """Spots of `n_studies` studies (10 samples each): embeddings with a planted low-rank gene signal."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 8)).astype(np.float32)
    X = (latent @ rng.normal(size=(8, dim)) + rng.normal(size=(n, dim))).astype(np.float32)
    rate = np.exp(np.clip(0.5 + 0.4 * latent @ rng.normal(size=(8, n_genes)), -5, 4))
    counts = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    sample = rng.integers(0, 10 * n_studies, n)
    spots = pd.DataFrame({"sample_id": [f"s{i}" for i in sample], "patient": [f"p{i // 2}" for i in sample],
                          "study": [f"study{i % n_studies}" for i in sample], "x": 0.0, "y": 0.0,
                          "barcode": [f"b{i}" for i in range(n)]})
    return X, counts, [f"g{i}" for i in range(n_genes)], spots


def bench_st(args: argparse.Namespace) -> None:
    X, counts, genes, spots = st_cohort(args.spots, args.dim, 5 * args.genes, args.studies)
    cfg = STProtocol(splits=("random", "loso"), folds=args.folds, top_genes=args.genes, seed=0,
                     regressor=args.regressor)
    times, cpu, res = [], [], None
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        res, _ = evaluate_st({"m": X}, counts, genes, spots, cfg)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    n_fits = args.folds + args.studies
    m = res.models["m"].splits
    print(f"ST {args.spots} spots x {args.dim}-d, top {args.genes} of {5 * args.genes} genes, "
          f"{args.folds}-fold random + {args.studies}-study LOSO = {n_fits} PCA+Ridge fits, "
          f"--regressor {args.regressor} (PCA solvers {sorted(set(m['random'].pca_solver_per_fold))})")
    med = statistics.median(times)
    print(f"  evaluate_st: median {med:.2f} s wall ({med / n_fits:.2f} s/fold), "
          f"{statistics.median(cpu):.2f} s CPU (all threads)"
          f"\n  PCC random {m['random'].pcc.mean:.4f} +- {m['random'].pcc.std:.4f}, "
          f"loso {m['loso'].pcc.mean:.4f} +- {m['loso'].pcc.std:.4f}")
    if args.store:
        from mvh.store import EmbeddingStore, StoreFingerprint
        from mvh.tasks.st_data import spot_embeddings

        fp = StoreFingerprint("bench", {}, "random-init", None, args.dim, 224, 0.5, None, None)
        with tempfile.TemporaryDirectory() as tmp:
            store = EmbeddingStore.create(Path(tmp) / "s.lance", fp)
            t = time.perf_counter()
            for sid, rows in spots.groupby("sample_id").indices.items():
                tiles = pd.DataFrame({"tile_id": spots["barcode"].iloc[rows], "x": 0, "y": 0, "tile_px": 224,
                                      "mpp": 0.5, "tissue_fraction": np.nan})
                store.add_slide({"slide_id": sid}, tiles, X[rows])
            write = time.perf_counter() - t
            reads = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                Y, found = spot_embeddings(store, spots)
                reads.append(time.perf_counter() - t)
            assert found.all() and np.allclose(Y, X)
        print(f"  store: write {write:.2f} s ({spots['sample_id'].nunique()} samples), "
              f"read back spot_embeddings median {statistics.median(reads):.2f} s")


def bench_classify(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, args.classes, args.tiles)
    X = rng.normal(size=(args.classes, args.dim))[y] * 0.05 + rng.normal(size=(args.tiles, args.dim))
    X = X.astype(np.float32)
    split = np.where(rng.random(args.tiles) < 0.8, "train", "test")
    print(f"classification {args.tiles} tiles x {args.dim}-d, {args.classes} classes, 80/20 given split")
    for method, probe in (("probe", "uni"), ("probe", "sklearn"), ("knn", "uni")):
        times, cpu, rows = [], [], []
        settings = ClassifierSettings(methods=(method,), probe=probe)
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            _, _, rows, _ = evaluate_classification({"m": X}, y.astype(str), settings, split=split)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        name = f"{method} ({probe})" if method == "probe" else method
        print(f"  {name:15s}: median {statistics.median(times):.2f} s wall, "
              f"{statistics.median(cpu):.2f} s CPU   balanced accuracy {rows[0].balanced_accuracy.mean:.3f}")


def main() -> None:
    """Run the benchmarks; wall time includes waiting for CPUs other processes hold, CPU time does not."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spots", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--genes", type=int, default=200)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--regressor", default="ridge", help="ridge (HEST's predict_folds) | ridge-exact | ...")
    p.add_argument("--studies", type=int, default=4)
    p.add_argument("--tiles", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-store", dest="store", action="store_false", help="Skip the store round trip.")
    p.add_argument("--skip", choices=("st", "classify"), default=None)
    p.add_argument("--threads", type=int, default=None, help="Cap BLAS/OpenMP threads (threadpoolctl).")
    args = p.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads):
        print(f"BLAS/OpenMP threads: {args.threads or 'library default'}")
        if args.skip != "st":
            bench_st(args)
        if args.skip != "classify":
            bench_classify(args)


if __name__ == "__main__":
    main()
