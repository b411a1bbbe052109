"""The ``roomctl`` command line (Typer).

Output meant for scripts goes to stdout; diagnostics go to stderr. Every connection
option can also come from a ``ROOMCTL_*`` environment variable.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from roomctl import (
    __version__,
    join,
    loadtest,
    output,
    participants,
    post,
    rooms,
    serve,
    tail,
    tokens,
)
from roomctl.client import ExitCode
from roomctl.help import PlainTyper
from roomctl.output import OutputClosed

try:  # Typer 0.22+ vendors Click; older releases use Click itself.
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]

# Click 8.2+ raises it for a group called without a command; older releases print the help.
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click, "NoArgsIsHelpError", type(
    "_Never", (click.UsageError,), {}))

app = PlainTyper(
    name="roomctl",
    help="Rooms for chat and WebRTC calls: run the daemon, manage rooms, take part.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
) -> None:
    """roomctl: rooms for chat and WebRTC calls."""


# --- client commands (each in its own module) ---------------------------------------------
app.command("serve")(serve.serve_command())
app.add_typer(rooms.room_app)
app.add_typer(tokens.token_app)
app.command("kick")(rooms.kick)
app.command("join")(join.join)
app.command("who")(participants.who)
app.command("wait")(participants.wait)
app.command("post")(post.post)
app.command("tail")(tail.tail)
app.command("load-test")(loadtest.load_test)


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
        print(f"roomctl: {message}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        print(f"roomctl: {exc.format_message()}", file=sys.stderr)
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
