"""`mvh index build --ray-address ADDR|local`: add shards of slides on Ray workers, merge on the driver.

The driver trains the quantiser once (`mvh.index.shards.training_sample`); each Ray task receives the
trained, empty index, opens the store as the driver opened it (same URI, tag or version, options),
streams its shard into a copy of the index and into its row part (written into the build folder, which
every node must reach: the same requirement as `mvh extract --ray-address` on a local store), and
returns the shard's index. The driver appends the shards' inverted lists in shard order
(`mvh.index.shards.merge_into`: FAISS `merge_from`), so ids, lists and search results equal a
one-process build's, which adds the same shards in the same order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mvh.errors import DependencyError, UsageError
from mvh.index.shards import Shard, add_shard, merge_into
from mvh.progress import VECTORS, Event, Progress, report
from mvh.store import EmbeddingStore
from mvh.store.location import StoreLocation

LOCAL = "local"


def _connect(address: str) -> Any:
    try:
        import ray
    except ImportError as exc:
        raise DependencyError('Ray is not installed: pip install -e ".[ray]" (or pip install ray)') from exc
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(
            address=None if address == LOCAL else address,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"--ray-address {address}: cannot connect ({' '.join(str(exc).split())}); start a cluster with "
            "`ray start --head` or use --ray-address local"
        ) from exc
    return ray


def build_shard(
    location: StoreLocation, trained: bytes, shard: Shard, folder: str
) -> tuple[dict[str, Any], bytes]:
    """A Ray task's body: stream `shard` into a copy of the `trained` index and a row part in `folder`."""
    store = EmbeddingStore.open(location)
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    entry = add_shard(store, index, shard, Path(folder))
    return entry, faiss.serialize_index(index).tobytes()


def add_shards_on_ray(
    address: str,
    store: EmbeddingStore,
    index: faiss.Index,
    shards: list[Shard],
    folder: Path,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Add every shard on Ray workers and merge them into `index` (in place, shard order); the parts."""
    if store.location.is_remote:
        raise UsageError(
            "--ray-address builds the index of a store on a path every node mounts; for an object-store "
            "store build on one machine (drop --ray-address)"
        )
    ray = _connect(address)
    task = ray.remote(num_cpus=1, max_retries=2)(build_shard)
    trained = ray.put(faiss.serialize_index(index).tobytes())
    pending = [task.remote(store.location, trained, shard, str(folder)) for shard in shards]
    parts = []
    for shard, ref in zip(shards, pending, strict=True):
        entry, data = ray.get(ref)
        merge_into(index, faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))
        parts.append(entry)
        report(progress, Event.ADVANCE, VECTORS, shard.n)
    return parts
