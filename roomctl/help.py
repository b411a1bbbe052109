"""Help text that reads the same at 80 columns, in a terminal or in a pipe.

Typer draws help with rich when it is installed: boxed panels that cut option names to fit
80 columns (``--max-participan…``), a ``<bool>`` after every flag, required arguments in
braces. roomctl's help is plain Click help instead: each option on its own line with its
full name, a long one above its text, help wrapped to the width (``COLUMNS``, or 80 in a
pipe). Two things are roomctl's own: the usage line names arguments as the man page does
(``ROOM [TEXT]...``), and options are listed under the headings their ``rich_help_panel``
names ("Connection options", "Media options"), the grouping the panels gave.

``PlainTyper`` is ``typer.Typer`` with these classes for the group and every command.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

try:  # Typer 0.22+ vendors Click; older releases use Click itself.
    from typer._click import Context, HelpFormatter, Parameter
except ImportError:  # pragma: no cover
    from click import Context, HelpFormatter, Parameter  # type: ignore[assignment]

OPTIONS = "Options"


def _usage_name(param: Parameter) -> str:
    """An argument as the usage line shows it: ROOM, [TEXT]..., [NAME]."""
    name = param.metavar or (param.name or "").upper()
    if not param.required:
        name = f"[{name}]"
    return f"{name}..." if param.nargs != 1 else name


class Command(TyperCommand):
    """A command whose help is plain text, its options grouped under their panels' names."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if _takes_a_value(param) and param.metavar is None:
                # What the value is, not its Python type ("<str>", "<int range>").
                param.metavar = (param.name or "value").upper()

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [_usage_name(p) for p in self.get_params(ctx)
                         if p.param_type_name == "argument"]

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        arguments: list[tuple[str, str]] = []
        sections: dict[str, list[tuple[str, str]]] = {OPTIONS: []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                # Its name as in the usage line, without Typer's "<str>" after it.
                arguments.append((param.metavar or (param.name or "").upper(), record[1]))
                continue
            panel = getattr(param, "rich_help_panel", None)
            sections.setdefault(f"{panel} options" if panel else OPTIONS, []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def _takes_a_value(param: Parameter) -> bool:
    return param.param_type_name == "option" and not getattr(param, "is_flag", False) \
        and not getattr(param, "count", False)


class Group(TyperGroup):
    """A command group with plain help, listing each command's first line in full."""

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                text = command.short_help or (command.help or "").strip().split("\n\n")[0]
                rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class PlainTyper(typer.Typer):
    """``typer.Typer`` whose group and commands have plain help (see the module)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        super().__init__(rich_markup_mode=None, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
