"""A store written by the previous release (mvh 0.1, before `mvh.store` was a package) opens unchanged.

`tests/data/store_v0_1` was written once with that release's code (slides a, b done, c failed, tag
`first`, then a re-embedded with fewer tiles and d added, a card set); `store_v0_1.expected.json` holds
what that code read back from it. The current code must read the same tiles, slides, tags, versions and
fingerprint, at the head and at the tag.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mvh.store import EmbeddingStore, StoreFingerprint, StoreInfo

DATA = Path(__file__).resolve().parents[1] / "data"
SLIDE_COLUMNS = [
    "slide_id", "path", "size", "file_hash", "width", "height", "mpp", "mpp_source", "status", "error",
    "n_tiles", "model", "weights", "commit", "checksum", "slide_attrs",
]


@pytest.fixture()
def old_store(tmp_path: Path) -> Path:
    """A copy of the committed store (opening a store must not touch the repository's copy)."""
    return Path(shutil.copytree(DATA / "store_v0_1", tmp_path / "store_v0_1.lance"))


@pytest.mark.parametrize("snapshot", ["latest", "first"])
def test_a_store_of_the_previous_release_reads_the_same(old_store: Path, snapshot: str) -> None:
    expected = json.loads((DATA / "store_v0_1.expected.json").read_text())[snapshot]
    store = EmbeddingStore.open(str(old_store) if snapshot == "latest" else f"{old_store}@{snapshot}")
    assert store.fingerprint.to_dict() == expected["fingerprint"]
    assert store.version == expected["version"]
    assert store.table_versions() == expected["table_versions"]
    assert store.tags() == expected["tags"]
    assert store.meta == expected["meta"]
    assert not store.legacy
    # Its column `attrs` reads as `slide_attrs` (renamed: it clashed with pandas' DataFrame.attrs).
    frame = store.slides()[SLIDE_COLUMNS].rename(columns={"slide_attrs": "attrs"})
    slides = json.loads(frame.to_json(orient="records"))
    assert slides == expected["slides"]
    assert store.slide_ids() == sorted(expected["tiles"])
    for slide_id, want in expected["tiles"].items():
        emb, coords = store.slide_embeddings(slide_id)
        assert list(store.slide_tiles(slide_id)["tile_id"]) == want["tile_id"]
        assert coords.tolist() == want["coords"]
        np.testing.assert_array_equal(emb, np.asarray(want["embedding"], dtype=np.float32))
        assert store.slide_attrs(slide_id) == want["attrs"]


def test_the_previous_release_store_stays_writable(old_store: Path) -> None:
    """Its layout is the current one: a new slide commits, and `first` still pins the old state."""
    store = EmbeddingStore.open(str(old_store))
    emb, _ = store.slide_embeddings("b")
    tiles = store.slide_tiles("b").assign(tile_id=lambda f: f["tile_id"].str.replace("b:", "e:"))
    store.add_slide({"slide_id": "e", "slide_attrs": {"k": 1}}, tiles, emb)
    assert EmbeddingStore.open(str(old_store)).slide_ids() == ["a", "b", "d", "e"]
    # Written under the column name the old store has; read back as `slide_attrs` either way.
    assert "attrs" in store.schema()["slides"].names and "slide_attrs" not in store.schema()["slides"].names
    again = EmbeddingStore.open(str(old_store))
    assert again.slide_attrs("e") == {"k": 1} == json.loads(again.slides()["slide_attrs"].iloc[-1])
    assert EmbeddingStore.open(f"{old_store}@first").slide_ids() == ["a", "b"]


def test_info_is_typed_and_its_json_keeps_the_previous_release_keys(old_store: Path) -> None:
    """`mvh info --json` of the previous release printed these keys; the typed record writes the same."""
    info = EmbeddingStore.open(str(old_store)).info()
    assert isinstance(info, StoreInfo) and isinstance(info.fingerprint, StoreFingerprint)
    data = info.to_dict()
    assert set(data) == {
        "uri", "opened_as", "read_only", "storage_options", "version", "table_versions", "tags",
        "card_fields", "card", "fingerprint", "mvh_version", "created", "n_slides", "slides_by_status",
        "n_tiles", "writable_layout", "schema",
    }
    expected = json.loads((DATA / "store_v0_1.expected.json").read_text())["latest"]
    assert data["fingerprint"] == expected["fingerprint"] and data["tags"] == expected["tags"]
    assert (data["n_slides"], data["slides_by_status"], data["n_tiles"]) == (4, {"done": 3, "failed": 1}, 9)
    assert data["card_fields"] == {"title": "v0.1 fixture"} and json.dumps(data)
