"""Scale-out of extraction on Ray vs the single-process path, and where tiles are decoded, on this machine.

    python benchmarks/scale_out.py [--copies 8 24] [--model mv_hybrid_tiny] [--repeats 1] [--json OUT]

Extracts `--copies` copies of the real sample slide (54 tissue tiles each) into fresh stores:

- the single-process path (`mvh extract`);
- Ray, the product path (`--ray-address`): each embedding actor plans (tissue detection) and decodes its
  slide itself, inline (`--workers 0`) or in one DataLoader worker process (`--workers 1`);
- Ray, the alternative the design allows (benchmark code only, below): each slide is planned in a Ray CPU
  task and its tiles decoded in Ray CPU tasks, chunks of `--batch-size` tiles as uint8 arrays through the
  object store to the embedding actor (which normalises them, as the product's actor does); slides are
  planned and decoded up to one slide per worker ahead of the actors. These actors reserve no CPU, so
  the cluster's CPUs go to the tasks: with 1 worker they also use the CPU the product's one actor
  leaves idle.

each with 1 and 2 workers on a local 2-node cluster (one CPU each). Every Ray run starts its own actors
(counted); cluster start-up is not counted (paid once per cluster). Prints slides/s, tiles/s, the ratio
to the single process, the median per-slide latency (product: the actor's time on the slide; tasks: the
slide's plan-task start to its last chunk embedded, waits for a busy actor included), Ray's overhead
per slide ((Ray-1-worker seconds - single-process seconds) / slides), and asserts that every run stored
bit-identical embeddings. Given two `--copies` counts, it also prints each way's marginal seconds per
slide, (seconds at the larger count - seconds at the smaller) / (difference in slides): the steady-state
cost of one more slide, free of the per-run fixed costs (actors and task workers start, import torch and
build the model), and Ray's marginal overhead per slide (1-worker inline minus single process). The
script re-runs itself inside a loopback-only network namespace (`unshare -n`, root) so Ray binds
127.0.0.1 only, as the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

NAMESPACE_FLAG = "MVH_BENCH_IN_NETNS"


def _reexec_in_namespace() -> None:
    inner = "ip link set lo up && exec " + " ".join([sys.executable, *map(str, sys.argv)])
    env = {**os.environ, NAMESPACE_FLAG: "1", "RAY_USAGE_STATS_ENABLED": "0"}
    sys.exit(subprocess.run(["unshare", "-n", "sh", "-c", inner], env=env).returncode)


def _product(cfg) -> tuple[float, int, list[float]]:
    """Seconds, tiles and per-slide seconds of `run_extract(cfg)`."""
    from mvh.extractor.extract import run_extract

    start = time.perf_counter()
    result = run_extract(cfg)
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, [r.error for r in result.slides]
    return seconds, result.n_tiles, [r.seconds for r in result.slides]


# ------------------------------------------------------------------ the alternative: tiling in CPU tasks
def _plan_task(source, cfg) -> tuple[dict[str, Any], Any, float]:
    """A Ray CPU task: open and tile one slide; its record, grid and the wall-clock time it started."""
    from mvh.extractor.pipeline import _plan

    started = time.time()
    record, grid = _plan(source, cfg)
    return record, grid, started


def _decode_task(source, grid) -> np.ndarray:
    """A Ray CPU task: the tiles of `grid` (a chunk of one slide) as uint8 [n, tile_px, tile_px, 3]."""
    from mvh.extractor.slide import open_slide
    from mvh.extractor.tiling import read_tile

    with open_slide(source.path, mpp=source.mpp) as slide:
        return np.stack([read_tile(slide, grid, i) for i in range(len(grid))])


class ChunkEmbedder:
    """A Ray actor: the model once; embeds chunks of uint8 tiles decoded elsewhere."""

    def __init__(self, cfg) -> None:
        self.embedder = cfg.embedder("cpu")

    def embed(self, tiles: np.ndarray) -> tuple[np.ndarray, float]:
        """Embeddings of `tiles` and the wall-clock time they were done."""
        import torch

        return self.embedder.embed_uint8(torch.from_numpy(tiles)), time.time()


def _tasks(cfg, n_workers: int) -> tuple[float, int, list[float]]:
    """The alternative pipeline end to end (actors started, every slide committed by this driver)."""
    import ray

    from mvh.extractor.slide_inputs import find_slides
    from mvh.store import EmbeddingStore

    start = time.perf_counter()
    driver = cfg.embedder("cpu")  # as run_extract: check the weights, compute the store's fingerprint
    store = EmbeddingStore.open_or_create(cfg.store, driver.fingerprint(cfg.mpp, cfg.tile_px, cfg.dtype))
    slides = sorted(find_slides(cfg.slides), key=lambda s: s.path.stat().st_size, reverse=True)
    plan = ray.remote(num_cpus=1)(_plan_task)
    decode = ray.remote(num_cpus=1)(_decode_task)
    # the actors hold the model; the cluster's CPUs go to the planning and decoding tasks
    actors = [ray.remote(num_cpus=0)(ChunkEmbedder).remote(cfg) for _ in range(n_workers)]
    queue = deque(slides)
    planning: dict[Any, Any] = {}
    chunks: dict[Any, tuple[int, int]] = {}  # embedding ref -> (slide number, first tile)
    slide_state: dict[int, dict[str, Any]] = {}
    load = [0] * n_workers
    tiles = 0
    latencies = []

    def plan_next() -> None:
        if queue:
            source = queue.popleft()
            planning[plan.remote(source, cfg)] = source

    for _ in range(n_workers + n_workers):  # one slide per actor plus one ahead each
        plan_next()
    while planning or chunks:
        ready, _ = ray.wait([*planning, *chunks], num_returns=1)
        ref = ready[0]
        if ref in planning:
            source = planning.pop(ref)
            record, grid, started = ray.get(ref)
            a = load.index(min(load))
            k = len(slide_state)
            slide_state[k] = {
                "record": record,
                "grid": grid,
                "started": started,
                "buffer": np.empty((len(grid), driver.dim), dtype=np.float32),
                "left": 0,
                "done": 0.0,
                "actor": a,
            }
            for first in range(0, len(grid), cfg.batch_size):
                part = grid.subset(np.arange(first, min(first + cfg.batch_size, len(grid))))
                chunks[actors[a].embed.remote(decode.remote(source, part))] = (k, first)
                slide_state[k]["left"] += 1
                load[a] += 1
            continue
        k, first = chunks.pop(ref)
        emb, finished = ray.get(ref)
        state = slide_state[k]
        state["buffer"][first : first + len(emb)] = emb
        state["done"] = max(state["done"], finished)
        state["left"] -= 1
        load[state["actor"]] -= 1
        if state["left"] == 0:
            record = dict(state["record"], seconds=state["done"] - state["started"])
            store.add_slide(record, state["grid"].to_frame(), state["buffer"])
            tiles += len(state["grid"])
            latencies.append(record["seconds"])
            del slide_state[k]["buffer"]
            plan_next()
    store.optimize()
    for actor in actors:
        ray.kill(actor)
    return time.perf_counter() - start, tiles, latencies


def _embeddings(store_path: Path) -> tuple[list[str], np.ndarray]:
    from mvh.store import EmbeddingStore

    frame, emb = EmbeddingStore.open(str(store_path)).all_embeddings(columns=("tile_id",))
    order = np.argsort(frame["tile_id"].to_numpy())
    return frame["tile_id"].to_numpy()[order].tolist(), emb[order]


def _measure(root: Path, copies: int, args: argparse.Namespace, cluster_address: str) -> dict[str, Any]:
    """Every way on `copies` copies of the sample slide: seconds, rates and latency per way."""
    from mvh.extractor.extract_config import ExtractConfig
    from mvh.extractor.sample import sample_slide_path

    folder = root / f"copies-{copies}"
    folder.mkdir()
    slides = []
    for i in range(copies):
        slides.append(folder / f"s{i}.svs")
        shutil.copyfile(sample_slide_path(), slides[-1])
    base = {
        "model": args.model,
        "random_init": True,
        "workers": 0,
        "batch_size": args.batch_size,
        "slides": tuple(slides),
    }
    runs = [("single process", _product, {})]
    for n in (1, 2):
        ray_args = {"ray_address": cluster_address, "ray_workers": n}
        runs += [
            (f"ray {n}w, actor inline", _product, ray_args),
            (f"ray {n}w, actor +1 loader", _product, {**ray_args, "workers": 1}),
            (f"ray {n}w, CPU tasks", lambda cfg, n=n: _tasks(cfg, n), {}),
        ]
    rows: dict[str, dict[str, Any]] = {}
    reference = None
    for name, run, extra in runs:
        times, latencies = [], []
        for r in range(args.repeats):
            store = folder / f"{len(rows)}-{r}.lance"
            seconds, tiles, per_slide = run(ExtractConfig(**{**base, **extra}, store=str(store)))
            times.append(seconds)
            latencies += per_slide
            ids, emb = _embeddings(store)
            if reference is None:
                reference = (ids, emb)
            assert ids == reference[0] and np.array_equal(emb, reference[1]), f"{name}: embeddings differ"
        seconds = statistics.median(times)
        rows[name] = {
            "seconds": seconds,
            "tiles": tiles,
            "slides_per_s": copies / seconds,
            "tiles_per_s": tiles / seconds,
            "slide_latency_s": statistics.median(latencies),
        }
    single = rows["single process"]["seconds"]
    for row in rows.values():
        row["ratio_to_single"] = single / row["seconds"]
    overhead = (rows["ray 1w, actor inline"]["seconds"] - single) / copies
    print(
        f"{copies} copies of the sample slide, {args.model}, batch {args.batch_size}, "
        f"median of {args.repeats}; embeddings bit-identical in every run"
    )
    for name, row in rows.items():
        print(
            f"  {name:24s} {row['seconds']:7.1f} s  {row['slides_per_s']:6.2f} slides/s  "
            f"{row['tiles_per_s']:7.1f} tiles/s  x{row['ratio_to_single']:.2f}  "
            f"slide latency {row['slide_latency_s']:.2f} s"
        )
    print(f"  Ray overhead per slide (1 worker inline vs single process): {overhead:.2f} s", flush=True)
    return {"rows": rows, "ray_overhead_per_slide_s": overhead}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[8])
    parser.add_argument("--model", default="mv_hybrid_tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if len(args.copies) > 2 or min(args.copies) < 1:
        parser.error("--copies takes one or two positive counts")
    if os.environ.get(NAMESPACE_FLAG) != "1":
        _reexec_in_namespace()

    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = {str(c): _measure(Path(tmp), c, args, cluster.address) for c in sorted(set(args.copies))}
    finally:
        ray.shutdown()
        cluster.shutdown()
    if len(out) == 2:
        (small, a), (large, b) = ((int(k), v) for k, v in out.items())
        marginal = {}
        print(f"marginal cost of one more slide ({small} -> {large} copies):")
        for name in a["rows"]:
            seconds = b["rows"][name]["seconds"] - a["rows"][name]["seconds"]
            tiles = b["rows"][name]["tiles"] - a["rows"][name]["tiles"]
            marginal[name] = {"s_per_slide": seconds / (large - small), "tiles_per_s": tiles / seconds}
            print(f"  {name:24s} {seconds / (large - small):6.3f} s/slide  {tiles / seconds:6.1f} tiles/s")
        out["marginal"] = marginal
        inline, single = marginal["ray 1w, actor inline"], marginal["single process"]
        per_slide = inline["s_per_slide"] - single["s_per_slide"]
        out["ray_overhead_per_slide_marginal_s"] = per_slide
        print(f"  Ray overhead per slide, marginal (1 worker inline - single process): {per_slide:.3f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
