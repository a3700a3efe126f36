"""Retrieval metrics against hand-computed examples and an independent implementation written here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from mvh.errors import DataError, UsageError
from mvh.index.build import build_index
from mvh.index.exact import exact_search, recall_at_k
from mvh.progress import Event, Recorder
from mvh.store import EmbeddingStore
from mvh.tasks import retrieval
from mvh.tasks.retrieval import (
    QUERIES,
    RetrievalConfig,
    RetrievalResult,
    evaluate_retrieval,
    load_labels,
    neighbour_scores,
    run_retrieval,
)
from mvh.tasks.retrieval_metrics import (
    acc_at_k,
    average_precision_at_k,
    average_precision_at_k_min_r,
    majority_labels,
    map_at_k,
    map_at_k_min_r,
    mv_at_k,
    relevant_counts,
    retrieval_metrics,
)
from tests.conftest import synthetic_fingerprint


def test_acc_at_k_hand_example() -> None:
    retrieved = np.array([["b", "a", "a"], ["a", "a", "c"]], dtype=object)
    assert acc_at_k(["a", "b"], retrieved, 1) == 0.0
    assert acc_at_k(["a", "b"], retrieved, 2) == 0.5
    assert acc_at_k(["a", "c"], retrieved, 3) == 1.0


def test_majority_vote_ties_count_as_hits_for_every_tied_label() -> None:
    # Patho-Bench: the query's label among the tied majority labels is a hit.
    ranked = ["a", "b", "b", "a", "c"]
    assert majority_labels(ranked) == {"a", "b"}
    assert majority_labels([None, None, "c"]) == {"c"}
    retrieved = np.array([ranked, ranked, ranked], dtype=object)
    assert mv_at_k(["a", "b", "c"], retrieved, 5) == pytest.approx(2 / 3)
    # A strict majority still has one winner.
    assert mv_at_k(["a"], np.array([["b", "a", "b", "c", "b"]], dtype=object), 5) == 0.0


def ap_reference(query_label, ranked, n_relevant, k):
    """Independent AP@k: precision at each relevant rank, summed, over min(k, R)."""
    total, hits = 0.0, 0
    for i, label in enumerate(ranked[:k], start=1):
        if label == query_label:
            hits += 1
            total += hits / i
    return total / min(k, n_relevant)


def map_patho_bench(retrievals, y_queries, k):
    """Patho-Bench's mAP@k, written out from patho_bench/experiments/utils/RetrievalMixin.py,
    `RetrievalMixin.map_at_k`: precision at each hit summed, divided by k; no hit scores 0; every query."""
    average_precisions = []
    for i, query_label in enumerate(y_queries):
        correct_count, precision_at_k = 0, 0.0
        for j, label in enumerate(retrievals[i][:k]):
            if label == query_label:
                correct_count += 1
                precision_at_k += correct_count / (j + 1)
        average_precisions.append(precision_at_k / k if correct_count > 0 else 0.0)
    return float(np.mean(average_precisions))


def test_map_at_5_is_patho_bench_map_at_k() -> None:
    # One hit at rank 1 of five scores 0.2; two hits at ranks 1 and 2 score 0.4; a query without a hit
    # (also one whose label appears nowhere in the gallery) scores 0 and stays in the mean.
    assert average_precision_at_k("a", ["a", "b", "b", "b", "b"], k=5) == pytest.approx(0.2)
    assert average_precision_at_k("a", ["a", "a", None, None, None], k=5) == pytest.approx(0.4)
    rows = np.array([["a", "b", "a", "c", "a"], ["b", "b", "c", "c", "b"]], dtype=object)
    assert map_at_k(["a", "z"], rows, 5) == pytest.approx((1 + 2 / 3 + 3 / 5) / 5 / 2)
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c", "d"], size=60)
    ranked = rng.choice(["a", "b", "c"], size=(60, 8)).astype(object)
    assert map_at_k(labels, ranked, 5) == pytest.approx(map_patho_bench(ranked, labels, 5), abs=1e-15)


def test_min_r_variant_divides_by_min_k_and_relevant() -> None:
    one_hit = ["a", "b", "b", "b", "b"]
    assert average_precision_at_k_min_r("a", one_hit, n_relevant=50, k=5) == pytest.approx(0.2)
    assert average_precision_at_k_min_r("a", one_hit, n_relevant=1, k=5) == pytest.approx(1.0)
    ranked = ["a", "b", "a", "c", "a"]
    expected = (1 / 1 + 2 / 3 + 3 / 5) / 3
    assert average_precision_at_k_min_r("a", ranked, 3, 5) == pytest.approx(expected)
    # Every relevant item in the list: AP@k equals sklearn's average precision of the ranking.
    rel = [label == "a" for label in ranked]
    assert expected == pytest.approx(average_precision_score(rel, -np.arange(5)))
    rng = np.random.default_rng(0)
    for _ in range(50):
        row = list(rng.choice(["a", "b", "c"], size=7))
        r = int(rng.integers(1, 12))
        assert average_precision_at_k_min_r("a", row, r, 5) == pytest.approx(ap_reference("a", row, r, 5))
    assert np.isnan(average_precision_at_k_min_r("z", ranked, 0, 5))
    rows = np.array([ranked, ranked], dtype=object)
    assert map_at_k_min_r(["a", "z"], rows, [3, 0], 5) == pytest.approx(expected)  # R = 0: left out


def test_relevant_counts_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    labels = rng.choice(["a", "b", "c"], size=40)
    groups = rng.integers(0, 5, size=40)
    brute = [sum(labels[j] == labels[i] and groups[j] != groups[i] for j in range(40)) for i in range(40)]
    assert relevant_counts(labels, groups).tolist() == brute
    brute = [sum(labels[j] == labels[i] for j in range(40) if j != i) for i in range(40)]
    assert relevant_counts(labels, None).tolist() == brute


def test_retrieval_metrics_keys() -> None:
    out = retrieval_metrics(["a"], np.array([["a", None, None, None, None]], dtype=object), [1], ks=(1, 3))
    assert out == {"acc@1": 1.0, "acc@3": 1.0, "mv@5": 1.0, "map@5": 0.2, "map@5_min_r": 1.0}


def make_store(tmp_path: Path, dim: int = 4) -> EmbeddingStore:
    fp = synthetic_fingerprint(dim)
    return EmbeddingStore.create(tmp_path / "store", fp)


def add(store: EmbeddingStore, slide_id: str, tile_ids: list[str], emb: np.ndarray) -> None:
    xs = np.arange(len(tile_ids)) * 448
    frame = pd.DataFrame({"tile_id": tile_ids, "x": xs, "y": 0, "tile_px": 224, "mpp": 0.5,
                          "tissue_fraction": 1.0})
    store.add_slide({"slide_id": slide_id, "path": None}, frame, emb.astype(np.float32))


@pytest.fixture
def planted_store(tmp_path: Path) -> EmbeddingStore:
    """Two slides of two tiles each; hand-worked neighbours in the tests below."""
    store = make_store(tmp_path)
    add(store, "S1", ["p", "q"], np.array([[1, 0, 0, 0], [0, 1, 0, 0]]))
    add(store, "S2", ["r", "s"], np.array([[0.9, 0.1, 0, 0], [0.8, 0.6, 0, 0]]))
    return store


TILE_LABELS = pd.DataFrame({"tile_id": ["p", "q", "r", "s"], "label": ["a", "b", "a", "b"]})


def test_evaluate_leave_one_slide_out_hand_worked(planted_store: EmbeddingStore) -> None:
    # p -> r(a) s(b); q -> s(b) r(a); r -> p(a) q(b); s -> p(a) q(b). R = 1 for every query.
    # MV@5: every 2-tile vote is a 1:1 tie, which counts as a hit; mAP: s finds its tile at rank 2
    # (AP@5 = (1/2) / 5 in Patho-Bench's mAP, (1/2) / min(5, R = 1) in the variant).
    out = evaluate_retrieval(planted_store, TILE_LABELS, ks=(1, 2), leave_out="slide")
    assert out.n_queries == 4 and out.index is None
    assert out.exact == pytest.approx({"acc@1": 0.75, "acc@2": 1.0, "mv@5": 1.0, "map@5": 0.7 / 4,
                                       "map@5_min_r": 3.5 / 4})


def test_evaluate_same_slide_allowed_and_index_recall(planted_store: EmbeddingStore) -> None:
    # Without leave-out: p -> r(a) s(b) q(b); q -> s(b) r(a) p(a); r -> p(a) s(b) q(b); s -> r(a) p(a) q(b).
    # Every vote of three goes 2:1 against the query's label; AP@5 of s = (1/3) / 5, or / min(5, 1).
    out = evaluate_retrieval(planted_store, TILE_LABELS, ks=(1,), leave_out="none")
    assert out.exact == pytest.approx({"acc@1": 0.75, "mv@5": 0.0, "map@5": (0.6 + 1 / 15) / 4,
                                       "map@5_min_r": (3 + 1 / 3) / 4})
    build_index(planted_store)
    for leave_out in ("slide", "none"):
        out = evaluate_retrieval(planted_store, TILE_LABELS, ks=(1, 3), leave_out=leave_out)
        index = out.index
        assert index["kind"] == "flat" and index["recall@1"] == 1.0 and index["recall@3"] == 1.0
        assert {k: index[k] for k in out.exact} == pytest.approx(out.exact)


def independent_evaluation(emb, labels, groups, ks):
    """The protocol from its definitions: float64 cosine, self and own group removed, stable order."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    acc = {k: [] for k in ks}
    mv, aps, ranked_all = [], [], []
    for i in range(len(x)):
        order = [j for j in np.argsort(-sims[i], kind="stable") if j != i and groups[j] != groups[i]]
        ranked = [labels[j] for j in order]
        ranked_all.append(ranked + [None] * 5)
        for k in ks:
            acc[k].append(labels[i] in ranked[:k])
        top = Counter(ranked[:5])
        mv.append(bool(top) and top[labels[i]] == max(top.values()))
        r = sum(labels[j] == labels[i] for j in order)
        if r:
            aps.append(ap_reference(labels[i], ranked, r, 5))
    out = {f"acc@{k}": float(np.mean(acc[k])) for k in ks}
    return {**out, "mv@5": float(np.mean(mv)), "map@5": map_patho_bench(ranked_all, labels, 5),
            "map@5_min_r": float(np.mean(aps))}


@pytest.mark.parametrize("leave_out", ["slide", "patient", "none"])
def test_evaluation_equals_independent_implementation(tmp_path: Path, leave_out: str) -> None:
    rng = np.random.default_rng(7)
    store = make_store(tmp_path, dim=8)
    centres = rng.standard_normal((3, 8))
    rows = []
    for s in range(4):
        labels = rng.integers(0, 3, size=12)
        emb = centres[labels] + 0.9 * rng.standard_normal((12, 8))
        ids = [f"S{s}:{i}" for i in range(12)]
        add(store, f"S{s}", ids, emb)
        rows += [(t, f"c{lab}", f"P{s // 2}", f"S{s}", e) for t, lab, e in zip(ids, labels, emb, strict=True)]
    table = pd.DataFrame([r[:3] for r in rows], columns=["tile_id", "label", "patient"])
    out = evaluate_retrieval(store, table, ks=(1, 3, 5), leave_out=leave_out)
    emb = np.array([r[4] for r in rows], dtype=np.float32)
    labels = [r[1] for r in rows]
    groups = {"slide": [r[3] for r in rows], "patient": [r[2] for r in rows], "none": list(range(len(rows)))}
    assert out.exact == pytest.approx(independent_evaluation(emb, labels, groups[leave_out], (1, 3, 5)))
    assert out.n_patients == 2 and out.leave_out == leave_out


def test_slide_labels_errors_and_job_shape(planted_store: EmbeddingStore, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    pd.DataFrame({"slide_id": ["S1", "S2"], "label": ["x", "y"]}).to_csv(path, index=False)
    labels, _ = load_labels(path)
    out = evaluate_retrieval(planted_store, labels, leave_out="slide")
    assert out.label_counts == {"x": 2, "y": 2} and out.exact["acc@5"] == 0.0
    assert out.n_queries_without_relevant == 4 and any("no retrievable tile" in n for n in out.notes)
    out = evaluate_retrieval(planted_store, labels, ks=(1,), leave_out="none")
    assert out.exact["acc@1"] == 0.25  # only s has its same-slide neighbour (r) first
    with pytest.raises(DataError, match="labels file lab.csv: 1 tile_id"):
        evaluate_retrieval(planted_store, pd.DataFrame({"tile_id": ["p", "zz"], "label": ["a", "b"]}),
                           source="lab.csv")
    with pytest.raises(DataError, match="need a `label` column"):
        evaluate_retrieval(planted_store, pd.DataFrame({"tile": ["p"], "label": ["a"]}))
    with pytest.raises(DataError, match="needs a `patient` column"):
        evaluate_retrieval(planted_store, TILE_LABELS, leave_out="patient")
    with pytest.raises(UsageError, match="--ks"):
        RetrievalConfig(store=planted_store.uri, labels=path, ks=(0, 3))
    with pytest.raises(UsageError, match="--leave-out"):
        RetrievalConfig(store=planted_store.uri, labels=path, leave_out="study")
    tile_path = tmp_path / "tiles.csv"
    TILE_LABELS.to_csv(tile_path, index=False)
    recorder = Recorder()
    cfg = RetrievalConfig(store=planted_store.uri, labels=tile_path, ks=(2, 1), out=tmp_path / "r")
    result = run_retrieval(cfg, progress=recorder)
    assert result.ks == [1, 2] and recorder.count(Event.ADVANCE, QUERIES) == 4
    assert RetrievalResult.from_dict(json.loads((tmp_path / "r" / "results.json").read_text())) == result
    with pytest.raises(UsageError, match=r"--out .*r\.json names a file, but --out is a folder"):
        RetrievalConfig(store=planted_store.uri, labels=tile_path, out=tmp_path / "r.json")
    (tmp_path / "taken").write_text("")
    with pytest.raises(UsageError, match="is a file; give a folder"):
        run_retrieval(RetrievalConfig(store=planted_store.uri, labels=tile_path, out=tmp_path / "taken"))
    with pytest.raises(UsageError, match="--labels .*: no such file"):
        run_retrieval(RetrievalConfig(store=planted_store.uri, labels=tmp_path / "absent.csv"))


def test_recall_counts_an_equal_score_neighbour_as_a_hit() -> None:
    """Rows 1 and 2 are the same vector: exact search keeps row 1 (lower id), an index may return row 2.
    Written-out rule: a returned row is a hit when it is in the exact top-k or its exact cosine equals
    the exact k-th cosine; a row scoring below it is a miss."""
    db = np.array([[1, 0, 0], [0.8, 0.6, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    query = np.array([[1, 0.1, 0]], dtype=np.float32)
    _, exact_ids = exact_search(db, query, 2)
    assert exact_ids.tolist() == [[0, 1]]
    approx_ids = np.array([[0, 2]])
    approx_scores = neighbour_scores(np.vstack([query, db]), np.array([[1, 3]]))
    exact_scores = neighbour_scores(np.vstack([query, db]), np.array([[1, 2]]))
    assert recall_at_k(approx_ids, exact_ids, 2) == 0.5  # ids alone: the tie looks like a miss
    scored = {"approx_scores": approx_scores, "exact_scores": exact_scores}
    assert recall_at_k(approx_ids, exact_ids, 2, **scored) == 1.0
    worse = neighbour_scores(np.vstack([query, db]), np.array([[1, 4]]))  # row 3 scores below the k-th
    assert recall_at_k(np.array([[0, 3]]), exact_ids, 2, approx_scores=worse,
                       exact_scores=exact_scores) == 0.5


def test_neighbour_scores_are_cosines() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4))
    ids = np.array([[1, 2], [0, -1], [3, 4], [5, 0], [1, 1], [2, 3]])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = [[unit[i] @ unit[j] if j >= 0 else -np.inf for j in row] for i, row in enumerate(ids)]
    np.testing.assert_allclose(neighbour_scores(x, ids), expected, atol=1e-6)


def test_neighbour_scores_in_blocks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows gathered a block at a time (blocks of 4 over 10 rows: a partial last block) score exactly
    as when every row is in one block."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 5)).astype(np.float32)
    ids = rng.integers(-1, 10, size=(10, 3))
    whole = neighbour_scores(x, ids)
    monkeypatch.setattr(retrieval, "_SCORE_ROWS", 4)
    blocked = neighbour_scores(x, ids)
    np.testing.assert_array_equal(blocked, whole)
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    expected = [[unit[i] @ unit[j] if j >= 0 else -np.inf for j in row] for i, row in enumerate(ids)]
    np.testing.assert_allclose(blocked, expected, atol=1e-6)
