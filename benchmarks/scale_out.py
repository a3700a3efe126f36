"""Scale-out of extraction on Ray vs the single-process path, on this machine.

    python benchmarks/scale_out.py [--copies 8] [--model mv_hybrid_tiny] [--repeats 1] [--json OUT]

Extracts `--copies` copies of the real sample slide (54 tissue tiles each) three ways into fresh stores:
the single-process path (`mvh extract`), Ray with 1 CPU worker and Ray with 2 CPU workers (a local
2-node cluster, one CPU each). Prints slides/s, tiles/s, the ratio to the single process, and Ray's
overhead per slide: (Ray-1-worker seconds - single-process seconds) / slides. Cluster start-up is not
counted (it is paid once per cluster, not per run). The script re-runs itself inside a loopback-only
network namespace (`unshare -n`, root) so Ray binds 127.0.0.1 only, as the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMESPACE_FLAG = "MVH_BENCH_IN_NETNS"


def _reexec_in_namespace() -> None:
    inner = "ip link set lo up && exec " + " ".join([sys.executable, *map(str, sys.argv)])
    env = {**os.environ, NAMESPACE_FLAG: "1", "RAY_USAGE_STATS_ENABLED": "0"}
    sys.exit(subprocess.run(["unshare", "-n", "sh", "-c", inner], env=env).returncode)


def _timed(cfg) -> tuple[float, int]:
    from mvh.extractor.extract import run_extract

    start = time.perf_counter()
    result = run_extract(cfg)
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, [r.error for r in result.slides]
    return seconds, result.n_tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--model", default="mv_hybrid_tiny")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.environ.get(NAMESPACE_FLAG) != "1":
        _reexec_in_namespace()

    import ray
    from ray.cluster_utils import Cluster

    from mvh.extractor.extract import ExtractConfig
    from mvh.extractor.sample import sample_slide_path

    sample = sample_slide_path()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slides = []
        for i in range(args.copies):
            slides.append(root / f"s{i}.svs")
            shutil.copyfile(sample, slides[-1])
        base = {"model": args.model, "random_init": True, "workers": 0, "slides": tuple(slides)}
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        rows = {}
        for name, extra in (
            ("single process", {}),
            ("ray, 1 worker", {"ray_address": cluster.address, "ray_workers": 1}),
            ("ray, 2 workers", {"ray_address": cluster.address, "ray_workers": 2}),
        ):
            times = []
            for r in range(args.repeats):
                seconds, tiles = _timed(ExtractConfig(**base, **extra, store=str(root / f"{name}-{r}.lance")))
                times.append(seconds)
            seconds = sorted(times)[len(times) // 2]
            rows[name] = {
                "seconds": seconds,
                "slides_per_s": args.copies / seconds,
                "tiles_per_s": tiles / seconds,
            }
        ray.shutdown()
        cluster.shutdown()
    single = rows["single process"]["seconds"]
    for row in rows.values():
        row["ratio_to_single"] = single / row["seconds"]
    overhead = (rows["ray, 1 worker"]["seconds"] - single) / args.copies
    print(f"{args.copies} copies of the sample slide, {args.model}, median of {args.repeats}")
    for name, row in rows.items():
        print(
            f"  {name:15s} {row['seconds']:7.1f} s  {row['slides_per_s']:6.2f} slides/s  "
            f"{row['tiles_per_s']:7.1f} tiles/s  x{row['ratio_to_single']:.2f}"
        )
    print(f"  Ray overhead per slide (1 worker vs single process): {overhead:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ray_overhead_per_slide_s": overhead}, indent=2))


if __name__ == "__main__":
    main()
