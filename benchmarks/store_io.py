"""Store I/O on local disk vs a local S3 server (SeaweedFS on loopback): the cost of sharing over S3.

    python benchmarks/store_io.py [--tiles 1000000] [--slide-tiles 5000] [--dim 768] [--dtype float16]
                                  [--reads 20] [--json OUT]

Builds the same store twice, in a temporary folder and in `s3://bench/store.lance` on a SeaweedFS server
started here (127.0.0.1, free ports, temporary data folder), through `EmbeddingStore.add_slide` (one
atomic commit per slide, as extraction does; synthetic embeddings). Then measures: append throughput
(tiles/s committed); then, through a read-only handle as a consumer opens it: the handle's first per-slide
read (it scans the slide -> row ids map once), per-slide read latency (`slide_embeddings` of `--reads`
other random slides, read by row id: median, p95; interleaved with the same reads through the filtered scan
a writable handle uses; on S3 also the object GETs per read, counted by the server), a full-table
embedding scan (`all_embeddings`, MB/s of embedding bytes), and the cohort readers' one-scan read of half
the slides
(`all_embeddings(slide_ids=...)`, what survival bags and the ST and classification readers do). Prints
the S3/local ratio of each. Goal: a 5,000-tile slide from local S3 within 2x of local disk; full scans
within 1.5x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _fingerprint(dim: int, dtype: str):
    from mvh.store import StoreFingerprint

    return StoreFingerprint(
        model="bench",
        model_config={},
        weights_sha256="random-init",
        weights_path=None,
        embed_dim=dim,
        tile_px=224,
        mpp=0.5,
        mean=None,
        std=None,
        embedding_dtype=dtype,
    )


def _slide(i: int, n: int, dim: int, rng: np.random.Generator) -> tuple[dict, pd.DataFrame, np.ndarray]:
    side = int(np.ceil(np.sqrt(n)))
    x = (np.arange(n) % side) * 448
    y = (np.arange(n) // side) * 448
    slide_id = f"slide{i:05d}"
    tiles = pd.DataFrame(
        {
            "tile_id": [f"{slide_id}:{a}:{b}:448" for a, b in zip(x, y, strict=True)],
            "x": x,
            "y": y,
            "tile_px": 224,
            "mpp": 0.5,
            "tissue_fraction": 1.0,
        }
    )
    record = {
        "slide_id": slide_id,
        "path": f"/data/{slide_id}.svs",
        "size": 1,
        "width": side * 448,
        "height": side * 448,
        "mpp": 0.25,
        "mpp_source": "metadata",
    }
    return record, tiles, rng.standard_normal((n, dim), dtype=np.float32)


def _filtered_read(store, slide_id: str):
    """`slide_embeddings` through the filtered scan a writable handle uses, on the same read-only handle."""
    row = store.reader.done_row(slide_id)
    return store.reader.split(store.reader.filtered_slide(row, ["embedding"]))


def measure(where, args, gets=None) -> dict[str, float]:
    """The figures of one store; `gets()` (S3 only) says how many GETs the server has answered so far."""
    from mvh.store import EmbeddingStore
    from mvh.store.location import parse_location

    rng = np.random.default_rng(0)
    store = EmbeddingStore.create(where, _fingerprint(args.dim, args.dtype))
    n_slides = args.tiles // args.slide_tiles
    start = time.perf_counter()
    for i in range(n_slides):
        store.add_slide(*_slide(i, args.slide_tiles, args.dim, rng))
    append_s = time.perf_counter() - start
    start = time.perf_counter()
    store.optimize()
    optimize_s = time.perf_counter() - start
    from mvh.store.location import StoreLocation

    location = where if isinstance(where, StoreLocation) else parse_location(where)
    store = EmbeddingStore.open(dataclasses.replace(location, read_only=True))  # a consumer's handle
    ids = store.slide_ids()
    chosen = [str(s) for s in rng.choice(ids, size=min(args.reads + 1, len(ids)), replace=False)]
    start = time.perf_counter()
    assert len(store.slide_embeddings(chosen[0])[0]) == args.slide_tiles
    first_s = time.perf_counter() - start
    reads, requests, filtered, filtered_requests = [], [], [], []
    for k, slide_id in enumerate(chosen[1:]):
        for path in ("rows", "filter") if k % 2 else ("filter", "rows"):  # same load, alternating order
            before = gets() if gets else 0
            t = time.perf_counter()
            emb, _ = store.slide_embeddings(slide_id) if path == "rows" else _filtered_read(store, slide_id)
            (reads if path == "rows" else filtered).append(time.perf_counter() - t)
            (requests if path == "rows" else filtered_requests).append((gets() if gets else 0) - before)
            assert len(emb) == args.slide_tiles
    start = time.perf_counter()
    rows, emb = store.all_embeddings(columns=("slide_id", "tile_id"))
    scan_s = time.perf_counter() - start
    half = ids[: len(ids) // 2]
    start = time.perf_counter()
    store.all_embeddings(columns=("slide_id",), slide_ids=half)
    cohort_s = time.perf_counter() - start
    mb = len(rows) * args.dim * np.dtype(args.dtype).itemsize / 1e6
    figures = {
        "append_tiles_per_s": n_slides * args.slide_tiles / append_s,
        "optimize_s": optimize_s,
        "slide_first_read_ms": 1000 * first_s,
        "slide_read_median_ms": 1000 * statistics.median(reads),
        "slide_read_p95_ms": 1000 * float(np.percentile(reads, 95)),
        "filtered_read_median_ms": 1000 * statistics.median(filtered),
        "full_scan_mb_per_s": mb / scan_s,
        "cohort_read_mb_per_s": (mb / 2) / cohort_s,
    }
    if gets:
        figures["slide_read_gets_median"] = float(statistics.median(requests))
        figures["filtered_read_gets_median"] = float(statistics.median(filtered_requests))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=1_000_000)
    parser.add_argument("--slide-tiles", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from mvh.store.location import parse_location
    from tests.sharing.seaweed import SeaweedS3

    with tempfile.TemporaryDirectory() as tmp:
        local = measure(str(Path(tmp) / "store.lance"), args)
        server = SeaweedS3(Path(tmp) / "seaweed").start()
        try:
            server.create_bucket("bench")
            s3 = measure(
                parse_location("s3://bench/store.lance", env=server.env()),
                args,
                gets=lambda: server.request_counts("bench").get("GET", 0),
            )
        finally:
            server.stop()
    slower = {
        "slide_first_read_ms",
        "slide_read_median_ms",
        "slide_read_p95_ms",
        "filtered_read_median_ms",
        "optimize_s",
    }
    print(f"{args.tiles} tiles x {args.dim} {args.dtype}, {args.slide_tiles} tiles per slide")
    print(f"{'':24s} {'local':>10s} {'S3':>10s} {'S3/local':>9s}")
    ratios = {}
    gets = {key: s3.pop(key) for key in ("slide_read_gets_median", "filtered_read_gets_median")}
    for key, value in gets.items():
        print(f"{'S3 ' + key:24s} {'':>10s} {value:10.1f}")
    for key in local:
        ratio = s3[key] / local[key] if key in slower else local[key] / s3[key]
        ratios[key] = ratio
        print(f"{key:24s} {local[key]:10.1f} {s3[key]:10.1f} {ratio:8.2f}x")
    print("(ratios are 'times slower on S3': time ratio for latencies, rate ratio for throughputs)")
    if args.json:
        args.json.write_text(
            json.dumps({"local": local, "s3": s3, "s3_gets": gets, "s3_slower_by": ratios}, indent=2)
        )


if __name__ == "__main__":
    main()
