"""`mvh serve` as a process: prints its URL, binds loopback, refuses a public host without a token."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from mvh.cli import app
from mvh.errors import UsageError
from mvh.serve import ServeConfig, create_app
from tests.serve.conftest import TOKEN


def test_live_server_binds_loopback_and_needs_the_token(live_server: str) -> None:
    assert live_server.startswith("http://127.0.0.1:")
    assert httpx.get(live_server + "/api/health").status_code == 401
    ok = httpx.get(live_server + "/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["token_required"] is True
    stores = httpx.get(live_server + "/api/stores", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert [s["name"] for s in stores] == ["embeddings", "rescans"]


def test_public_host_needs_a_token(serve_store: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--store", serve_store, "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2 and "--token" in result.output and "Traceback" not in result.output


def test_missing_store_and_results_are_one_line_errors(serve_store: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, ["serve", "--store", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no embedding store" in result.output
    result = CliRunner().invoke(app, ["serve", "--store", serve_store, "--results", str(tmp_path)])
    assert result.exit_code == 2 and "results.json" in result.output


def test_port_in_use_is_a_usage_error(serve_store: str, live_server: str) -> None:
    port = live_server.rsplit(":", 1)[1]
    result = CliRunner().invoke(app, ["serve", "--store", serve_store, "--port", port])
    assert result.exit_code == 2 and "cannot listen there" in result.output


def test_the_config_reads_no_files_and_the_app_checks_the_results_folders(serve_store: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ServeConfig validates settings; a folder without results.json is refused when the app is built."""
    config = ServeConfig(stores=[serve_store], results=[tmp_path / "absent"])  # no file is looked at here
    with pytest.raises(UsageError, match=r"--results .*absent: no results.json there; point it at the --out"):
        create_app(config)
