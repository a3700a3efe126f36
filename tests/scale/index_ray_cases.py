"""Ray index-build cases; run by test_index_ray.py inside a loopback-only network namespace.

Not collected on their own (the file name does not start with test_): outside the namespace Ray would
advertise a non-loopback address.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from mvh.core.synthetic_embeddings import clustered_embeddings
from mvh.index.build import build_index
from mvh.index.index_files import load_index
from mvh.store import EmbeddingStore
from tests.index.test_faiss_indexes import add_slide, make_store

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes (one CPU each) on 127.0.0.1, no dashboard, no usage stats."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}, "Ray must only bind loopback here"
    yield c
    ray.shutdown()
    c.shutdown()


def _store(folder: Path) -> EmbeddingStore:
    x, _ = clustered_embeddings(1200, dim=32, n_clusters=12, seed=2)
    store = make_store(folder)
    for i in range(6):
        add_slide(store, f"s{i}", x[i * 200 : (i + 1) * 200])
    return store


@pytest.mark.parametrize("kind", ["ivfpq", "flat"])
def test_ray_build_equals_the_one_process_build(cluster, tmp_path, kind):
    one, on_ray = _store(tmp_path / "one"), _store(tmp_path / "ray")
    opts = {"nlist": 8, "m": 8} if kind == "ivfpq" else {}
    a = build_index(one, kind, shard_tiles=400, **opts)
    b = build_index(on_ray, kind, shard_tiles=400, ray_address=cluster.address, **opts)
    assert a.n_shards == b.n_shards == 3 and a.n_tiles == b.n_tiles == 1200
    ia, ib = load_index(one), load_index(on_ray)
    if kind == "ivfpq":  # the same trained quantiser (same sample, same seed)
        qa, qb = faiss.extract_index_ivf(ia.index).quantizer, faiss.extract_index_ivf(ib.index).quantizer
        np.testing.assert_array_equal(qa.reconstruct_n(0, qa.ntotal), qb.reconstruct_n(0, qb.ntotal))
        # and the same graph over the centroids, so every vector finds the same cell
        graph_a, graph_b = faiss.downcast_index(qa).hnsw, faiss.downcast_index(qb).hnsw
        np.testing.assert_array_equal(faiss.vector_to_array(graph_a.neighbors),
                                      faiss.vector_to_array(graph_b.neighbors))
    queries = np.random.default_rng(1).standard_normal((50, 32)).astype(np.float32)
    sa, ra = ia.search_ids(queries, 10)
    sb, rb = ib.search_ids(queries, 10)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(sa, sb)
    assert ia.hits(sa, ra)["tile_id"].tolist() == ib.hits(sb, rb)["tile_id"].tolist()
    # the parts were written by the workers, on both nodes' shared path
    assert [p["slides"] for p in ia.meta["parts"]] == [p["slides"] for p in ib.meta["parts"]]
