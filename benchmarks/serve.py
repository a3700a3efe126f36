"""`mvh serve` latency on loopback: image search on a 100k-tile IVF-PQ store, DeepZoom tiles cold and cached.

The store holds the real sample slide (embedded by `mv_hybrid_tiny`, random-init, so an image query is
embedded by the same small model) plus synthetic slides of clustered embeddings
(`mvh.core.synthetic_embeddings`) up to `--tiles` rows, indexed IVF-PQ. `mvh serve` runs as its own process
(as a user runs it); the load comes from a separate client process (`serve_client.py`: stdlib `http.client`,
one keep-alive connection per client thread, request bodies built once), `--clients` connections sending
until `--requests` are done or `--max-seconds` pass.
Beside the latencies it prints the load average, the server's CPU time per request (from /proc: robust
to other load), the client process's CPU time per request (it shares the cores), how many image queries
shared a forward, and the model's forward time for 1 and for `--clients` tiles with the server's
intra-op threads (what batching buys).

    python benchmarks/serve.py [--tiles 100000 --clients 10 --requests 200 --max-seconds 120]

Goals (issue 17): search p95 < 300 ms at 10 concurrent clients; cached DeepZoom tiles p95 < 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from mvh.core.synthetic_embeddings import clustered_embeddings
from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.extractor.extract import extract_slides
from mvh.extractor.extract_config import ExtractConfig
from mvh.index.vector import build_index
from mvh.serve.config import default_torch_threads
from mvh.store import EmbeddingStore

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TILES_PER_SLIDE = 2000


def make_store(folder: Path, n_tiles: int) -> tuple[str, str]:
    """A store with a real (or synthetic) slide and synthetic slides up to n_tiles rows; (uri, slide id)."""
    slide = SHARED / "CMU-1-Small-Region.svs"
    if not slide.exists():
        slide = write_synthetic_slide(folder / "slide.tiff", 4096, 4096, 0.5, seed=0)
    uri = str(folder / "bench.lance")
    cfg = ExtractConfig("mv_hybrid_tiny", random_init=True, batch_size=32, workers=0)
    extract_slides([slide], uri, cfg, device="cpu")
    store = EmbeddingStore.open(uri)
    record = store.slides().iloc[0].to_dict()
    remaining = n_tiles - store.n_tiles
    emb, _ = clustered_embeddings(max(remaining, 0), dim=store.dim, seed=0)
    for i, start in enumerate(range(0, remaining, TILES_PER_SLIDE)):
        part = emb[start : start + TILES_PER_SLIDE]
        j = np.arange(len(part))
        slide_id = f"synthetic{i:03d}"
        x, y = (j % 100) * 224, (j // 100) * 224
        tiles = pd.DataFrame({
            "tile_id": [f"{slide_id}:{a}:{b}:224" for a, b in zip(x, y, strict=True)],
            "x": x, "y": y, "tile_px": 224, "mpp": 0.5, "tissue_fraction": 1.0,
        })
        store.add_slide({**record, "slide_id": slide_id, "n_tiles": len(part)}, tiles, part)
    build_index(EmbeddingStore.open(uri), kind="ivfpq")
    return uri, str(record["slide_id"])


def start_server(uri: str) -> tuple[subprocess.Popen[str], str]:
    """`mvh serve` on a free loopback port: the process and its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "mvh", "serve", "--store", uri, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            url = found.group(0)
            for _ in range(200):
                try:
                    httpx.get(url + "/api/health", timeout=2)
                    return proc, url
                except httpx.TransportError:
                    time.sleep(0.1)
    proc.kill()
    raise RuntimeError("mvh serve did not start")


CLIENT = Path(__file__).resolve().parent / "serve_client.py"
Request = tuple[str, str, bytes | None, dict[str, str]]


def multipart(fields: dict[str, str], name: str, filename: str, data: bytes, kind: str) -> tuple[bytes, str]:
    """A multipart/form-data body (built once, sent as is) and its content type."""
    boundary = "mvhbench" + "0" * 24
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def run_clients(url: str, work: list[Request], clients: int, max_seconds: float) -> tuple[list[float], float]:
    """Send each request once from `clients` keep-alive connections of a separate client process (stop
    at max_seconds): latencies in ms and the client process's CPU seconds while sending."""
    host, port = url.removeprefix("http://").split(":")
    job = {"host": host, "port": int(port), "clients": clients, "max_seconds": max_seconds, "requests": work}
    done = subprocess.run([sys.executable, str(CLIENT)], input=pickle.dumps(job), capture_output=True,
                          check=True)
    out = json.loads(done.stdout)
    if out["failures"]:
        raise RuntimeError(f"{len(out['failures'])} requests failed, e.g. {out['failures'][0]}")
    return out["latencies"], out["cpu_s"]


def summary(name: str, latencies: list[float]) -> str:
    """`name: n, p50, p95` in ms, and the load average now."""
    p50, p95 = np.percentile(latencies, [50, 95])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{name}: n={len(latencies)} p50 {p50:.1f} ms, p95 {p95:.1f} ms  (load average {load})"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forward_times(uri: str, batches: list[int], repeats: int = 10) -> str:
    """Median forward time of the store's model on 1 and on n tiles, with the server's intra-op threads."""
    import torch

    from mvh.tasks.query_embedder import query_embedder

    torch.set_num_threads(default_torch_threads())
    embedder = query_embedder(EmbeddingStore.open(uri), device="cpu")
    tile = np.random.default_rng(0).integers(0, 256, (embedder.tile_px, embedder.tile_px, 3), dtype=np.uint8)
    out = []
    for n in batches:
        tiles = np.stack([tile] * n)
        embedder.embed_images(tiles)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            embedder.embed_images(tiles)
            times.append((time.perf_counter() - start) * 1000)
        out.append(f"{n} tile(s) {np.median(times):.1f} ms")
    return f"model forward ({torch.get_num_threads()} intra-op thread(s)): " + ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvh-bench-serve-") as tmp:
        t0 = time.perf_counter()
        uri, slide_id = make_store(Path(tmp), args.tiles)
        n = EmbeddingStore.open(uri).n_tiles
        print(f"store: {n} tiles, IVF-PQ, built in {time.perf_counter() - t0:.1f} s")
        query = SHARED / "he_tile_1000px.png"
        if not query.exists():
            query = Path(tmp) / "query.png"
            from PIL import Image

            Image.new("RGB", (512, 512), (190, 110, 170)).save(query)
        payload = query.read_bytes()
        proc, url = start_server(uri)
        try:
            body, kind = multipart({"k": "10"}, "image", "q.png", payload, "image/png")
            post: Request = ("POST", "/api/search", body, {"Content-Type": kind})

            def per_request(what: str, cpu: float, client_cpu: float, n: int) -> str:
                return (f"  server CPU per {what}: {(cpu_seconds(proc.pid) - cpu) / n * 1000:.2f} ms; "
                        f"client CPU per {what}: {client_cpu / n * 1000:.2f} ms")

            run_clients(url, [post] * 5, 1, args.max_seconds)  # warm-up: model built, index loaded
            cpu = cpu_seconds(proc.pid)
            alone, client_cpu = run_clients(url, [post] * max(args.requests // 5, 5), 1, args.max_seconds)
            print(summary("POST /api/search (image, k=10, 1 client)", alone))
            print(per_request("search", cpu, client_cpu, len(alone)))
            before = httpx.get(url + "/api/stores").json()[0]["image_batches"]
            cpu = cpu_seconds(proc.pid)
            search, client_cpu = run_clients(url, [post] * args.requests, args.clients, args.max_seconds)
            print(summary(f"POST /api/search (image, k=10, {args.clients} clients)", search))
            cpu_line = per_request("search", cpu, client_cpu, len(search))
            after = httpx.get(url + "/api/stores").json()[0]["image_batches"]
            batches = after["batches"] - before["batches"]
            mean = (after["requests"] - before["requests"]) / max(batches, 1)
            print(f"{cpu_line}; {len(search)} queries in {batches} forwards (mean batch {mean:.1f}, "
                  f"largest {after['largest']})")
            desc = httpx.get(f"{url}/api/dzi/bench/{slide_id}").json()["Image"]
            width, height = int(desc["Size"]["Width"]), int(desc["Size"]["Height"])
            tile = int(desc["TileSize"])
            top = int(np.ceil(np.log2(max(width, height))))
            paths = []
            for level in range(top, -1, -1):
                scale = 2 ** (top - level)
                cols = -(-int(np.ceil(width / scale)) // tile)
                rows = -(-int(np.ceil(height / scale)) // tile)
                paths += [f"/api/dzi/bench/{slide_id}/{level}/{c}_{r}.jpeg"
                          for r in range(rows) for c in range(cols)]
            gets: list[Request] = [("GET", path, None, {}) for path in paths[: args.requests]]
            cold, _ = run_clients(url, gets, args.clients, args.max_seconds)
            print(summary(f"DeepZoom tiles, cold ({args.clients} clients)", cold))
            cpu = cpu_seconds(proc.pid)
            cached, client_cpu = run_clients(url, gets, args.clients, args.max_seconds)
            print(summary(f"DeepZoom tiles, cached ({args.clients} clients)", cached))
            print(per_request("cached tile", cpu, client_cpu, len(cached)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(forward_times(uri, [1, args.clients]))


if __name__ == "__main__":
    main()
