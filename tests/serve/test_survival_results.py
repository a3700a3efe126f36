"""A real (tiny) `mvh eval survival --heatmap` run as a --results folder: what the viewer gets from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mvh.cli import app as cli
from mvh.serve import ServeConfig, create_app
from mvh.store import EmbeddingStore
from tests.serve.conftest import REAL

pytestmark = pytest.mark.real_data
N_PATIENTS = 10


@pytest.fixture(scope="module")
def survival_run(serve_store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Ten 'patients', each a random subset of the real slide's stored tiles; 2 folds, 2 epochs."""
    root = tmp_path_factory.mktemp("serve_survival")
    source = EmbeddingStore.open(serve_store)
    emb, _ = source.slide_embeddings(REAL)
    tiles = source.slide_tiles(REAL)
    record = source.slides().set_index("slide_id").loc[REAL].to_dict()
    store = EmbeddingStore.create(root / "cohort.lance", source.fingerprint)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_PATIENTS):
        sid = f"p{i:02d}"
        pick = np.sort(rng.choice(len(tiles), size=12, replace=False))
        part = tiles.iloc[pick].assign(tile_id=[f"{sid}:{t}" for t in tiles["tile_id"].iloc[pick]])
        store.add_slide({**record, "slide_id": sid}, part, emb[pick])
        rows.append((sid, f"P{i:02d}", float(rng.exponential(10.0)), int(i % 3 != 0)))
    cohort = root / "cohort.csv"
    pd.DataFrame(rows, columns=["slide_id", "patient_id", "time", "event"]).to_csv(cohort, index=False)
    out = root / "out"
    args = ["eval", "survival", "--cohort", str(cohort), "--store", str(store.uri), "--folds", "2",
            "--coxph-folds", "2", "--epochs", "2", "--heatmap", "p03", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return str(store.uri), out


def test_survival_heatmap_figure_is_served_on_its_slide(survival_run: tuple[str, Path]) -> None:
    uri, out = survival_run
    client = TestClient(create_app(ServeConfig(stores=[uri], results=[out])))
    overlays = client.get("/api/overlays/cohort/p03").json()
    [folder] = overlays["results"]
    assert folder["task"] == "survival"
    heat = [f for f in overlays["figures"] if f["key"] == "heatmap"]
    assert heat and heat[0]["slide_id"] == "p03" and heat[0]["file"] == "heatmap_p03.png"
    png = client.get(heat[0]["url"])
    assert png.status_code == 200 and png.content == (out / "heatmap_p03.png").read_bytes()
    other = client.get("/api/overlays/cohort/p04").json()
    assert all(f["key"] != "heatmap" for f in other["figures"])
    # the run's per-tile attention becomes the viewer's layer on that slide, at the stored tiles' places
    attention = pd.read_csv(out / "attention_p03.csv")
    [layer] = [layer for layer in overlays["layers"] if layer["kind"] == "attention"]
    assert layer["slide_id"] == "p03" and len(layer["x"]) == len(attention) == 12
    stored = EmbeddingStore.open(uri).slide_tiles("p03")
    assert set(zip(layer["x"], layer["y"], strict=True)) == set(zip(stored["x"], stored["y"], strict=True))
    assert np.isclose(sum(layer["values"]["attention"]), 1.0, atol=1e-4)  # softmax over the slide's tiles
    listed = json.loads((out / "results.json").read_text())["figures"]
    for key in listed:
        assert client.get(f"/api/results/r0/figures/{key}").status_code == 200
    for evil in ("..", "%2e%2e", "results.json", "/etc/passwd", "heatmap_p03.png"):
        assert client.get(f"/api/results/r0/figures/{evil}").status_code == 404
        assert client.get(f"/api/results/{evil}/figures/heatmap").status_code == 404
