"""`mvh models`: every registered backbone listed, as a table and as JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mvh.cli import app
from mvh.extractor.models import get_model_info, list_models


def test_models_json_lists_every_backbone():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == [info.name for info in list_models()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["mv_hybrid"]["output_dim"] == 768
    assert by_name["h_optimus_0"]["output_dim"] == 1536
    assert by_name["uni"]["mean"] == list(get_model_info("uni").mean)
    assert by_name["mv_hybrid"]["default_config"]["depth"] == 24
    assert by_name["uni"]["aliases"] == ["uni_v1"] and by_name["h_optimus_0"]["aliases"] == ["hoptimus0"]


def test_models_table_shows_names_and_dims():
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for info in list_models():
        assert info.name in result.output
    assert "768" in result.output and "1536" in result.output and "um/px" in result.output
    assert "uni_v1" in result.output and "hoptimus0" in result.output
