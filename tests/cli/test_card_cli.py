"""`mvh card`: the card exists from a store's creation, `--set` edits it, `--json` alone only reads it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mvh.cli import app
from mvh.store import EmbeddingStore
from mvh.store.sidecar import SidecarFiles
from tests.interop.test_peers import trident_slide
from tests.reliability._faults import fingerprint

runner = CliRunner()


def test_a_store_has_its_card_from_creation(tmp_path) -> None:
    # Before: no card until someone ran `mvh card`.
    store = EmbeddingStore.create(tmp_path / "new.lance", fingerprint())
    card = EmbeddingStore.open(tmp_path / "new.lance").meta["card"]
    assert card["model"] == "mv_hybrid_tiny" and card["n_slides_done"] == 0 and card["fields"] == {}
    assert card["store"] == "new.lance" and str(tmp_path) not in json.dumps(card)  # no local path
    assert store.table_versions()["meta"] == 1  # written with the meta table, not after it


def test_an_imported_store_has_a_card_listing_its_slides(tmp_path) -> None:
    folder = trident_slide(tmp_path / "job", "s", 3).parent
    assert runner.invoke(app, ["import", str(folder), "--store", str(tmp_path / "i.lance")]).exit_code == 0
    card = EmbeddingStore.open(tmp_path / "i.lance").meta["card"]
    assert card["model"] == "external:uni_v1" and [s["slide_id"] for s in card["slides"]] == ["s"]


def test_card_json_reads_without_rewriting(tmp_path) -> None:
    uri = str(tmp_path / "c.lance")
    EmbeddingStore.create(uri, fingerprint())
    edited = runner.invoke(app, ["card", "--store", uri, "--set", "owner=Lab A"])
    assert edited.exit_code == 0, edited.output
    store = EmbeddingStore.open(uri)
    versions, written = store.table_versions(), store.meta["card"]["card_written"]
    sidecar = SidecarFiles(store.location, "card").get("CARD.md")
    # Before: `--json` wrote the card again (a new meta version, a new CARD.md).
    shown = runner.invoke(app, ["card", "--store", uri, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["fields"] == {"owner": "Lab A"}
    after = EmbeddingStore.open(uri)
    assert after.table_versions() == versions and after.meta["card"]["card_written"] == written
    assert SidecarFiles(after.location, "card").get("CARD.md") == sidecar
