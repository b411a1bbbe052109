"""The ``roomctl`` command line (Typer).

Output meant for scripts goes to stdout; diagnostics go to stderr. Every connection
option can also come from a ``ROOMCTL_*`` environment variable.

The command tree is lazy: a command's module (and what it imports: trio, the WebSocket
client, the daemon for ``serve``, aiortc for ``join``) is imported only when that command
runs, or when help lists it. ``roomctl --version`` imports Typer and little else.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from typer.main import get_command_from_info, get_group

from roomctl import __version__, output
from roomctl.errors import ExitCode, report, use_json
from roomctl.help import Group, PlainTyper
from roomctl.output import OutputClosed

try:  # Typer 0.22+ vendors Click; older releases use Click itself.
    from typer._click import Context
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]
    from click import Context  # type: ignore[assignment]

# Click 8.2+ raises it for a group called without a command; older releases print the help.
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click, "NoArgsIsHelpError", type(
    "_Never", (click.UsageError,), {}))

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, attribute): a command's function, or a Typer group of commands
    "serve": ("roomctl.serve", "serve_command"),  # (a factory: its options come from Config)
    "status": ("roomctl.status", "status"),
    "kick": ("roomctl.rooms", "kick"),
    "join": ("roomctl.join", "join"),
    "who": ("roomctl.participants", "who"),
    "wait": ("roomctl.participants", "wait"),
    "post": ("roomctl.post", "post"),
    "tail": ("roomctl.tail", "tail"),
    "load-test": ("roomctl.loadtest", "load_test"),
    "room": ("roomctl.rooms", "room_app"),
    "token": ("roomctl.tokens", "token_app"),
}
"""Every command, in the order help lists them."""


class LazyGroup(Group):
    """The root group: builds a command from its module the first time it is asked for."""

    def list_commands(self, ctx: Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Context, cmd_name: str) -> Any:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in COMMANDS:
            command = self.commands[cmd_name] = _build(cmd_name)
        return command


def _build(name: str) -> Any:
    """Import the module of command ``name`` and return its Click command (or group)."""
    module, attribute = COMMANDS[name]
    found: Any = getattr(importlib.import_module(module), attribute)
    if name == "serve":
        found = found()
    if isinstance(found, typer.Typer):
        return get_group(found)
    single = PlainTyper(context_settings={"help_option_names": ["-h", "--help"]})
    single.command(name)(found)
    return get_command_from_info(single.registered_commands[0],
                                 pretty_exceptions_short=True, rich_markup_mode=None)


app = PlainTyper(
    name="roomctl",
    help="Rooms for chat and WebRTC calls: run the daemon, manage rooms, take part.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=LazyGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"roomctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Machine-readable output and errors, for any command "
                                     "(as its own --json)."),
    ] = False,
) -> None:
    """roomctl: rooms for chat and WebRTC calls."""
    use_json(json_output)  # a command's own --json adds to it (see options.client_command)


def main() -> None:
    """Console-script entry point: usage errors are one line on stderr and exit 2."""
    try:
        status = app(standalone_mode=False, prog_name="roomctl")
        output.flush()  # what print() buffered: a closed pipe is seen here, not at exit
    except _NO_ARGS_IS_HELP as exc:  # a group called without a command: its help
        print(exc.format_message(), file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        message = exc.format_message().rstrip(".")
        hint = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
        use_json("--json" in sys.argv[1:])  # (parsing failed before the command saw it)
        report(f"{message}{hint}", ExitCode.USAGE)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        report(exc.format_message(), ExitCode(exc.exit_code) if exc.exit_code in
               ExitCode._value2member_map_ else ExitCode.REFUSED)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("roomctl: aborted", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("roomctl: interrupted", file=sys.stderr)
        sys.exit(ExitCode.INTERRUPTED)
    except OutputClosed:
        sys.exit(ExitCode.OUTPUT_CLOSED)  # quietly: whoever read stdout has had enough
    sys.exit(status if isinstance(status, int) else 0)
