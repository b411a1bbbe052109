"""``roomctl serve``: run the daemon. Its options are made from ``daemon.Config``'s fields.

Each field of ``Config`` carries a ``Setting`` (help, value name, rule); this module turns
every one into an option ``--field-name`` with the variable ``ROOMCTL_<FIELD_NAME>`` and the
field's default, so a default or a limit is written once, in ``daemon/config.py``. Values
are checked by ``Config`` itself; a refused one is a usage error naming the option and the
rule in words (exit 2). This is the one module of the CLI that imports the daemon.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import inspect
import logging
import signal
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from daemon.config import Config, ConfigError, Setting, default_data_dir, settings
from roomctl.options import until_signalled

try:  # Typer 0.22+ vendors Click; older releases use Click itself.
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")
_TYPES = typing.get_type_hints(Config)


def option_name(name: str, setting: Setting) -> str:
    """Return the option that sets Config field ``name`` (``--max-text``)."""
    return setting.option or "--" + name.replace("_", "-")


def variable_name(name: str) -> str:
    """Return the environment variable that sets Config field ``name`` (``ROOMCTL_MAX_TEXT``)."""
    return "ROOMCTL_" + name.upper()


def _parameter(item: dataclasses.Field[Any], setting: Setting) -> inspect.Parameter:
    """The Typer parameter of one Config field."""
    kind = _TYPES[item.name]
    option = option_name(item.name, setting)
    common: dict[str, Any] = {"envvar": variable_name(item.name), "help": setting.help}
    if setting.show_default is not None:
        common["show_default"] = setting.show_default
    default = item.default if item.default is not dataclasses.MISSING else None
    if kind is bool:
        annotation: Any = Annotated[bool, typer.Option(setting.flag or option, **common)]
    elif kind == tuple[str, ...]:
        annotation = Annotated[list[str] | None, typer.Option(
            option, metavar=setting.metavar, **common)]
        default = None
    else:
        if kind in (Path, Path | None):
            value_type: Any = Path | None
        elif kind in (int, int | None):
            value_type = int
        elif kind is float:
            value_type = float
        else:
            value_type = str
        annotation = Annotated[value_type, typer.Option(option, metavar=setting.metavar,
                                                         **common)]
    return inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


_OWN_PARAMETERS = [
    inspect.Parameter(
        "log_level", inspect.Parameter.KEYWORD_ONLY, default="info",
        annotation=Annotated[str, typer.Option(
            "--log-level", envvar="ROOMCTL_LOG_LEVEL", metavar="LEVEL",
            help="debug, info, warning or error.")]),
    inspect.Parameter(
        "rotate_admin_token", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option(
            "--rotate-admin-token", envvar="ROOMCTL_ROTATE_ADMIN_TOKEN",
            help="Replace the admin token in the data directory and exit; a running daemon "
                 "uses the new one at once.")]),
]


def config_from(values: dict[str, Any]) -> Config:
    """Return the Config the command line's ``values`` (one per field) ask for.

    Raises click.BadParameter naming the option and the rule when Config refuses a value.
    """
    given = dict(values)
    if given.get("data_dir") is None:
        given["data_dir"] = default_data_dir()
    for name in ("allowed_origins", "apps"):
        # Several items may come in one value (ROOMCTL_ALLOWED_ORIGINS="https://a, https://b").
        given[name] = tuple(item.strip() for value in given.get(name) or ()
                            for item in value.split(",") if item.strip())
    try:
        return Config(**given)
    except ConfigError as exc:
        setting = next(s for f, s in settings() if f.name == exc.name)
        raise click.BadParameter(exc.rule, param_hint=option_name(exc.name, setting)) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(**values: Any) -> None:
    """Run the rooms daemon until SIGINT or SIGTERM.

    Prints one line, "listening on http://HOST:PORT" (https with TLS), once it accepts
    connections.
    """
    log_level: str = values.pop("log_level")
    rotate: bool = values.pop("rotate_admin_token")
    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"must be one of {', '.join(LOG_LEVELS)}",
                                 param_hint="--log-level")
    config = config_from(values)
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if rotate:
        _rotate(config.data_dir)
        return
    _run(config)


def _rotate(data_dir: Path) -> None:
    from daemon.config import rotate_admin_token

    try:
        path = rotate_admin_token(data_dir)
    except OSError as exc:
        typer.echo(f"roomctl serve: cannot rotate the admin token in {data_dir}: "
                   f"{exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    print(f"new admin token in {path}", flush=True)


def _run(config: Config) -> None:
    import trio

    from daemon import serve as serve_daemon
    from daemon.apps.loader import AppLoadError, load_apps
    from daemon.store import StoreError

    try:
        apps = load_apps(config.apps, config=config)
    except AppLoadError as exc:
        typer.echo(f"roomctl serve: {exc}", err=True)
        raise typer.Exit(1) from None

    # A daemon holds thousands of long-lived objects per thousand connections; with the
    # default thresholds the cyclic GC rescans them all the time (20 % of the CPU of a
    # connect storm here). Freeze what start-up made and collect young objects less often.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)

    serving = trio.CancelScope()

    def shut_down(signum: signal.Signals) -> None:
        log.info("%s: shutting down", signum.name)
        serving.cancel()  # the daemon's graceful shutdown runs as it is cancelled

    async def serve_until_cancelled() -> None:
        with serving:
            async with trio.open_nursery() as nursery:
                bound_host, bound_port = await nursery.start(serve_daemon, config, apps)
                scheme = "https" if config.tls else "http"
                print(f"listening on {scheme}://{_url_host(bound_host)}:{bound_port}",
                      flush=True)

    async def main() -> None:
        await until_signalled(serve_until_cancelled, shut_down)

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


def serve_command() -> Any:
    """Return ``serve`` with a Typer signature: every Config field, then its own options."""
    params = [_parameter(item, setting) for item, setting in settings()] + _OWN_PARAMETERS

    @functools.wraps(serve)
    def command(**values: Any) -> None:
        serve(**values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # Typer must see the new signature, not serve's
    return command
