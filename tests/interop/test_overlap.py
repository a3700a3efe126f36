"""`run_overlap`: slides that two stores share by file hash, every pair named."""

from __future__ import annotations

from mvh.overlap import OverlapConfig, run_overlap
from mvh.store import EmbeddingStore
from tests.reliability._faults import distinct, fingerprint, tiles


def _store(uri, slides: dict[str, tuple[str, int]]) -> EmbeddingStore:
    """A store of slides id -> (file hash, seed), two tiles each."""
    store = EmbeddingStore.create(uri, fingerprint())
    for sid, (file_hash, seed) in slides.items():
        record = {"slide_id": sid, "path": f"/x/{sid}.svs", "file_hash": file_hash}
        store.add_slide(record, tiles(sid, 2), distinct(2, seed))
    return store


def test_every_slide_of_a_sharing_a_file_with_b_is_named(tmp_path) -> None:
    # Before: one slide of A per file hash was kept, so a1 (or a2) went unreported.
    a = _store(tmp_path / "a.lance", {"a1": ("h1", 1), "a2": ("h1", 2), "a3": ("h3", 3)})
    b = _store(tmp_path / "b.lance", {"b1": ("h1", 4), "b2": ("h2", 5)})
    result = run_overlap(a, b, OverlapConfig(threshold=0.999999))
    pairs = sorted((s.slide_a, s.slide_b, s.file_hash) for s in result.shared_slides)
    assert pairs == [("a1", "b1", "h1"), ("a2", "b1", "h1")]
    assert result.leakage
