"""One CLI: the same option means the same thing, with the same name and default, in every command."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from mvh import __version__
from mvh.cli import app

MULTI_STORE = {"overlap", "serve", "eval st", "eval classify"}  # several stores: repeatable, no default


def _commands(group, prefix: str = "") -> dict:
    out = {}
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        if hasattr(command, "commands"):  # a group (Typer ships its own click: no isinstance checks)
            out.update(_commands(command, f"{full} "))
        else:
            out[full] = command
    return out


COMMANDS = _commands(typer.main.get_command(app))


def _option(command, flag: str):
    return next((p for p in command.params if p.param_type_name == "option" and flag in p.opts), None)


def test_every_single_store_command_defaults_store_the_same_way_and_takes_the_access_options():
    with_store = {name: c for name, c in COMMANDS.items() if _option(c, "--store") is not None}
    assert {"extract", "info", "verify", "export", "import", "index build", "search", "eval survival"} <= set(
        with_store
    )
    for name, command in with_store.items():
        store = _option(command, "--store")
        if name in MULTI_STORE:
            assert store.multiple, name
        else:
            assert (store.default, store.required) == ("embeddings.lance", False), name
        for flag in ("--storage-option", "--store-version", "--read-only"):
            assert _option(command, flag) is not None, f"{name} lacks {flag}"


def test_tile_size_is_tile_px_everywhere_with_tile_a_hidden_alias():
    for name, command in COMMANDS.items():
        tile = _option(command, "--tile")
        if tile is not None:
            assert tile.hidden and _option(command, "--tile-px") is not None, name


def test_k_is_a_count_and_lists_of_cut_offs_are_ks():
    for name, command in COMMANDS.items():
        k = _option(command, "-k")
        if k is not None:
            assert k.type_descriptor.annotation is int, name
    assert _option(COMMANDS["eval retrieval"], "--ks") is not None


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_and_json_where_it_reports(name):
    command = COMMANDS[name]
    assert command.help and command.help.strip()
    result = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(bool|str|int|float|path|list\[\w+\])>", result.stdout), "a type as metavar"
