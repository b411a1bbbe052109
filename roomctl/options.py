"""The options every client command shares, and the way a command runs.

``client_command`` adds ``--url``, ``--token``, ``--data-dir``, ``--json``, ``--timeout``,
``--ca-file``, ``--insecure`` and ``--profile`` (each with its ``ROOMCTL_*`` variable) to a
command's own parameters and hands the command a ``Context`` instead, its ``Target``
resolved: option > variable > profile (``roomctl.profiles``) > default. ``run`` executes a
trio coroutine and turns ``CliError`` into one line on stderr (a JSON object with
``--json``) and its exit code: no command prints a traceback for a failure it can name.

Long-running commands (serve, tail, post, wait, join) stop on SIGTERM or SIGINT through
``until_signalled`` (or ``run_until_signalled``), the one place that handles signals: the
first asks the command to stop in its own way, a second ends the process at once.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from protocol.limits import DisplayName, RoomName
from protocol.local import DEFAULT_URL
from roomctl import profiles, rules
from roomctl.errors import (
    CliError,
    ExitCode,
    exception_leaves,
    json_errors,
    report,
    use_json,
)
from roomctl.output import OutputClosed
from roomctl.target import Target, validate_url

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """What a client command gets: where the daemon is, and how to print."""

    target: Target
    json: bool


def _check_url(value: str) -> str:
    try:
        return validate_url(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _check_timeout(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def check(constrained: Any, what: str) -> Callable[[Any], Any]:
    """Return a Typer callback refusing a value outside a protocol constraint type.

    The refusal is a usage error (exit 2) giving the rule in words; ``what`` names the value
    ("room name"). None (an option not given) passes; each item of a list is checked.
    """

    def callback(value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            reason = None if item is None else rules.problem(constrained, item, what)
            if reason is not None:
                raise typer.BadParameter(reason)
        return value

    return callback


# The checks several commands share.
check_room = check(RoomName, "room name")
check_name = check(DisplayName, "name")


def parse_duration(text: str) -> float:
    """Return seconds for ``30``, ``30s``, ``1.5m``, ``2h``, ``7d`` or ``500ms``.

    Raises ValueError for anything else, zero or negative.
    """
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    for suffix in ("ms", "s", "m", "h", "d"):
        if text.endswith(suffix):
            number, factor = text[: -len(suffix)], units[suffix]
            break
    else:
        number, factor = text, 1.0
    try:
        seconds = float(number) * factor
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (like 30, 30s, 5m, 1h, 7d)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


_GLOBAL_PARAMS = [
    inspect.Parameter(
        "url", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_URL,
        annotation=Annotated[str, typer.Option(
            "--url", envvar="ROOMCTL_URL", metavar="URL", callback=_check_url,
            rich_help_panel="Connection",
            help="The daemon: http, https, ws or wss URL.")]),
    inspect.Parameter(
        "token", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[str | None, typer.Option(
            "--token", envvar="ROOMCTL_TOKEN", metavar="TOKEN", rich_help_panel="Connection",
            show_default="the local daemon's admin token",
            help="Admin or join token; always wins over the admin token file.")]),
    inspect.Parameter(
        "data_dir", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Path | None, typer.Option(
            "--data-dir", envvar="ROOMCTL_DATA_DIR", metavar="DIR", rich_help_panel="Connection",
            show_default="$XDG_STATE_HOME/roomctl",
            help="A local daemon's data directory, to read its admin token from.")]),
    inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY),  # see _timeout_param
    inspect.Parameter(
        "ca_file", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Path | None, typer.Option(
            "--ca-file", envvar="ROOMCTL_CA_FILE", metavar="FILE", exists=True, dir_okay=False,
            rich_help_panel="Connection",
            help="CA certificates (PEM) to verify an https/wss daemon with.")]),
    inspect.Parameter(
        "insecure", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option(
            "--insecure", envvar="ROOMCTL_INSECURE", rich_help_panel="Connection",
            help="Do not verify the daemon's TLS certificate (testing only).")]),
    inspect.Parameter(
        "profile", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[str | None, typer.Option(
            "--profile", envvar="ROOMCTL_PROFILE", metavar="NAME", rich_help_panel="Connection",
            show_default="the config file's default",
            help="A profile of $XDG_CONFIG_HOME/roomctl/config.toml: its url, token and "
                 "ca_file, under the options and variables given.")]),
    inspect.Parameter(
        "json_output", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option(
            "--json",
            help="Machine-readable output: one JSON document (JSON lines for streams); an "
                 "error is one JSON object on stderr.")]),
    inspect.Parameter("click_context", inspect.Parameter.KEYWORD_ONLY,
                      annotation=typer.Context),
]
_GLOBAL_NAMES = {p.name for p in _GLOBAL_PARAMS}


def _timeout_param(default: str, help_text: str | None) -> inspect.Parameter:
    return inspect.Parameter(
        "timeout", inspect.Parameter.KEYWORD_ONLY, default=default,
        annotation=Annotated[float, typer.Option(
            "--timeout", envvar="ROOMCTL_TIMEOUT", parser=_check_timeout, metavar="DURATION",
            rich_help_panel="Connection",
            help=help_text or "How long to wait to connect and for each answer (30, 30s, 1m).")])


def client_command(
    func: Callable[..., None] | None = None, *, timeout_default: str = "10s",
    timeout_help: str | None = None,
) -> Any:
    """Give ``func(ctx: Context, ...)`` the shared connection options as Typer parameters.

    Used bare (``@client_command``) or with a command's own ``--timeout`` default and help
    (``roomctl wait`` bounds its whole wait with it).
    """
    if func is None:
        return functools.partial(client_command, timeout_default=timeout_default,
                                 timeout_help=timeout_help)
    own = list(inspect.signature(func, eval_str=True).parameters.values())
    assert own and own[0].name == "ctx", f"{func.__name__} must take ctx first"
    shared = [_timeout_param(timeout_default, timeout_help) if p.name == "timeout" else p
              for p in _GLOBAL_PARAMS]
    params = own[1:] + shared

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        values = {name: kwargs.pop(name) for name in _GLOBAL_NAMES}
        values["json_output"] = values["json_output"] or json_errors()  # roomctl --json CMD
        use_json(values["json_output"])
        try:
            target = resolve_target(values, values.pop("click_context"))
        except CliError as exc:
            fail(exc.message, exc.exit_code)
        func(Context(target=target, json=values["json_output"]), **kwargs)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined,unused-ignore]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    delattr(wrapper, "__wrapped__")  # Typer must see the new signature, not the original
    return wrapper


def resolve_target(values: dict[str, Any], click_context: Any) -> Target:
    """Return the Target the connection options make, a profile's settings included.

    Each setting comes from the first of: its option, its variable, the profile (named by
    --profile or ROOMCTL_PROFILE, else the config file's default), the built-in default.
    Raises CliError (USAGE) for a profile that cannot be used.
    """

    def source(name: str) -> str | None:
        found = click_context.get_parameter_source(name)
        if found is None or found.name not in ("COMMANDLINE", "ENVIRONMENT"):
            return None  # a default
        return "flag" if found.name == "COMMANDLINE" else "environment"

    chosen = profiles.load(values["profile"])
    settings: dict[str, Any] = {"timeout": values["timeout"]}
    # A profile's token and CA go with its URL, as gh keeps a token per host: pointed at
    # another daemon (--url, ROOMCTL_URL), a command never sends it the profile's token.
    elsewhere = (chosen is not None and chosen.url is not None and source("url") is not None
                 and values["url"].rstrip("/") != chosen.url.rstrip("/"))
    for name in ("url", "data_dir", "ca_file", "insecure"):
        given = values[name]
        if source(name) is None and chosen is not None and getattr(chosen, name) is not None \
                and not (elsewhere and name == "ca_file"):
            given = getattr(chosen, name)
        settings[name] = given
    if chosen is not None and source("url") is None and chosen.url is not None:
        try:
            validate_url(chosen.url)
        except ValueError as exc:
            raise CliError(ExitCode.USAGE, f"profile {chosen.name!r}: url: {exc}") from None
    if settings["ca_file"] is not None and not Path(settings["ca_file"]).is_file():
        raise CliError(ExitCode.USAGE, f"profile {chosen.name if chosen else ''!r}: ca_file "
                                       f"{settings['ca_file']} is not a file")
    token_source = source("token")
    if values["token"] and token_source is not None:
        settings.update(token=values["token"], token_source=token_source)
    elif chosen is not None and elsewhere:
        pass  # (the profile's token is for its own URL)
    elif chosen is not None and chosen.token is not None:
        settings.update(token=chosen.token, token_source="profile")
    elif chosen is not None and chosen.token_file is not None:
        settings.update(token_file=chosen.token_file, token_source="profile")
    return Target(profile=chosen.name if chosen is not None else None, **settings)


def fail(message: str, exit_code: ExitCode = ExitCode.REFUSED, *,
         code: str | None = None, grant: str | None = None) -> NoReturn:
    """Print the error (``roomctl: message``, or a JSON object with --json) and exit with
    ``exit_code``; ``code`` is the daemon's error code, when it refused, and ``grant`` the
    grant it said the token lacks."""
    report(message, exit_code, code=code, grant=grant)
    raise typer.Exit(int(exit_code))


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` under trio; a CliError becomes one stderr line and its exit code.

    Ctrl-C outside a long command's own handling is one line and status 130. OutputClosed
    (stdout's reader went away) passes through, bare, for the entry point to end quietly.
    """
    try:
        import trio  # here: a command that runs no coroutine does not load it (start-up)

        return trio.run(main)
    except CliError as exc:
        fail(exc.message, exc.exit_code, code=exc.code, grant=exc.grant)
    except KeyboardInterrupt:
        fail("interrupted", ExitCode.INTERRUPTED)
    except BaseExceptionGroup as group:
        leaves = list(exception_leaves(group))
        errors = [e for e in leaves if isinstance(e, CliError)]
        if errors:
            fail(errors[0].message, errors[0].exit_code, code=errors[0].code)
        if any(isinstance(e, OutputClosed) for e in leaves):
            raise OutputClosed from None
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            fail("interrupted", ExitCode.INTERRUPTED)
        raise


# --- long commands and signals ----------------------------------------------------------------


def stop_signals() -> tuple[signal.Signals, ...]:
    """Return the signals that stop a long command: SIGTERM, and SIGINT unless it is ignored.

    A non-interactive shell starts background jobs (``roomctl tail R &``) with SIGINT
    ignored, so that a Ctrl-C meant for the foreground does not reach them; such a job keeps
    ignoring it, and SIGTERM (``kill``) stops it.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, signal.SIGINT)


async def until_signalled(main: Callable[[], Awaitable[T]],
                          on_signal: Callable[[signal.Signals], None]) -> T:
    """Run ``main`` and return its result; call ``on_signal`` on the first stop signal.

    ``on_signal`` runs as trio code (no signal-handler restrictions): it cancels a scope,
    closes a channel, sets a flag. A second signal means the user will not wait for the
    graceful stop: the process ends at once with status 130. Raises what ``main`` raises.
    """
    import trio

    with trio.open_signal_receiver(*stop_signals()) as signals:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, signals, on_signal)
                try:
                    return await main()
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:  # main's own exception, wrapped by the nursery
                raise group.exceptions[0] from None
            raise


async def _watch(signals: AsyncIterator[int],
                 on_signal: Callable[[signal.Signals], None]) -> None:
    stopping = False
    async for signum in signals:
        if stopping:
            exit_now(f"{signal.Signals(signum).name} again: stopped at once")
        stopping = True
        on_signal(signal.Signals(signum))


def exit_now(message: str) -> NoReturn:
    """Print ``roomctl: message`` and end the process at once (no cleanup), status 130."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    print(f"roomctl: {message}", file=sys.stderr, flush=True)
    os._exit(int(ExitCode.INTERRUPTED))


@dataclass(frozen=True)
class Stopped:
    """What a long command run by ``run_until_signalled`` returns when a signal ended it."""

    signal: signal.Signals


def run_until_signalled(main: Callable[[], Awaitable[T]]) -> T | Stopped:
    """Like ``run``, but the first SIGTERM or SIGINT cancels ``main``: return Stopped then."""

    async def stoppable() -> T | Stopped:
        import trio

        scope = trio.CancelScope()
        received: list[signal.Signals] = []

        def stop(signum: signal.Signals) -> None:
            received.append(signum)
            scope.cancel()

        async def cancellable() -> T | Stopped:
            with scope:
                return await main()
            return Stopped(received[0])

        return await until_signalled(cancellable, stop)

    return run(stoppable)
