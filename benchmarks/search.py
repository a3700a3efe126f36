"""Vector search at scale: Flat vs IVF-PQ vs HNSW at the automatic parameters of `mvh index build`.

    python benchmarks/search.py [--sizes 100000,1000000] [--dim 768] [--kinds flat,ivfpq,hnsw]
                                [--queries 1000] [--batches 1,32,1000] [--repeats 3] [--threads 0]
                                [--json OUT]

Data: `mvh.core.synthetic_embeddings.clustered_embeddings` (100 clusters, 16-d structure per cluster,
isotropic noise, L2-normalised float32), with `--queries` held-out points of the same distribution as queries.
Per size and kind: build time, resident memory added by the index (RSS growth), queries/s at each batch
size (median over up to `--repeats` passes, each pass and all passes cut at 20 s) and recall@10 against
the exact Flat results. Ratio = queries/s of the kind / queries/s of exact Flat at the same batch size.
Goal at 1M: an approximate kind with >= 20x the exact queries/s and recall@10 >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import faiss
import numpy as np
import pandas as pd

from mvh.core.synthetic_embeddings import clustered_embeddings
from mvh.index.row_parts import FrameRows
from mvh.index.vector import VectorIndex, auto_params, build_faiss_index, recall_at_k

K = 10


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def queries_per_second(
    index: VectorIndex, queries: np.ndarray, batch: int, repeats: int, budget_s: float = 20.0
) -> float:
    """Median queries/s over up to `repeats` passes of `queries` in batches of `batch`.

    A pass stops after `budget_s` seconds (at least one batch); passes stop once `budget_s` is spent
    (at least one pass), so exact search at 1M does not take hours at batch 1.
    """
    rates: list[float] = []
    spent = 0.0
    while len(rates) < repeats and (not rates or spent < budget_s):
        start = time.perf_counter()
        done = 0
        for i in range(0, len(queries), batch):
            index.search_ids(queries[i : i + batch], K)
            done += len(queries[i : i + batch])
            if time.perf_counter() - start > budget_s:
                break
        elapsed = time.perf_counter() - start
        spent += elapsed
        rates.append(done / elapsed)
    return statistics.median(rates)


def bench_size(n: int, args: argparse.Namespace) -> list[dict]:
    """All kinds at one database size."""
    t0 = time.perf_counter()
    x, _ = clustered_embeddings(n + args.queries, dim=args.dim, seed=args.seed)
    db, queries = x[:n], np.ascontiguousarray(x[n:])
    print(f"\nN = {n:,} x {args.dim} (generated in {time.perf_counter() - t0:.1f} s)", flush=True)
    rows, exact_ids, exact_rate = [], None, {}
    for kind in ["flat", *[k for k in args.kinds if k != "flat"]]:
        params = auto_params(n, args.dim, kind)
        before = rss_bytes()
        start = time.perf_counter()
        rows = FrameRows(pd.DataFrame(), db)  # the re-rank reads the stored vectors from here
        index = VectorIndex(build_faiss_index(db, params, seed=args.seed), rows=rows, params=params)
        build_s = time.perf_counter() - start
        memory = rss_bytes() - before
        _, ids = index.search_ids(queries, K)
        if kind == "flat":
            exact_ids = ids
        rates = {b: queries_per_second(index, queries, b, args.repeats) for b in args.batches}
        if kind == "flat":
            exact_rate = rates
        row = {
            "n": n, "kind": kind, "params": params.describe(), "build_s": build_s,
            "memory_mb": memory / 2**20,
            "recall@10": recall_at_k(ids, exact_ids, K),
            **{f"qps@{b}": rates[b] for b in args.batches},
            **{f"ratio@{b}": rates[b] / exact_rate[b] for b in args.batches},
        }
        rows.append(row)
        print(
            f"  {kind:6s} {params.describe():45s} build {build_s:7.1f} s  mem {row['memory_mb']:7.0f} MB  "
            f"recall@10 {row['recall@10']:.4f}  "
            + "  ".join(f"b{b}: {rates[b]:9.1f} q/s ({rates[b] / exact_rate[b]:5.1f}x)"
                        for b in args.batches),
            flush=True,
        )
        if kind == "flat" and "flat" not in args.kinds:
            rows.pop()  # measured only as the exact reference
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated database sizes")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--kinds", default="flat,ivfpq,hnsw")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batches", default="1,32,1000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0 = its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, {os.cpu_count()} CPUs, "
          f"GPUs: {faiss.get_num_gpus()}")
    rows = []
    total = time.perf_counter()
    for n in (int(s) for s in args.sizes.split(",")):
        start = time.perf_counter()
        rows += bench_size(n, args)
        print(f"  (N = {n:,} took {time.perf_counter() - start:.0f} s)", flush=True)
    for row in rows:
        if row["kind"] != "flat":
            goal = row["recall@10"] >= 0.95 and row[f"ratio@{max(args.batches)}"] >= 20
            print(f"N={row['n']:,} {row['kind']}: recall@10 {row['recall@10']:.3f}, "
                  f"{row[f'ratio@{max(args.batches)}']:.1f}x exact at batch {max(args.batches)} "
                  f"-> goal (>= 20x, >= 0.95) {'met' if goal else 'NOT met'}")
    print(f"total {time.perf_counter() - total:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
