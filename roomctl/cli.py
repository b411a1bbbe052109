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
from typing import Annotated, get_args

import typer

from protocol.limits import MAX_FRAME_BYTES, DisplayName, MessageText
from roomctl import __version__, join, participants, post, rooms, tail, tokens

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
# The protocol's bounds; a daemon may only lower them.
MAX_TEXT: int = get_args(MessageText)[1].max_length
MAX_NAME: int = get_args(DisplayName)[1].max_length


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
    require_tokens: Annotated[
        bool,
        typer.Option("--require-tokens", envvar="ROOMCTL_REQUIRE_TOKENS",
                     help="Make every room private: joining needs a join token."),
    ] = False,
    max_rooms: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_MAX_ROOMS", min=1, help="Most rooms the daemon holds."),
    ] = 10_000,
    max_participants: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_MAX_PARTICIPANTS", min=1,
                     help="Most participants in one room (hidden observers not counted)."),
    ] = 100,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="ROOMCTL_TLS_CERT", metavar="FILE",
                     help="PEM certificate chain: serve https and wss (needs --tls-key)."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(envvar="ROOMCTL_TLS_KEY", metavar="FILE",
                     help="PEM private key of --tls-cert."),
    ] = None,
    rotate_admin_token: Annotated[
        bool,
        typer.Option("--rotate-admin-token", envvar="ROOMCTL_ROTATE_ADMIN_TOKEN",
                     help="Replace the admin token in the data directory and exit; a running "
                          "daemon uses the new one at once."),
    ] = False,
    rate_limit: Annotated[
        float,
        typer.Option(envvar="ROOMCTL_RATE_LIMIT", min=0.0,
                     help="Requests per second per connection, sustained; 0: no limit. "
                          "The admin token's connections are not limited."),
    ] = 20.0,
    rate_burst: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_RATE_BURST", min=1,
                     help="Requests a connection may make at once, after a quiet spell."),
    ] = 200,
    max_rate_limited: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_MAX_RATE_LIMITED", min=1,
                     help="Refused (rate-limited) requests within 10 s before the connection "
                          "is closed (1008)."),
    ] = 100,
    max_connections_per_address: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_MAX_CONNECTIONS_PER_ADDRESS", min=0,
                     help="Connections open at once from one client address, loopback "
                          "included; 0: no limit."),
    ] = 64,
    ping_interval: Annotated[
        float,
        typer.Option(envvar="ROOMCTL_PING_INTERVAL", min=0.0,
                     help="Seconds between WebSocket pings to each client; 0: no pings."),
    ] = 30.0,
    ping_timeout: Annotated[
        float,
        typer.Option(envvar="ROOMCTL_PING_TIMEOUT", min=0.0,
                     help="Seconds a client has to answer a ping before it is closed (1011)."),
    ] = 20.0,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(envvar="ROOMCTL_ALLOWED_ORIGINS", metavar="ORIGIN",
                     help="A web origin (https://chat.example.org) whose pages may connect, "
                          "besides the daemon's own; repeat it, or '*' for any."),
    ] = None,
    max_text: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_MAX_TEXT", min=1, max=MAX_TEXT,
                     help="Longest message text, in characters."),
    ] = MAX_TEXT,
    max_name: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_MAX_NAME", min=1, max=MAX_NAME,
                     help="Longest display name, in characters."),
    ] = MAX_NAME,
    max_frame_bytes: Annotated[
        int,
        typer.Option(envvar="ROOMCTL_MAX_FRAME_BYTES", min=1024, max=MAX_FRAME_BYTES,
                     help="Largest WebSocket frame; a larger one closes the connection (1009)."),
    ] = MAX_FRAME_BYTES,
    handshake_timeout: Annotated[
        float,
        typer.Option(envvar="ROOMCTL_HANDSHAKE_TIMEOUT", min=0.0,
                     help="Seconds from the WebSocket opening to a successful hello."),
    ] = 10.0,
    head_timeout: Annotated[
        float,
        typer.Option(envvar="ROOMCTL_HEAD_TIMEOUT", min=0.0,
                     help="Seconds from accepting a connection to its whole request head "
                          "(TLS handshake included)."),
    ] = 10.0,
) -> None:
    """Run the rooms daemon until SIGINT or SIGTERM.

    Prints one line, "listening on http://HOST:PORT" (https with TLS), once it accepts
    connections.
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together: give both or neither")
    for option, seconds in (("--ping-timeout", ping_timeout),
                            ("--handshake-timeout", handshake_timeout),
                            ("--head-timeout", head_timeout)):
        if not seconds > 0:
            raise typer.BadParameter("must be more than 0 seconds", param_hint=option)
    origins = _origins(allowed_origin or [])
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
    from daemon import config as daemon_config
    from daemon.config import default_data_dir

    if rotate_admin_token:
        where = data_dir if data_dir is not None else default_data_dir()
        try:
            path = daemon_config.rotate_admin_token(where)
        except OSError as exc:
            typer.echo(f"roomctl serve: cannot rotate the admin token in {where}: "
                       f"{exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        print(f"new admin token in {path}", flush=True)
        return

    config = Config(
        host=host,
        port=port,
        data_dir=data_dir if data_dir is not None else default_data_dir(),
        memory=memory,
        grace=grace,
        auto_create=auto_create,
        tls_cert=tls_cert,
        tls_key=tls_key,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        max_rate_limited=max_rate_limited,
        max_connections_per_address=max_connections_per_address,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        allowed_origins=origins,
        max_text=max_text,
        max_name=max_name,
        max_frame_bytes=max_frame_bytes,
        handshake_timeout=handshake_timeout,
        head_timeout=head_timeout,
        require_tokens=require_tokens,
        max_rooms=max_rooms,
        max_participants=max_participants,
    )

    # A daemon holds thousands of long-lived objects per thousand connections; with the
    # default thresholds the cyclic GC rescans them all the time. Freeze what start-up made
    # and collect young objects less often. Rare collections cost no memory, because a
    # closed connection leaves no reference cycle (tests/test_memory.py). Measured here
    # (tests/bench/idle_memory.py --no-trace, 5000 connections): 0.07 s of GC pauses in a
    # 2.1 s connect storm with these settings, 0.25-0.34 s with Python's; RSS flat over
    # 30,000 churned connections either way (tests/bench/soak.py).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                bound_host, bound_port = await nursery.start(serve, config)
                scheme = "https" if config.tls else "http"
                print(f"listening on {scheme}://{_url_host(bound_host)}:{bound_port}",
                      flush=True)
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


def _origins(values: list[str]) -> tuple[str, ...]:
    """Return the normalised allowed origins; items may also be comma-separated."""
    from daemon.net.origins import normalize_origin

    found: list[str] = []
    for value in values:
        for item in value.split(","):
            if item.strip():
                try:
                    found.append(normalize_origin(item))
                except ValueError as exc:
                    raise typer.BadParameter(str(exc), param_hint="--allowed-origin") from None
    return tuple(dict.fromkeys(found))


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
app.add_typer(tokens.token_app)
app.command("kick")(rooms.kick)
app.command("join")(join.join)
app.command("who")(participants.who)
app.command("wait")(participants.wait)
app.command("post")(post.post)
app.command("tail")(tail.tail)


def main() -> None:
    """Console-script entry point: usage errors are one line on stderr and exit 2."""
    try:
        status = app(standalone_mode=False, prog_name="roomctl")
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
