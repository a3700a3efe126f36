"""Retrieval metrics against hand-computed examples, and the evaluation on a planted store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from mvh.errors import DataError
from mvh.index.store import EmbeddingStore, StoreFingerprint
from mvh.index.vector import build_index
from mvh.tasks.retrieval import (
    acc_at_k,
    average_precision_at_k,
    evaluate_retrieval,
    exact_neighbours,
    load_labels,
    majority_label,
    map_at_k,
    mv_at_k,
    retrieval_metrics,
)


def test_acc_at_k_hand_example() -> None:
    retrieved = np.array([["b", "a", "a"], ["a", "a", "c"]], dtype=object)
    assert acc_at_k(["a", "b"], retrieved, 1) == 0.0
    assert acc_at_k(["a", "b"], retrieved, 2) == 0.5
    assert acc_at_k(["a", "c"], retrieved, 3) == 1.0


def test_majority_vote_ties_go_to_the_first_ranked_label() -> None:
    ranked = ["a", "b", "b", "a", "c"]
    assert majority_label(ranked) == "a"
    assert majority_label(["c", "b", "b", "a", "a"]) == "b"
    assert majority_label([None, None, "c"]) == "c"
    assert mv_at_k(["a", "b"], np.array([ranked, ranked], dtype=object), 5) == 0.5


def test_average_precision_hand_example_and_sklearn() -> None:
    ranked = ["a", "b", "a", "c", "a"]
    expected = (1 / 1 + 2 / 3 + 3 / 5) / 3
    assert average_precision_at_k("a", ranked, 5) == pytest.approx(expected)
    # When every relevant item is in the list, AP@k equals sklearn's average precision of the ranking.
    rel = [label == "a" for label in ranked]
    assert expected == pytest.approx(average_precision_score(rel, -np.arange(5)))
    assert average_precision_at_k("a", ranked, 2) == pytest.approx(1.0)
    assert average_precision_at_k("z", ranked, 5) == 0.0
    assert map_at_k(["a", "z"], np.array([ranked, ranked], dtype=object), 5) == pytest.approx(expected / 2)


def test_retrieval_metrics_keys() -> None:
    out = retrieval_metrics(["a"], np.array([["a", None, None, None, None]], dtype=object), ks=(1, 3))
    assert out == {"acc@1": 1.0, "acc@3": 1.0, "mv@5": 1.0, "map@5": 1.0}


def test_exact_neighbours_masks_self_and_own_slide() -> None:
    emb = np.array([[1, 0], [1, 0.01], [0.9, 0.3], [0, 1]], dtype=np.float32)
    slides = ["s1", "s1", "s2", "s2"]
    _, ids = exact_neighbours(emb, slides, 3, leave_one_slide_out=False)
    assert ids[0].tolist() == [1, 2, 3]
    _, ids = exact_neighbours(emb, slides, 3, leave_one_slide_out=True)
    assert ids[0].tolist() == [2, 3, -1] and ids[3].tolist() == [1, 0, -1]


@pytest.fixture
def planted_store(tmp_path: Path) -> EmbeddingStore:
    """Two slides of two tiles each; hand-worked neighbours in the tests below."""
    fp = StoreFingerprint(
        model="synthetic", model_config={}, weights_sha256="random-init", weights_path=None,
        embed_dim=4, tile_px=224, mpp=0.5, mean=None, std=None,
    )
    store = EmbeddingStore.create(tmp_path / "store", fp)
    planted = {
        "S1": [("p", [1, 0, 0, 0]), ("q", [0, 1, 0, 0])],
        "S2": [("r", [0.9, 0.1, 0, 0]), ("s", [0.8, 0.6, 0, 0])],
    }
    for slide_id, tiles in planted.items():
        frame = pd.DataFrame(
            {"tile_id": [t for t, _ in tiles], "x": [0, 448], "y": [0, 0], "tile_px": 224, "mpp": 0.5,
             "tissue_fraction": 1.0}
        )
        emb = np.array([e for _, e in tiles], dtype=np.float32)
        store.add_slide({"slide_id": slide_id, "path": None}, frame, emb)
    return store


TILE_LABELS = pd.DataFrame({"tile_id": ["p", "q", "r", "s"], "label": ["a", "b", "a", "b"]})


def test_evaluate_leave_one_slide_out_hand_worked(planted_store: EmbeddingStore) -> None:
    # p -> r(a) q; q -> s(b) r; r -> p(a) q; s -> p(a) q(b): s is the one miss at rank 1.
    out = evaluate_retrieval(planted_store, TILE_LABELS, ks=(1, 2), leave_one_slide_out=True)
    assert out["n_queries"] == 4 and out["index"] is None
    assert out["exact"] == pytest.approx({"acc@1": 0.75, "acc@2": 1.0, "mv@5": 0.75, "map@5": 3.5 / 4})


def test_evaluate_same_slide_allowed_and_index_recall(planted_store: EmbeddingStore) -> None:
    # Without LOSO: p -> r(a) s(b) q(b); q -> s(b) r(a) p(a); r -> p(a) s(b) q(b); s -> r(a) p(a) q(b).
    # Every vote of three goes 2:1 against the query's label; AP@5 of s = 1/3, of the others 1.
    out = evaluate_retrieval(planted_store, TILE_LABELS, ks=(1,), leave_one_slide_out=False)
    assert out["exact"] == pytest.approx({"acc@1": 0.75, "mv@5": 0.0, "map@5": (3 + 1 / 3) / 4})
    build_index(planted_store)
    for loso in (True, False):
        out = evaluate_retrieval(planted_store, TILE_LABELS, ks=(1, 3), leave_one_slide_out=loso)
        index = out.pop("index")
        assert index["kind"] == "flat" and index["recall@1"] == 1.0 and index["recall@3"] == 1.0
        assert {k: index[k] for k in out["exact"]} == pytest.approx(out["exact"])


def test_slide_labels_and_errors(planted_store: EmbeddingStore, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    pd.DataFrame({"slide_id": ["S1", "S2"], "label": ["x", "y"]}).to_csv(path, index=False)
    out = evaluate_retrieval(planted_store, load_labels(path), leave_one_slide_out=True)
    assert out["labels"] == {"x": 2, "y": 2} and out["exact"]["acc@5"] == 0.0
    out = evaluate_retrieval(planted_store, load_labels(path), ks=(1,), leave_one_slide_out=False)
    assert out["exact"]["acc@1"] == 0.25  # only s has its same-slide neighbour (r) first
    with pytest.raises(DataError, match="not in store"):
        evaluate_retrieval(planted_store, pd.DataFrame({"tile_id": ["p", "zz"], "label": ["a", "b"]}))
    with pytest.raises(DataError, match="need a `label` column"):
        evaluate_retrieval(planted_store, pd.DataFrame({"tile": ["p"], "label": ["a"]}))
