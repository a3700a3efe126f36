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
