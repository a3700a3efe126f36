"""The shared CLI pieces: key=value option parsing and the error guard."""

from __future__ import annotations

import json
import re

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


def _help(args: list[str]) -> str:
    from mvh.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_help_rows_show_plain_metavars_and_none_on_flags() -> None:
    text = _help(["extract"])
    assert re.search(r"--mpp\s+FLOAT\s+Target resolution", text)
    assert re.search(r"--store\s+TEXT\s+Store:", text) and re.search(r"--weights\s+PATH\s", text)
    assert re.search(r"--random-init\s{2,}Embed with seeded", text)  # a flag: nothing between name and help
    assert re.search(r"--help\s{2,}Show this message", text)
    assert re.search(r"SLIDES\s+PATH\s+Slide files", text)


def test_help_text_keeps_its_square_brackets() -> None:
    assert re.search(r"--tile-px\s+INTEGER\s+Tile side in px at --mpp \[default: 224\]", _help(["extract"]))
    assert "[default: pretrain_run]" in _help(["pretrain"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "retrieval"], "error: Missing option '--labels'; see 'mvh eval retrieval --help'"),
        (["eval", "survival"], "error: Missing option '--cohort'; see 'mvh eval survival --help'"),
        (["tag", "create"], "error: Missing argument 'NAME'; see 'mvh tag create --help'"),
        (["info", "--no-such"], "error: No such option: --no-such; see 'mvh info --help'"),
        (["no-such-command"], "error: No such command 'no-such-command'; see 'mvh --help'"),
    ],
)
def test_click_usage_errors_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    from mvh.cli import app

    result = CliRunner().invoke(app, args, prog_name="mvh")
    assert result.exit_code == 2
    assert result.stderr.strip() == message


def test_a_piped_table_keeps_its_full_width(monkeypatch) -> None:
    from mvh.cli import app

    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "mv_hybrid_tiny" in line)
    assert "Tiny MV_Hybrid for tests and demos: D 64, 2 Mamba + 2 attention blocks" in row
    assert len(row) > 80


def test_search_checks_the_query_image_before_the_store_and_its_index(tmp_path, monkeypatch) -> None:
    from mvh.cli import app

    monkeypatch.chdir(tmp_path)  # no store here: the missing query image is what is reported
    result = CliRunner().invoke(app, ["search", "--query", "nosuch.png"], prog_name="mvh")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: nosuch.png: no such query image; pass a PNG/JPEG/TIFF file"


def test_pretrain_failing_to_start_leaves_no_run_directory(tmp_path) -> None:
    from mvh.cli import app

    empty = tmp_path / "tiles"
    empty.mkdir()
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["pretrain", str(empty), "--out", str(run), "--workers", "0"])
    assert result.exit_code == 2 and "no tile images" in result.stderr
    assert not run.exists()


def test_pretrain_takes_the_scan_resolution_of_slides_without_one(tmp_path) -> None:
    from mvh.cli import app
    from mvh.core.synthetic_slides import write_plain_image

    image = write_plain_image(tmp_path / "scan.png", 256, 256)  # no um/px in a PNG
    tiny = ["--model", "mv_hybrid_tiny", "--epochs", "1", "--batch-size", "4", "--global-size", "48",
            "--local-size", "32", "--local-crops", "1", "--prototypes", "32", "--workers", "0",
            "--tile-px", "64", "--mpp", "1.0", "--max-steps", "1", "--device", "cpu",
            "--set", "head_hidden_dim=32,head_bottleneck_dim=16"]  # fmt: skip
    missing = CliRunner().invoke(app, ["pretrain", str(image), "--out", str(tmp_path / "a"), *tiny])
    assert missing.exit_code == 2 and "--slide-mpp" in missing.stderr
    run = tmp_path / "b"
    given = CliRunner().invoke(
        app, ["pretrain", str(image), "--out", str(run), *tiny, "--slide-mpp", "0.5", "--json"]
    )
    assert given.exit_code == 0, given.output
    assert json.loads(given.stdout)["n_tiles"] == 4  # 256 px at 0.5 um/px = 128 um: 2 x 2 tiles of 64 um
    assert "slide_mpp: 0.5" in (run / "config.yaml").read_text()


def test_what_a_library_prints_to_stdout_during_a_job_goes_to_stderr(capsys) -> None:
    """Ray's driver thread prints worker deaths to sys.stdout: `--json` output must stay parseable."""
    import threading

    from mvh.cli._progress import progress_reporter

    with progress_reporter(enabled=False):
        thread = threading.Thread(target=print, args=("(raylet) A worker died or was killed",))
        thread.start()
        thread.join()
    print('{"ok": true}')
    captured = capsys.readouterr()
    assert captured.out == '{"ok": true}\n'
    assert "A worker died" in captured.err
