"""schemathesis fuzzes the API from the app's own OpenAPI schema: no 5xx, no crash."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from mvh.serve import ServeConfig, create_app


def test_api_never_answers_5xx(serve_store: str, results_dir: Path) -> None:
    app = create_app(ServeConfig(stores=[serve_store], results=[results_dir]))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/health", "/api/stores", "/api/search",
                                              "/api/tiles/{slide_id}/{x}/{y}.jpg"}
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            case.validate_response(response, checks=[not_a_server_error])

        check()
    assert len(seen) == len(operations)
