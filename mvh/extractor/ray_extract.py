"""Extraction on a Ray cluster: one embedding actor per GPU (or per N CPUs), slides scheduled dynamically.

The work unit is one slide. Pending slides are sorted largest first and handed to whichever actor is
free, so one huge slide never holds back a static shard. Each actor holds the model once and tiles and
decodes its slide in its own DataLoader workers (`--workers`); it returns the slide's record, tile rows
and embeddings to the driver, which is the store's ONE committer: each slide is committed atomically as
it arrives, so no worker ever leaves half a slide visible. An actor process (or its node) that dies
mid-slide is replaced and the slide retried on a live actor, at most `max_retries` times, after which the
slide is recorded as failed with the cause; a slide that fails on its own (a corrupt file) fails once.

Ray is an optional extra (`pip install -e ".[ray]"`), imported only here and only when asked for.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvh.errors import DependencyError, StoreError, StoreWriteError, UsageError
from mvh.extractor.extract import ExtractConfig, SlideInput, SlideResult, _failure, _plan, embed_grid
from mvh.index.store import DONE, EmbeddingStore
from mvh.progress import SLIDES, TILES, Event, Progress, report

LOCAL = "local"


@dataclass(frozen=True)
class RayOptions:
    """Where the cluster is and how to split it into embedding actors."""

    address: str
    cpus_per_worker: float = 1.0
    max_retries: int = 2
    workers: int | None = None  # number of actors; default: one per GPU, else cluster CPUs // cpus_per_worker

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise UsageError("--ray-address is empty: give `local`, `auto` or ray://HOST:PORT")
        if not (self.cpus_per_worker > 0):
            raise UsageError(f"--ray-cpus-per-worker {self.cpus_per_worker} must be > 0")
        if self.max_retries < 0:
            raise UsageError(f"--ray-max-retries {self.max_retries} must be 0 or more")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--ray-workers {self.workers} must be at least 1")


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise DependencyError('Ray is not installed: pip install -e ".[ray]" (or pip install ray)') from exc
    return ray


def connect(options: RayOptions, gpus: Sequence[int] = ()) -> Any:
    """`ray.init` for `options.address` (`local`: a Ray instance on this machine, on `gpus` if given)."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    address = None if options.address == LOCAL else options.address
    if address is None and gpus:
        kwargs["num_gpus"] = len(gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))  # the local instance sees these only
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"--ray-address {options.address}: cannot connect ({' '.join(str(exc).split())}); start a "
            "cluster with `ray start --head` or use --ray-address local"
        ) from exc
    return ray


class SlideEmbedder:
    """The body of a Ray embedding actor: a model on one device, embedding one whole slide per call."""

    def __init__(self, cfg: ExtractConfig, device: str) -> None:
        self.cfg = cfg
        self.embedder = cfg.embedder(device)
        self.device = str(self.embedder.device)

    def where(self) -> dict[str, Any]:
        """This actor's process id, node address and device (for progress and for tests)."""
        import ray

        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "device": self.device}

    def sees(self, path: str) -> bool:
        """Whether `path` exists on this actor's node (a shared filesystem check)."""
        return Path(path).exists()

    def embed(self, source: SlideInput) -> dict[str, Any]:
        """Plan, decode and embed one slide: its record, tile rows and embeddings, or its failure."""
        start = time.perf_counter()
        try:
            record, grid = _plan(source, self.cfg)
        except Exception as exc:  # noqa: BLE001 (any failure of one slide fails that slide only)
            return {
                "status": "failed",
                "error": _failure(source, "cannot be tiled", exc),
                "device": self.device,
            }
        try:
            emb = embed_grid(self.embedder, grid, self.cfg.batch_size, self.cfg.workers)
        except Exception as exc:  # noqa: BLE001
            return {
                "status": "failed",
                "error": _failure(source, "tile decode failed", exc),
                "record": record,
                "device": self.device,
            }
        record["seconds"] = time.perf_counter() - start
        return {
            "status": DONE,
            "record": record,
            "tiles": grid.to_frame(),
            "embeddings": emb,
            "device": self.device,
        }


def _actor_count(ray: Any, options: RayOptions, gpu: bool) -> int:
    if options.workers is not None:
        return options.workers
    resources = ray.cluster_resources()
    if gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1) // options.cpus_per_worker))


def _check_reachable(ray: Any, store: EmbeddingStore, actors: Sequence[Any]) -> None:
    """A local store path must be visible from every node: refuse a multi-node cluster that cannot see it."""
    if "://" in store.uri and not store.uri.startswith("file://"):
        return
    nodes = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    if len(nodes) <= 1:
        return
    path = str(Path(store.uri.removeprefix("file://")).resolve())
    blind = [i for i, seen in enumerate(ray.get([a.sees.remote(path) for a in actors])) if not seen]
    if blind:
        raise UsageError(
            f"--store {store.uri} is a local path but the Ray cluster has {len(nodes)} nodes and "
            f"{len(blind)} embedding worker(s) cannot see it: use an object-store URI (s3://...) or a "
            "filesystem shared by every node"
        )


def _size(source: SlideInput) -> int:
    try:
        return source.path.stat().st_size
    except OSError:
        return 0


def run_on_ray(
    cfg: ExtractConfig,
    store: EmbeddingStore,
    slides: Sequence[SlideInput],
    options: RayOptions,
    *,
    devices: Sequence[str] = (),
    progress: Progress | None = None,
) -> list[SlideResult]:
    """Embed `slides` (all pending) on the Ray cluster of `options`, committing each slide in this process.

    `devices` (`--devices`): `cuda:i` entries make a local instance use those GPUs; `cpu` entries make CPU
    workers. Without them, workers use the cluster's GPUs unless `cfg.device` is `cpu`.
    """
    gpus = [int(d.split(":")[1]) for d in devices if d.startswith("cuda:")]
    ray = connect(options, gpus)
    if devices:
        gpu = all(d.startswith("cuda") for d in devices)
    else:
        gpu = bool(ray.cluster_resources().get("GPU", 0)) and cfg.device != "cpu"
    remote = ray.remote(num_gpus=1 if gpu else 0, num_cpus=options.cpus_per_worker, max_restarts=0)(
        SlideEmbedder
    )
    device = "cuda" if gpu else "cpu"
    n_actors = min(_actor_count(ray, options, gpu), max(1, len(slides)))
    actors = [remote.remote(cfg, device) for _ in range(n_actors)]
    _check_reachable(ray, store, actors)
    queue = deque(sorted(range(len(slides)), key=lambda k: _size(slides[k]), reverse=True))
    attempts = dict.fromkeys(range(len(slides)), 0)
    in_flight: dict[Any, tuple[int, Any]] = {}
    results: list[SlideResult] = []

    def submit(actor: Any) -> None:
        if queue:
            k = queue.popleft()
            attempts[k] += 1
            in_flight[actor.embed.remote(slides[k])] = (k, actor)

    def record_failure(k: int, error: str, record: dict[str, Any] | None, device: str) -> None:
        source = slides[k]
        failed = record or {"slide_id": source.slide_id, "path": str(source.path), "size": _size(source)}
        if not store.add_failed_slide(failed, error):
            error += " (the tiles committed before are kept)"
        results.append(SlideResult(source.slide_id, str(source.path), "failed", 0, 0.0, error, device))
        report(progress, Event.ADVANCE, SLIDES)

    for actor in actors:
        submit(actor)
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        ref = ready[0]
        k, actor = in_flight.pop(ref)
        source = slides[k]
        try:
            out = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            cause = " ".join(str(exc).split())[:300]
            if attempts[k] <= options.max_retries:
                queue.appendleft(k)
                report(
                    progress,
                    Event.NOTE,
                    SLIDES,
                    0,
                    f"embedding worker died on {source.slide_id}; retrying it (attempt {attempts[k] + 1})",
                )
            else:
                record_failure(
                    k, f"embedding worker died {attempts[k]} time(s) on this slide: {cause}", None, ""
                )
            actor = remote.remote(cfg, device)  # replace the dead actor
            submit(actor)
            continue
        if out["status"] == DONE:
            record, tiles, emb = out["record"], out["tiles"], np.asarray(out["embeddings"])
            report(progress, Event.TOTAL, TILES, len(tiles))
            try:
                store.add_slide(record, tiles, emb)
            except StoreWriteError:
                raise
            except StoreError as exc:
                record_failure(k, " ".join(str(exc).split()), record, out["device"])
            else:
                results.append(
                    SlideResult(
                        record["slide_id"],
                        str(source.path),
                        DONE,
                        len(tiles),
                        float(record["seconds"]),
                        "",
                        out["device"],
                    )
                )
                report(progress, Event.ADVANCE, TILES, len(tiles))
                report(progress, Event.ADVANCE, SLIDES)
        else:
            record_failure(k, out["error"], out.get("record"), out["device"])
        submit(actor)
    return results
