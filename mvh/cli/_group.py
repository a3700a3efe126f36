"""The click group class of every `mvh` Typer app: plain metavars, literal help text, one-line usage errors.

Typer renders every option's Python type as its metavar (`<bool>` on flags, `<list[str]>`) and reads help
text as Rich markup (so "[default: 224]" vanishes). The group fixes both on its commands once, when Typer
builds it, and reports click's own usage errors (a missing option, an unknown option) as the one
`error: ...` line every other usage error gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.text import Text
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperArgument, TyperGroup

from mvh.cli._console import err_console

_TYPE_METAVARS: dict[type, str] = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


class _Argument(TyperArgument):
    """A positional argument whose help row shows its type as PATH, TEXT, ... instead of `<list[Path]>`."""

    def display_type_rich(self, ctx: Any) -> str | None:
        """The type column of the help row: PATH, TEXT, ..."""
        return type_metavar(self.type_descriptor.annotation)


def type_metavar(annotation: Any) -> str:
    """TEXT / INTEGER / FLOAT / PATH for a parameter's annotation (a list's element type for lists)."""
    args = getattr(annotation, "__args__", None)
    if getattr(annotation, "__origin__", None) is list and args:
        annotation = args[0]
    return _TYPE_METAVARS.get(annotation, "VALUE")


def polish_params(command: Any) -> None:
    """Give `command`'s parameters plain metavars (none on flags) and help text Rich shows literally."""
    if command.help:
        command.help = escape(command.help)
    # click makes --help on first use and keeps it; made here, so that its row gets no metavar either
    help_option = command.get_help_option(command.context_class(command))
    if help_option is not None:
        help_option.metavar = ""
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
        if param.metavar is not None:
            continue
        if param.param_type_name == "argument":
            param.__class__ = _Argument  # a subclass without state: only the help column changes
            param.metavar = param.name.upper()
        elif getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        else:
            param.metavar = type_metavar(param.type_descriptor.annotation)


class MvhGroup(TyperGroup):
    """Typer's group with plain metavars, literal help text and one-line click usage errors."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        polish_params(self)
        for command in self.commands.values():
            if not isinstance(command, TyperGroup):  # a sub-group polished its own commands
                polish_params(command)

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        """Parse the group's own options (an unknown one is a one-line usage error)."""
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        """Run the chosen command (its parsing errors, e.g. a missing option, are one-line usage errors)."""
        with _one_line_usage_errors():
            return super().invoke(ctx)


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """Print a click usage error as `error: ...; see 'mvh CMD --help'` and exit 2."""
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except ClickUsageError as exc:
        message = " ".join(exc.format_message().split()).rstrip(".")
        if exc.ctx is not None:
            message += f"; see '{exc.ctx.command_path} --help'"
        err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from exc
