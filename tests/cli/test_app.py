"""The shared CLI pieces: key=value option parsing and the error guard."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from mvh.cli._app import guarded, parse_key_values
from mvh.errors import SlideError, UsageError


def test_key_values_are_parsed_as_yaml_scalars_from_repeated_and_comma_separated_options() -> None:
    parsed = parse_key_values(["embed_dim=64,depth=4", "x=0.5", "n=abc", "flag=true"])
    assert parsed == {"embed_dim": 64, "depth": 4, "x": 0.5, "n": "abc", "flag": True}
    assert parse_key_values(None) == {}


def test_a_bare_key_is_a_usage_error_naming_the_option() -> None:
    with pytest.raises(UsageError, match=r"--set: 'depth' is not key=value"):
        parse_key_values(["depth"], "--set")


def test_guard_prints_one_line_with_brackets_and_colons_intact_and_exits_with_the_error_code() -> None:
    app = typer.Typer()

    @app.command()
    @guarded
    def fail() -> None:
        raise SlideError("s1:zero:0 [model x]\nsecond line: pass --slide-mpp")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert result.output.strip() == "error: s1:zero:0 [model x] second line: pass --slide-mpp"


def test_version_prints_the_package_version() -> None:
    from mvh import __version__
    from mvh.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"mvh {__version__}"


@pytest.mark.parametrize("command", ["extract", "tile"])
def test_tile_px_is_the_option_and_tile_a_hidden_alias(command) -> None:
    from mvh.cli import app
    from mvh.cli.extract import tile_px_option

    help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
    assert "--tile-px" in help_text and "--tile " not in help_text
    assert tile_px_option(None, None) == 224 and tile_px_option(256, None) == 256
    assert tile_px_option(None, 128) == 128 and tile_px_option(96, 96) == 96
    with pytest.raises(UsageError, match="--tile-px 224 and --tile 256 disagree"):
        tile_px_option(224, 256)


def test_real_slide_fixture_falls_back_to_the_user_cache(tmp_path, monkeypatch) -> None:
    from tests.conftest import sample_slide_location

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    absent = tmp_path / "no-shared" / "CMU-1-Small-Region.svs"
    assert sample_slide_location(absent) is None
    cached = tmp_path / "mvh" / "CMU-1-Small-Region.svs"
    cached.parent.mkdir()
    cached.write_bytes(b"svs")
    assert sample_slide_location(absent) == cached
    absent.parent.mkdir()
    absent.write_bytes(b"shared")
    assert sample_slide_location(absent) == absent


@pytest.mark.parametrize(
    ("args", "code", "stream", "text"),
    [
        (["--version"], 0, "stdout", "mvh"),
        (["pretrain", "--no-such-option"], 2, "stderr", "No such option"),
        (["pretrain", "--config", "/nonexistent/run.yaml"], 2, "stderr", "/nonexistent/run.yaml"),
    ],
)
def test_a_torchrun_worker_keeps_its_exit_code_and_flushes_piped_output(args, code, stream, text) -> None:
    """Under torchrun (LOCAL_RANK set) mvh ends with os._exit: nothing written may be lost to it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}
    done = subprocess.run([sys.executable, "-m", "mvh", *args], capture_output=True, text=True, env=env)
    assert done.returncode == code, done.stderr
    assert text in getattr(done, stream)
