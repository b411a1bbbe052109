"""The ``roomctl`` command line (Typer).

Output meant for scripts goes to stdout; diagnostics go to stderr. Every connection
option can also come from a ``ROOMCTL_*`` environment variable.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from roomctl import __version__, participants, post, rooms, tail

try:  # Typer 0.22+ vendors Click; older releases use Click itself.
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]

app = typer.Typer(
    name="roomctl",
    help="Rooms for chat and WebRTC calls: run the daemon, manage rooms, take part.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

LOG_LEVELS = ("debug", "info", "warning", "error")


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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(envvar="ROOMCTL_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_PORT", min=0, max=65535, help="TCP port; 0 picks a free one."),
    ] = 8750,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="ROOMCTL_DATA_DIR",
            help="Where rooms, messages and the admin token live.",
            show_default="$XDG_STATE_HOME/roomctl",
        ),
    ] = None,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory", envvar="ROOMCTL_MEMORY",
            help="Keep rooms and messages in memory only (the admin token still goes to the "
            "data directory).",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(envvar="ROOMCTL_GRACE", min=0.0,
                     help="Seconds a dropped participant may take to resume before it leaves."),
    ] = 60.0,
    auto_create: Annotated[
        bool,
        typer.Option("--auto-create/--no-auto-create", envvar="ROOMCTL_AUTO_CREATE",
                     help="Create a room when someone first joins it."),
    ] = True,
    log_level: Annotated[
        str,
        typer.Option(envvar="ROOMCTL_LOG_LEVEL", help="debug, info, warning or error."),
    ] = "info",
) -> None:
    """Run the rooms daemon until SIGINT or SIGTERM.

    Prints one line, "listening on http://HOST:PORT", once it accepts connections.
    """
    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(
            f"must be one of {', '.join(LOG_LEVELS)}", param_hint="--log-level"
        )
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import trio

    from daemon import Config, serve
    from daemon.config import default_data_dir

    config = Config(
        host=host,
        port=port,
        data_dir=data_dir if data_dir is not None else default_data_dir(),
        memory=memory,
        grace=grace,
        auto_create=auto_create,
    )

    # A daemon holds thousands of long-lived objects per thousand connections; with the
    # default thresholds the cyclic GC rescans them all the time (20 % of the CPU of a
    # connect storm here). Freeze what start-up made and collect young objects less often.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                bound_host, bound_port = await nursery.start(serve, config)
                print(f"listening on http://{_url_host(bound_host)}:{bound_port}", flush=True)
                async for signum in signals:
                    logging.getLogger("roomctl").info(
                        "%s: shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    from daemon.store import StoreError

    try:
        trio.run(main)
    except (OSError, StoreError, BaseExceptionGroup) as exc:
        cause = _startup_error(exc, (OSError, StoreError))
        if cause is None:
            raise
        typer.echo(f"roomctl serve: {cause}", err=True)
        raise typer.Exit(1) from None


def _startup_error(
    exc: BaseException, kinds: tuple[type[Exception], ...]
) -> BaseException | None:
    """Return the first error of ``kinds`` in ``exc`` (nurseries wrap them in groups)."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_error(inner, kinds)
            if found is not None:
                return found
    return None


# --- client commands (each in its own module) ---------------------------------------------
app.add_typer(rooms.room_app)
app.command("kick")(rooms.kick)
app.command("who")(participants.who)
app.command("wait")(participants.wait)
app.command("post")(post.post)
app.command("tail")(tail.tail)


def main() -> None:
    """Console-script entry point: usage errors are one line on stderr and exit 2."""
    try:
        status = app(standalone_mode=False)
    except click.UsageError as exc:
        message = exc.format_message().rstrip(".")
        if message:  # empty when a group was called without a command (help was shown)
            hint = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
            print(f"roomctl: {message}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        print(f"roomctl: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("roomctl: aborted", file=sys.stderr)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)
