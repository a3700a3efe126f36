"""Extraction on a Ray cluster: one embedding actor per GPU (or per N CPUs), slides scheduled dynamically.

The work unit is one slide. Pending slides are sorted largest first and handed to whichever actor is
free, so one huge slide never holds back a static shard. Each actor holds the model once and tiles and
decodes its slide in its own DataLoader workers (`--workers`); it returns the slide's record, tile rows
and embeddings to the driver, which is the store's ONE committer: each slide is committed atomically as
it arrives, so no worker ever leaves half a slide visible. An actor process (or its node) that dies
mid-slide is replaced and the slide retried on a live actor, at most `max_retries` times, after which the
slide is recorded as failed with the cause; a slide that fails on its own (a corrupt file) fails once.

Ray is an optional extra (`pip install -e ".[ray]"`), imported only when asked for (`ray_connect`).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvh.errors import (
    MvhError,
    StoreError,
    StoreWriteError,
    UsageError,
    WorkerStartError,
)
from mvh.extractor.extract_config import ExtractConfig, SlideInput, SlideResult
from mvh.extractor.pipeline import _failure, _plan, embed_grid
from mvh.extractor.ray_connect import ray_session
from mvh.progress import SLIDES, TILES, Event, Progress, report
from mvh.store import DONE, EmbeddingStore

BROKEN = "broken"  # an actor that could not build its model: the run stops (every slide would fail alike)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


class SlideEmbedder:
    """The body of a Ray embedding actor: a model on one device, embedding one whole slide per call."""

    def __init__(self, cfg: ExtractConfig, device: str) -> None:
        import ray

        self.cfg = cfg
        self.node = ray.util.get_node_ip_address()
        self.device = device
        self.broken: MvhError | None = None  # why this actor cannot embed (its node's model or device)
        try:
            self.embedder = cfg.embedder(device)
        except MvhError as exc:
            self.broken = exc
        except Exception as exc:  # noqa: BLE001 (reported to the driver, which stops the run with it)
            self.broken = WorkerStartError(f"{type(exc).__name__}: {_one_line(str(exc))}")
        else:
            self.device = _device_name(str(self.embedder.device), ray.get_gpu_ids())

    def where(self) -> dict[str, Any]:
        """This actor's process id, node address, device and start-up error (for progress and tests)."""
        return {"pid": os.getpid(), "node": self.node, "device": self.device, "broken": self.broken}

    def reads(self, path: str, token: str) -> bool:
        """Whether this node reads `token` from `path`: the driver's file, not one of the same name."""
        try:
            return Path(path).read_text(encoding="utf-8") == token
        except OSError:
            return False

    def embed(self, source: SlideInput) -> dict[str, Any]:
        """Plan, decode and embed one slide: its record, tile rows and embeddings, or its failure."""
        if self.broken is not None:
            return {"status": BROKEN, "error": self.broken, "device": self.label}
        start = time.perf_counter()
        try:
            record, grid = _plan(source, self.cfg)
        except Exception as exc:  # noqa: BLE001 (any failure of one slide fails that slide only)
            return {
                "status": "failed",
                "error": _failure(source, "cannot be tiled", exc),
                "device": self.label,
            }
        try:
            emb = embed_grid(self.embedder, grid, self.cfg.batch_size, self.cfg.workers)
        except Exception as exc:  # noqa: BLE001
            return {
                "status": "failed",
                "error": _failure(source, "tile decode failed", exc),
                "record": record,
                "device": self.label,
            }
        record["seconds"] = time.perf_counter() - start
        return {
            "status": DONE,
            "record": record,
            "tiles": grid.to_frame(),
            "embeddings": emb,
            "device": self.label,
        }

    @property
    def label(self) -> str:
        """`device@node`: which device of which node embedded a slide (results and progress show it)."""
        return f"{self.device}@{self.node}"


def _one_line(text: str) -> str:
    return " ".join(_ANSI.sub("", text).split())


def _stop(error: MvhError, label: str) -> MvhError:
    """`error` of the actor at `label`, re-raised by the driver with where it happened (same type)."""
    return type(error)(f"embedding worker {label} cannot start: {error}")


def _start_failure(exc: Exception, label: str) -> WorkerStartError:
    """An actor whose creation itself failed (its class or packages do not load on its node)."""
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return WorkerStartError(
        f"embedding worker {label} cannot start: {' '.join((lines or ['no cause given'])[-1].split())}; "
        "install the same mvh and packages on every node"
    )


def _device_name(device: str, gpu_ids: Sequence[int | str]) -> str:
    """The device as its node names it: `cuda:<Ray's GPU id>` (an actor sees its GPU as cuda:0)."""
    if device.startswith("cuda") and len(gpu_ids) == 1:
        return f"cuda:{gpu_ids[0]}"
    return device


def _actor_count(ray: Any, options: RayOptions, gpu: bool) -> int:
    if options.workers is not None:
        return options.workers
    resources = ray.cluster_resources()
    if gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1) // options.cpus_per_worker))


def _check_reachable(ray: Any, store: EmbeddingStore, actors: Sequence[Any]) -> None:
    """A local store path must be the same folder on every node: refuse a multi-node cluster where it is not.

    The driver writes a file with a random token into the store folder; every embedding worker must read
    that token back, so a node that has no such folder, or its own folder of the same name, is caught.
    """
    local = store.location.local_path
    if local is None:
        return
    nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}  # several nodes may share one address
    if len(nodes) <= 1:
        return
    token = uuid.uuid4().hex
    probe = local.resolve() / f".mvh-reachable-{token}"
    probe.write_text(token, encoding="utf-8")
    try:
        seen = ray.get([a.reads.remote(str(probe), token) for a in actors])
    finally:
        probe.unlink(missing_ok=True)
    if not all(seen):
        raise UsageError(
            f"--store {store.uri} is a local path but the Ray cluster has {len(nodes)} nodes and "
            f"{seen.count(False)} embedding worker(s) do not see this folder: use an object-store URI "
            "(s3://...) or a filesystem shared by every node"
        )


def _tally(labels: Iterable[str]) -> str:
    """`cuda:0@10.0.0.3, cuda:1@10.0.0.3` or, for repeats, `cpu@127.0.0.1 x2`."""
    counts = Counter(labels)
    return ", ".join(label if n == 1 else f"{label} x{n}" for label, n in sorted(counts.items()))


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
    with ray_session(options.address, gpus) as ray:
        return _run(ray, cfg, store, slides, options, devices, progress)


def _run(
    ray: Any,
    cfg: ExtractConfig,
    store: EmbeddingStore,
    slides: Sequence[SlideInput],
    options: RayOptions,
    devices: Sequence[str],
    progress: Progress | None,
) -> list[SlideResult]:
    """Start the embedding actors on the connected cluster, drive them, and free them again."""
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
    try:
        return _drive(ray, remote, actors, cfg, device, store, slides, options, progress)
    finally:  # free the cluster's CPUs/GPUs now, also when the run stops with an error
        for actor in actors:
            ray.kill(actor)


def _drive(
    ray: Any,
    remote: Any,
    actors: list[Any],
    cfg: ExtractConfig,
    device: str,
    store: EmbeddingStore,
    slides: Sequence[SlideInput],
    options: RayOptions,
    progress: Progress | None,
) -> list[SlideResult]:
    """Schedule `slides` on `actors` (replacements are appended) and commit each slide as it arrives."""
    try:
        where = ray.get([a.where.remote() for a in actors])
    except ray.exceptions.RayActorError as exc:
        raise _start_failure(exc, "on the cluster") from exc
    labels = {a: f"{w['device']}@{w['node']}" for a, w in zip(actors, where, strict=True)}
    for w, label in zip(where, labels.values(), strict=True):
        if w["broken"] is not None:
            raise _stop(w["broken"], label)
    _check_reachable(ray, store, actors)
    report(progress, Event.STATUS, SLIDES, 0, f"{len(actors)} embedding workers: {_tally(labels.values())}")
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
        retries = attempts[k] - 1
        results.append(
            SlideResult(source.slide_id, str(source.path), "failed", 0, 0.0, error, device, retries)
        )
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
            label = labels.pop(actor, "a new worker")
            if getattr(exc, "actor_init_failed", False):
                raise _start_failure(exc, label) from exc
            cause = _one_line(str(exc))[:300]
            if attempts[k] <= options.max_retries:
                queue.appendleft(k)
                report(
                    progress,
                    Event.NOTE,
                    SLIDES,
                    0,
                    f"embedding worker {label} died on {source.slide_id}; retrying it "
                    f"(attempt {attempts[k] + 1})",
                )
            else:
                record_failure(
                    k, f"embedding worker died {attempts[k]} time(s) on this slide: {cause}", None, label
                )
            actor = remote.remote(cfg, device)  # replace the dead actor
            actors.append(actor)
            submit(actor)
            continue
        labels[actor] = out["device"]
        if out["status"] == BROKEN:
            raise _stop(out["error"], out["device"])
        report(progress, Event.STATUS, SLIDES, 0, f"{source.slide_id} {out['status']} on {out['device']}")
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
                        attempts[k] - 1,
                    )
                )
                report(progress, Event.ADVANCE, TILES, len(tiles))
                report(progress, Event.ADVANCE, SLIDES)
        else:
            record_failure(k, out["error"], out.get("record"), out["device"])
        submit(actor)
    return results
