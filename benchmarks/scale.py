"""Lab scale: every command that touches all tiles, on stores of 100k to 10M synthetic tiles.

    flock /tmp/mvh-bench.lock python benchmarks/scale.py --sizes 100k,1m [--root /tmp/scale-bench]

Per size, a store of 768-d float16 clustered embeddings (slides of 15,000 tiles, each slide drawing on a
few of 100 clusters) is written through the real append path (`EmbeddingStore.add_slide`), then each
command runs as its own process under `/usr/bin/time` (wall, user+system CPU, peak RSS), with the load
average before and after and the disk it leaves: `mvh info`, `mvh verify`, `mvh index build`,
`mvh export` (h5 and parquet), `mvh import` (of the h5 export), `mvh overlap` (against a 2-slide store
holding a copy of one slide), `mvh index build --update` (after one more slide), `mvh serve`
(start-up, the first tile search, which loads the index, p50/p95 of 30 more, the server's RSS), and
`mvh eval retrieval|classify|survival`: retrieval and classification of 100,000 labelled tiles spread
over every slide (one streamed scan of the store picks them out, so what grows with the store is that
scan), survival of one patient a slide (every tile read into the bags; 2 folds of 2 epochs, since the
figure is the read and the memory, not the model). `mvh eval st` is not run: it reads only its
samples' slides (`select_tiles(..., slide_ids=samples)`), so the store's size does not enter its cost.
Search: recall@10 of the index against exact search (`mvh.index.store_scan.scan_top_k`, a streaming
brute-force pass over the store) for 1,000 held-out queries, p50/p95 single-query latency,
`--query-slide` latency of a 15,000-tile slide, and the index's resident size (RSS after loading it,
less RSS before).

Resumable: each size keeps its store and `results.json` under `--root/<size>/`; finished steps are
skipped on a rerun (delete the folder to measure again). Figures are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DIM, SLIDE_TILES, CLUSTERS, PER_SLIDE = 768, 15_000, 100, 8
LABELLED_TILES = 100_000  # the eval steps' labelled tiles, whatever the store's size
# survival reads every tile (its bags are the cohort); trained briefly: the figure is memory and the read
SURVIVAL_ARGS = ["--folds", "2", "--epochs", "2", "--max-tiles", "512", "--coxph-folds", "2"]


def parse_size(text: str) -> int:
    """`100k`, `1m`, `3m`, `10m` or a number."""
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if factor > 1 else text) * factor)


class Generator:
    """Clustered embeddings: fixed cluster centres and bases; each slide draws on PER_SLIDE clusters."""

    def __init__(self, seed: int = 0, intrinsic: int = 16, spread: float = 0.5, noise: float = 0.3) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        scale = np.float32(1 / np.sqrt(DIM))
        self.bases = rng.standard_normal((CLUSTERS, intrinsic, DIM), dtype=np.float32) * (scale * spread)
        self.noise, self.scale, self.intrinsic = noise, scale, intrinsic

    @staticmethod
    def _draw(index: int, n: int) -> tuple[np.random.Generator, np.ndarray]:
        """The slide's random stream and the cluster [n] of each of its tiles."""
        rng = np.random.default_rng(1_000_003 + index)
        clusters = rng.choice(CLUSTERS, size=PER_SLIDE, replace=False)
        return rng, clusters[rng.integers(0, PER_SLIDE, size=n)]

    def clusters(self, index: int, n: int) -> np.ndarray:
        """The cluster [n] each tile of slide number `index` was drawn from (the eval steps' labels)."""
        return self._draw(index, n)[1]

    def slide(self, index: int, n: int) -> np.ndarray:
        """Embeddings [n, DIM] float32 of slide number `index` (deterministic)."""
        rng, labels = self._draw(index, n)
        out = rng.standard_normal((n, DIM), dtype=np.float32) * (self.scale * np.float32(self.noise))
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            z = rng.standard_normal((rows.size, self.intrinsic), dtype=np.float32)
            out[rows] += self.centres[c] + z @ self.bases[c]
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def tile_grid(slide_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (x, y) of a synthetic slide's tiles: a square grid of 448 px steps."""
    side = int(np.ceil(np.sqrt(slide_tiles)))
    return (np.arange(slide_tiles) % side) * 448, (np.arange(slide_tiles) // side) * 448


def tile_ids(slide_id: str, xs: np.ndarray, ys: np.ndarray) -> list[str]:
    """The stored tile ids of the tiles at (xs, ys) of `slide_id`."""
    return [f"{slide_id}:{x}:{y}:448" for x, y in zip(xs, ys, strict=True)]


def write_eval_inputs(folder: Path, n_slides: int, slide_tiles: int) -> None:
    """The eval steps' inputs for slides 0 .. n_slides - 1: `labels.csv` (tile_id, label, group) for
    about LABELLED_TILES tiles spread evenly over every slide, labelled by the cluster they were drawn
    from (100 clusters in 10 classes), grouped by slide; and `cohort.csv` (one patient a slide), whose
    survival times shorten with the slide's share of tiles from the first 50 clusters."""
    gen, rng = Generator(), np.random.default_rng(7)
    xs, ys = tile_grid(slide_tiles)
    per_slide = min(slide_tiles, -(-LABELLED_TILES // n_slides))
    picked = np.unique(np.linspace(0, slide_tiles - 1, per_slide).astype(np.int64))
    labels, cohort = [], []
    for i in range(n_slides):
        slide_id = f"slide{i:05d}"
        clusters = gen.clusters(i, slide_tiles)
        labels.append(
            pd.DataFrame(
                {
                    "tile_id": tile_ids(slide_id, xs[picked], ys[picked]),
                    "label": [f"class{c // 10}" for c in clusters[picked]],
                    "group": slide_id,
                }
            )
        )
        risk = float(np.mean(clusters < CLUSTERS // 2))
        months = rng.exponential(60.0 * np.exp(-2.0 * risk))
        cohort.append((slide_id, f"patient{i:05d}", round(months, 2), int(rng.random() < 0.7)))
    pd.concat(labels, ignore_index=True).to_csv(folder / "labels.csv", index=False)
    pd.DataFrame(cohort, columns=["slide_id", "patient_id", "time", "event"]).to_csv(
        folder / "cohort.csv", index=False
    )


def write_store(path: Path, first: int, n_slides: int, slide_tiles: int) -> None:
    """Append slides `first` .. `first + n_slides - 1` (skipping done ones) through `add_slide`."""
    from mvh.store import EmbeddingStore, StoreFingerprint

    fp = StoreFingerprint(
        model="synthetic",
        model_config={},
        weights_sha256="random-init",
        weights_path=None,
        embed_dim=DIM,
        tile_px=224,
        mpp=0.5,
        mean=None,
        std=None,
        embedding_dtype="float16",
    )
    store = EmbeddingStore.open_or_create(str(path), fp)
    done = set(store.slide_ids())
    gen = Generator()
    for i in range(first, first + n_slides):
        slide_id = f"slide{i:05d}"
        if slide_id in done:
            continue
        xs, ys = tile_grid(slide_tiles)
        tiles = pd.DataFrame(
            {
                "tile_id": tile_ids(slide_id, xs, ys),
                "x": xs,
                "y": ys,
                "tile_px": 224,
                "mpp": 0.5,
                "tissue_fraction": 1.0,
            }
        )
        record = {
            "slide_id": slide_id,
            "path": f"/synthetic/{slide_id}.svs",
            "mpp": 0.25,
            "file_hash": f"synthetic-{i}",
        }
        store.add_slide(record, tiles, gen.slide(i, slide_tiles))


def rss_mb() -> float:
    """This process's resident set (MB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measure_search(store_path: Path, n_queries: int, out: Path) -> None:
    """Recall@10 vs a streamed exact pass, single-query p50/p95, query-slide p95, index resident size."""
    import faiss

    from mvh.index.index_files import load_index
    from mvh.index.ranking import representative_tiles, search_slides
    from mvh.index.store_scan import scan_top_k
    from mvh.store import EmbeddingStore

    faiss.omp_set_num_threads(1)  # single-query latency as a server thread sees it
    store = EmbeddingStore.open(f"{store_path}")
    queries = Generator().slide(999_999, n_queries)
    before = rss_mb()
    index = load_index(store)
    resident = rss_mb() - before
    _, approx = index.search_ids(queries, 10)
    start = time.perf_counter()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, exact = scan_top_k(store, queries, 10)
    exact_s = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)]))
    lat = []
    for q in queries[:200]:
        t = time.perf_counter()
        index.search_ids(q[None], 10)
        lat.append(time.perf_counter() - t)
    slide_lat = []
    slide_ids = store.slide_ids()
    for slide_id in slide_ids[:3]:
        emb, _ = store.slide_embeddings(slide_id)
        t = time.perf_counter()
        chosen = representative_tiles(emb)
        search_slides(store, emb[chosen], k=10, exclude_slides=[slide_id], index=index)
        slide_lat.append(time.perf_counter() - t)
    result = {
        "recall@10": recall,
        "queries": n_queries,
        "exact_pass_s": exact_s,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p95_ms": 1000 * float(np.percentile(lat, 95)),
        "query_slide_p95_s": float(np.percentile(slide_lat, 95)),
        "index_resident_mb": resident,
        "rss_mb": rss_mb(),
        "index": index.params.describe(),
    }
    out.write_text(json.dumps(result, indent=1))


def measure_serve(store_path: Path, out: Path, slide_tiles: int, searches: int = 30) -> None:
    """`mvh serve` on the store: seconds to answer /api/health, the first tile search (it loads the index),
    p50/p95 of the next searches (stored tiles of other slides as queries), and the server's RSS after."""
    import socket
    import urllib.request

    from mvh.store import EmbeddingStore

    slide_ids = EmbeddingStore.open(str(store_path)).slide_ids()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "mvh", "serve", "--store", str(store_path), "--port", str(port)]
        + ["--read-only"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        start = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/health", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - start > 600:
                    raise RuntimeError("mvh serve did not start") from None
                time.sleep(0.2)
        ready = time.perf_counter() - start
        xs, ys = tile_grid(slide_tiles)
        lat = []
        for i in range(searches + 1):
            x, y = xs[i * 7_919 % slide_tiles], ys[i * 7_919 % slide_tiles]
            body = json.dumps({"tile": f"{slide_ids[i * 7 % len(slide_ids)]}:{x}:{y}", "k": 10}).encode()
            request = urllib.request.Request(
                f"{base}/api/search", data=body, headers={"content-type": "application/json"}
            )
            t = time.perf_counter()
            urllib.request.urlopen(request, timeout=600).read()
            lat.append(time.perf_counter() - t)
        anon, files = _rss_split_mb([server.pid])
        result = {
            "ready_s": ready,
            "first_search_s": lat[0],
            "search_p50_ms": 1000 * float(np.percentile(lat[1:], 50)),
            "search_p95_ms": 1000 * float(np.percentile(lat[1:], 95)),
            "server_anon_rss_mb": anon,
            "server_file_rss_mb": files,
        }
    finally:
        server.terminate()
        server.wait(timeout=60)
    out.write_text(json.dumps(result, indent=1))


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def _rss_split_mb(pids: list[int]) -> tuple[float, float]:
    """(anonymous, file-backed) resident MB summed over `pids`: heap vs memory-mapped file pages."""
    anon = files = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
                elif line.startswith("RssFile:"):
                    files += int(line.split()[1])
        except OSError:
            pass
    return anon / 1024, files / 1024


def _timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` under /usr/bin/time: wall s, CPU s, peak RSS MB, load average before/after, and (sampled
    every 0.2 s) the peak anonymous RSS (heap) and file-backed RSS (memory-mapped pages, which the kernel
    may drop) of its process tree."""
    load = Path("/proc/loadavg").read_text().split()[0]
    stats = log.with_suffix(".time")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    peak_anon = peak_file = 0.0
    with open(log, "w") as out:
        child = subprocess.Popen(
            ["/usr/bin/time", "-o", str(stats), "-f", "%e %U %S %M", *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        while child.poll() is None:
            anon, files = _rss_split_mb(_tree(child.pid))
            peak_anon, peak_file = max(peak_anon, anon), max(peak_file, files)
            time.sleep(0.2)
    wall, user, system, peak = stats.read_text().split("\n")[-2].split()
    return {
        "wall_s": float(wall),
        "cpu_s": float(user) + float(system),
        "peak_rss_mb": int(peak) / 1024,
        "peak_anon_rss_mb": peak_anon,
        "peak_file_rss_mb": peak_file,
        "load_before": float(load),
        "load_after": float(Path("/proc/loadavg").read_text().split()[0]),
        "exit": child.returncode,
    }


def du_mb(path: Path) -> float:
    """Disk use of a folder (MB)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def _room_for_exports(store: Path, folder: Path) -> None:
    """The h5 export (float32) and its import need ~3x the tiles table: drop the index (its size and
    figures are already recorded) when the disk would not hold them, and say so."""
    need = 3.2 * du_mb(store / "tiles.lance") * 2**20
    if shutil.disk_usage(folder).free < need and (store / "_index").exists():
        print(f"   disk: removing {store / '_index'} to make room for the h5 export and import", flush=True)
        shutil.rmtree(store / "_index")


def run_size(n: int, root: Path, slide_tiles: int, queries: int) -> dict:
    """Every step at `n` tiles, resuming from `results.json`."""
    folder = root / (f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k")
    folder.mkdir(parents=True, exist_ok=True)
    results_file = folder / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"n": n}
    results.setdefault("tiles", max(1, n // slide_tiles) * slide_tiles)
    store = folder / "store.lance"
    py, me, mvh = sys.executable, str(Path(__file__).resolve()), [sys.executable, "-m", "mvh"]
    n_slides = max(1, n // slide_tiles)
    steps = [
        ("write", [py, me, "_write", str(store), "0", str(n_slides), str(slide_tiles)]),
        ("info", [*mvh, "info", "--store", str(store), "--json"]),
        ("verify", [*mvh, "verify", "--store", str(store), "--json"]),
        ("index build", [*mvh, "index", "build", "--store", str(store), "--json"]),
        ("search", [py, me, "_search", str(store), str(queries), str(folder / "search.json")]),
        ("serve", [py, me, "_serve", str(store), str(folder / "serve.json"), str(slide_tiles)]),
        (
            "overlap",
            [*mvh, "overlap", "--store", str(store), "--store", str(folder / "small.lance"), "--json"],
        ),
        ("index build --update", [*mvh, "index", "build", "--store", str(store), "--update", "--json"]),
        (
            "eval retrieval",
            [*mvh, "eval", "retrieval", "--labels", str(folder / "labels.csv"), "--store", str(store),
             "--out", str(folder / "eval-retrieval"), "--json"],
        ),
        (
            "eval classify",
            [*mvh, "eval", "classify", "--labels", str(folder / "labels.csv"), "--store", str(store),
             "--out", str(folder / "eval-classify"), "--json"],
        ),
        (
            "eval survival",
            [*mvh, "eval", "survival", "--cohort", str(folder / "cohort.csv"), "--store", str(store),
             *SURVIVAL_ARGS, "--out", str(folder / "eval-survival"), "--json"],
        ),
        (
            "export parquet",
            [
                *mvh,
                "export",
                "--store",
                str(store),
                "--out",
                str(folder / "parquet"),
                "--format",
                "parquet",
                "--json",
            ],
        ),
        (
            "export h5",
            [*mvh, "export", "--store", str(store), "--out", str(folder / "h5"), "--format", "h5", "--json"],
        ),
        (
            "import h5",
            [
                *mvh,
                "import",
                str(folder / "h5"),
                "--model",
                "synthetic",
                "--store",
                str(folder / "imported.lance"),
                "--dtype",
                "float16",
                "--mpp",
                "0.5",
                "--tile-px",
                "224",
                "--json",
            ],
        ),
    ]
    for name, cmd in steps:
        if name in results:
            continue
        if name == "overlap":  # a 2-slide store: a copy of slide 0 and one new slide
            write_store(folder / "small.lance", n_slides + 1, 1, slide_tiles)
            write_store(folder / "small.lance", 0, 1, slide_tiles)
        if name == "index build --update":  # one slide more than the store holds (a re-run adds another)
            write_store(store, _slide_count(store), 1, slide_tiles)
        if name.startswith("eval") and not (folder / "cohort.csv").exists():
            write_eval_inputs(folder, n_slides, slide_tiles)
        if name == "export h5":
            _room_for_exports(store, folder)
        print(f"[{n:,}] {name} ...", flush=True)
        figures = _timed(cmd, folder / f"{name.replace(' ', '_')}.log")
        figures["disk_mb"] = {
            "write": du_mb(store),
            "index build": du_mb(store / "_index"),
            "export h5": du_mb(folder / "h5"),
            "export parquet": du_mb(folder / "parquet"),
            "import h5": du_mb(folder / "imported.lance"),
        }.get(name)
        if name in ("search", "serve"):
            figures.update(json.loads((folder / f"{name}.json").read_text()))
        if name == "index build":  # the tiles it indexed: more than written when an update step ran before
            figures["tiles"] = _json_output(folder / "index_build.log")["n_tiles"]
        figures["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results[name] = figures
        results_file.write_text(json.dumps(results, indent=1))
        print(f"   {json.dumps(figures)}", flush=True)
        if name == "export parquet":  # disk: only the sizes of exports and imports are kept
            shutil.rmtree(folder / "parquet", ignore_errors=True)
        if name == "import h5":
            shutil.rmtree(folder / "imported.lance", ignore_errors=True)
            shutil.rmtree(folder / "h5", ignore_errors=True)
    return results


def _slide_count(store: Path) -> int:
    from mvh.store import EmbeddingStore

    return len(EmbeddingStore.open(str(store)).slide_ids())


def _json_output(log: Path) -> dict:
    """The `--json` object a command printed to its log (after any warnings)."""
    text = log.read_text()
    start = 0 if text.startswith("{") else text.index("\n{") + 1
    return json.JSONDecoder().raw_decode(text, start)[0]


def _tiles(result: dict) -> int:
    """Tiles of the written store: whole slides of SLIDE_TILES (the size asked for, rounded down)."""
    return int(result.get("tiles", max(1, result["n"] // SLIDE_TILES) * SLIDE_TILES))


def _step_tiles(result: dict, name: str) -> int:
    """The tiles a step worked on: its own count when it recorded one, else the written store's."""
    return int(result[name].get("tiles", _tiles(result)))


def _cell(f: dict, n: int) -> str:
    rss = f"{f['peak_rss_mb']:,.0f} MB"
    if "peak_anon_rss_mb" in f:
        rss += f" (heap {f['peak_anon_rss_mb']:,.0f})"
    cpu = f"CPU {f['cpu_s']:,.0f} s ({1e6 * f['cpu_s'] / n:.0f} us/tile)"
    return f"{f['wall_s']:,.0f} s, {cpu}, {rss}; load {f['load_before']:.1f}"


def table(all_results: list[dict]) -> str:
    """A Markdown table: per command and size, wall / CPU (per tile) / peak RSS (heap) / load before."""
    sizes = [_tiles(r) for r in all_results]
    head = "| command | " + " | ".join(f"{n:,} tiles" for n in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    names = list(dict.fromkeys(k for r in all_results for k in r if k not in ("n", "tiles")))
    for name in names:
        cells = ["-" if r.get(name) is None else _cell(r[name], _step_tiles(r, name)) for r in all_results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_tile_ratio(small: dict, large: dict) -> str:
    """CPU per tile at the larger size over the smaller, for the commands the issue's goal names."""
    out = []
    for name in ("import h5", "index build", "verify", "export h5", "export parquet", "write"):
        if name in small and name in large:
            per_tile = [r[name]["cpu_s"] / _step_tiles(r, name) for r in (large, small)]
            ratio = per_tile[0] / per_tile[1]
            out.append(f"{name} {ratio:.2f}x")
    return f"CPU per tile, {_tiles(large):,} vs {_tiles(small):,} tiles: " + ", ".join(out)


def main() -> None:
    """Parse the arguments and run every size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100k,1m")
    parser.add_argument("--root", type=Path, default=Path("/tmp/scale-bench"))
    parser.add_argument("--slide-tiles", type=int, default=SLIDE_TILES)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--table-only", action="store_true", help="print the tables of finished sizes")
    args = parser.parse_args()
    if args.table_only:
        results = [json.loads((args.root / s / "results.json").read_text()) for s in args.sizes.split(",")]
    else:
        results = [
            run_size(parse_size(s), args.root, args.slide_tiles, args.queries) for s in args.sizes.split(",")
        ]
    print(table(results))
    for small, large in zip(results, results[1:], strict=False):
        print(per_tile_ratio(small, large))
    for r in results:
        if "search" in r:
            s = r["search"]
            print(
                f"{_tiles(r):,} tiles: recall@10 {s['recall@10']:.3f}, p50 {s['p50_ms']:.1f} ms, "
                f"p95 {s['p95_ms']:.1f} ms, query-slide p95 {s['query_slide_p95_s']:.2f} s, "
                f"index resident {s['index_resident_mb']:.0f} MB"
            )
    print(f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_write":
        write_store(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_serve":
        measure_serve(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_search":
        measure_search(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
