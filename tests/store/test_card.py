"""`mvh card`: the card is kept in the store and written into the `--out` folder as CARD.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mvh.errors import UsageError
from mvh.store import EmbeddingStore
from mvh.store.card import CARD_FILE, DatasetCard, parse_card_fields, write_card
from tests.conftest import synthetic_fingerprint


@pytest.fixture()
def store(tmp_path: Path) -> EmbeddingStore:
    store = EmbeddingStore.create(tmp_path / "s.lance", synthetic_fingerprint(4))
    tiles = pd.DataFrame({"tile_id": ["a:0:0:448", "a:448:0:448"], "x": [0, 448], "y": 0, "tile_px": 224,
                          "mpp": 0.5, "tissue_fraction": 1.0})
    record = {"slide_id": "a", "path": "/data/a.svs", "file_hash": "sha256-3mib:ab"}
    store.add_slide(record, tiles, np.ones((2, 4)))
    return store


def test_the_card_goes_into_the_store_and_the_out_folder(store: EmbeddingStore, tmp_path: Path) -> None:
    card, written = write_card(store, parse_card_fields(["owner=Lab A"]), tmp_path / "card")
    text = (tmp_path / "card" / CARD_FILE).read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["fields"] == {"owner": "Lab A"} and front["n_tiles"] == 2
    assert front["slides"][0]["file_hash"] == "sha256-3mib:ab"
    assert written[-1] == str(tmp_path / "card" / CARD_FILE)
    again = EmbeddingStore.open(store.uri)
    assert DatasetCard.from_dict(again.meta["card"]) == card
    assert again.info().card_fields == {"owner": "Lab A"}


def test_the_old_file_form_of_out_is_one_line_error(store: EmbeddingStore, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--out .*CARD\.md names a file, but --out is a folder \(CARD\.md"):
        write_card(store, {}, tmp_path / "CARD.md")
    (tmp_path / "taken").write_text("")
    with pytest.raises(UsageError, match="is a file; give a folder"):
        write_card(store, {}, tmp_path / "taken")
