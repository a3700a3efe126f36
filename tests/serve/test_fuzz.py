"""schemathesis fuzzes the API from the app's own OpenAPI schema: no 5xx, no crash.

Two passes: the schema as served (random ids: mostly 4xx), and the same schema with slide ids and
coordinates narrowed to stored ones, so that generated requests also reach the deep paths (DeepZoom,
stored tiles, searches that succeed).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from mvh.serve import ServeConfig, create_app
from mvh.store import EmbeddingStore
from tests.serve.conftest import REAL


def _narrowed(app: FastAPI, store: str) -> dict[str, Any]:
    schema = copy.deepcopy(app.openapi())
    tiles = EmbeddingStore.open(store).slide_tiles(REAL)
    values = {"slide_id": [REAL, "synth"], "x": sorted(set(tiles["x"].tolist()))[:4],
              "y": sorted(set(tiles["y"].tolist()))[:4], "level": list(range(9, 13)), "col": [0, 1, 2],
              "row": [0, 1, 2], "key": ["heatmap"], "name": ["r0"]}
    for item in schema["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param["name"] in values:
                    param["schema"] = {"enum": values[param["name"]]}
    return schema


def _fuzz(app: FastAPI) -> dict[str, set[int]]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            case.validate_response(response, checks=[not_a_server_error])

        check()
    assert len(seen) == len(operations)
    return seen


@pytest.mark.parametrize("narrow", [False, True])
def test_api_never_answers_5xx(serve_store: str, results_dir: Path, narrow: bool) -> None:
    app = create_app(ServeConfig(stores=[serve_store], results=[results_dir]))
    assert {"/api/health", "/api/stores", "/api/search", "/api/tiles/{slide_id}/{x}/{y}.jpg"} <= set(
        app.openapi()["paths"]
    )
    if narrow:
        app.openapi_schema = _narrowed(app, serve_store)
    seen = _fuzz(app)
    if narrow:  # the narrowed pass reaches the pixel paths
        assert 200 in seen["GET /api/dzi/{store}/{slide_id}/{level}/{col}_{row}.jpeg"]
        assert 200 in seen["GET /api/stores/{store}/slides/{slide_id}/tiles"]
