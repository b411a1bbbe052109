"""``roomctl serve``: run the daemon. Its options are made from ``daemon.Config``'s fields.

Each field of ``Config`` carries a ``Setting`` (help, value name, rule); this module turns
every one into an option ``--field-name`` with the variable ``ROOMCTL_<FIELD_NAME>`` and the
field's default, so a default or a limit is written once, in ``daemon/config.py``. Values
are checked by ``Config`` itself; a refused one is a usage error naming the option and the
rule in words (exit 2). This is the one module of the CLI that imports the daemon.

A config file (``--config FILE``, ``ROOMCTL_CONFIG``; ``daemon.configfile``) holds the
same settings under the field names, plus ``log_level`` and ``log_format``. Precedence is
option > variable > file > default: Click says where each value came from
(``get_parameter_source``), and only a value that came from the default is replaced by the
file's. A file's refusal names the file, the key and the same rule (exit 2).
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
from daemon.configfile import ConfigFileError, Key, config_keys, dump, load
from daemon.logs import LOG_FORMATS, configure
from roomctl.options import until_signalled
from roomctl.unit import command_line, systemd_unit

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


# Keys of a config file that are options of serve, not Config fields.
_LOG_KEYS = {
    "log_level": Key("log_level", str, Setting(
        help="Least important log lines written: debug, info, warning or error.",
        metavar="LEVEL"), choices=LOG_LEVELS),
    "log_format": Key("log_format", str, Setting(
        help="auto (text on a terminal, JSON lines otherwise), text or json.",
        metavar="FORMAT"), choices=LOG_FORMATS),
}
_LOG_DEFAULTS = {"log_level": "info", "log_format": "auto"}


def file_keys() -> dict[str, Key]:
    """Return every key a config file may hold: each Config field, then the log's."""
    return {**config_keys(), **_LOG_KEYS}


class ConfigFileRefused(click.ClickException):
    """A config file that cannot be used; printed as one line, exit 2 like a bad option."""

    exit_code = 2

    def __init__(self, error: ConfigFileError) -> None:
        super().__init__(f"config file {error}")


_OWN_PARAMETERS = [
    inspect.Parameter(
        "config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Path | None, typer.Option(
            "--config", envvar="ROOMCTL_CONFIG", metavar="FILE",
            help="A TOML file of settings, one key per option (max_text = 2000); options "
                 "and variables win over it.")]),
    inspect.Parameter(
        "log_level", inspect.Parameter.KEYWORD_ONLY, default=_LOG_DEFAULTS["log_level"],
        annotation=Annotated[str, typer.Option(
            "--log-level", envvar="ROOMCTL_LOG_LEVEL", metavar="LEVEL",
            help="debug, info, warning or error.")]),
    inspect.Parameter(
        "log_format", inspect.Parameter.KEYWORD_ONLY, default=_LOG_DEFAULTS["log_format"],
        annotation=Annotated[str, typer.Option(
            "--log-format", envvar="ROOMCTL_LOG_FORMAT", metavar="FORMAT",
            help="auto (text on a terminal, JSON lines otherwise), text or json.")]),
    inspect.Parameter(
        "print_config", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option(
            "--print-config",
            help="Print the configuration these options, variables and file make, as a "
                 "config file (secrets masked), and exit.")]),
    inspect.Parameter(
        "print_systemd_unit", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option(
            "--print-systemd-unit",
            help="Print a hardened systemd service running this daemon (with --config, "
                 "that file), and exit.")]),
    inspect.Parameter(
        "rotate_admin_token", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option(
            "--rotate-admin-token", envvar="ROOMCTL_ROTATE_ADMIN_TOKEN",
            help="Replace the admin token in the data directory and exit; a running daemon "
                 "uses the new one at once.")]),
]


def config_from(values: dict[str, Any], from_file: dict[str, Any] | None = None,
                file: Path | None = None) -> Config:
    """Return the Config the command line's ``values`` (one per field) ask for.

    ``from_file`` holds the values ``file`` gave (already in ``values``' place). Raises
    click.BadParameter naming the option and the rule when Config refuses a value, or
    ConfigFileRefused naming the file and the key when that value came from the file.
    """
    given = dict(values)
    if given.get("data_dir") is None:
        given["data_dir"] = default_data_dir()
    for name in ("allowed_origins", "apps"):
        # Several items may come in one value (ROOMCTL_ALLOWED_ORIGINS="https://a, https://b").
        given[name] = tuple(item.strip() for value in given.get(name) or ()
                            for item in value.split(",") if item.strip())
    given.update(from_file or {})
    try:
        return Config(**given)
    except ConfigError as exc:
        if file is not None and exc.name in (from_file or {}):
            raise ConfigFileRefused(ConfigFileError(file, exc.name, exc.rule)) from None
        setting = next(s for f, s in settings() if f.name == exc.name)
        raise click.BadParameter(exc.rule, param_hint=option_name(exc.name, setting)) from None


def _from_defaults(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` took its default: neither the command line nor a variable."""
    source = ctx.get_parameter_source(name)
    return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(ctx: typer.Context, **values: Any) -> None:
    """Run the rooms daemon until SIGINT or SIGTERM.

    Prints one line, "listening on http://HOST:PORT" (https with TLS), once it accepts
    connections.
    """
    file: Path | None = values.pop("config_file")
    rotate: bool = values.pop("rotate_admin_token")
    print_config: bool = values.pop("print_config")
    print_unit: bool = values.pop("print_systemd_unit")
    if sum((rotate, print_config, print_unit)) > 1:
        raise click.UsageError("--rotate-admin-token, --print-config and --print-systemd-unit "
                               "each do one thing: give one of them")
    from_file: dict[str, Any] = {}
    if file is not None:
        try:
            from_file = {name: value for name, value in load(file, file_keys()).items()
                         if _from_defaults(ctx, name)}
        except ConfigFileError as exc:
            raise ConfigFileRefused(exc) from None
    logs = {name: from_file.pop(name, values.pop(name)) for name in _LOG_KEYS}
    for name, value in logs.items():
        if value.lower() not in _LOG_KEYS[name].choices:
            raise typer.BadParameter(f"must be one of {', '.join(_LOG_KEYS[name].choices)}",
                                     param_hint="--" + name.replace("_", "-"))
    config = config_from(values, from_file, file)
    if print_config:
        print(dump(effective(config, logs), file_keys()), end="", flush=True)
        return
    if print_unit:
        print(systemd_unit(command_line(), given_options(ctx, config, logs), config_file=file,
                           port=config.port, shutdown_timeout=config.shutdown_timeout),
              end="", flush=True)
        return
    if config.redis is not None and config.node_id is None:
        # Named once, so that its logs, its metrics and the cluster say the same name.
        config = dataclasses.replace(config, node_id=config.node_name())
    configure(logs["log_level"], logs["log_format"].lower(), sys.stderr,
              node=config.node_name())
    if rotate:
        _rotate(config.data_dir, config.redis)
        return
    _run(config)


def given_options(ctx: typer.Context, config: Config, logs: dict[str, str]) -> list[str]:
    """Return the options given on the command line, spelled out again, as a service runs them.

    Variables are not carried over: they belong to this shell, not to the service.
    """
    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    options: list[str] = []
    for item, setting in settings():
        if not given(item.name):
            continue
        option, value = option_name(item.name, setting), getattr(config, item.name)
        if isinstance(value, bool):
            on, _, off = (setting.flag or option).partition("/")
            options += [on] if value else [off] if off else []
        elif isinstance(value, tuple):
            options += [part for entry in value for part in (option, entry)]
        elif isinstance(value, Path):
            options += [option, str(value.absolute())]
        elif value is not None:
            options += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    for name, value in logs.items():
        if given(name):
            options += ["--" + name.replace("_", "-"), value.lower()]
    return options


def effective(config: Config, logs: dict[str, str]) -> dict[str, Any]:
    """Return every file key's value in ``config`` and the log settings, as a file has them."""
    values: dict[str, Any] = {item.name: getattr(config, item.name) for item, _ in settings()}
    return {**values, **{name: value.lower() for name, value in logs.items()}}


def _rotate(data_dir: Path, redis: str | None = None) -> None:
    from daemon.config import rotate_admin_token

    try:
        if redis is not None:
            _rotate_in_cluster(data_dir, redis)
        path = rotate_admin_token(data_dir) if redis is None else data_dir / "admin-token"
    except OSError as exc:
        typer.echo(f"roomctl serve: cannot rotate the admin token in {data_dir}: "
                   f"{exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    print(f"new admin token in {path}" + (" and in the cluster's Redis" if redis else ""),
          flush=True)


def _rotate_in_cluster(data_dir: Path, url: str) -> None:
    """Replace the cluster's admin token (every node takes it within seconds), and this
    node's copy. Raises OSError when Redis cannot be reached."""
    import trio

    from daemon.cluster import nodes
    from daemon.cluster.redis import UNREACHABLE, client, describe
    from daemon.config import write_secret_file

    async def rotate() -> str:
        async with client(url) as redis:
            return await nodes.rotate_admin_token(redis)

    failures: tuple[type[BaseException], ...] = (trio.TooSlowError, *UNREACHABLE)
    try:
        token = trio.run(rotate)
    except failures as exc:
        raise OSError(f"Redis at {describe(url)}: {exc or type(exc).__name__}") from None
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret_file(data_dir / "admin-token", token + "\n")


def _run(config: Config) -> None:
    import trio

    from daemon import serve as serve_daemon
    from daemon.apps.loader import AppLoadError, load_apps
    from daemon.notify import Notifier
    from daemon.store import StoreError

    try:
        apps = load_apps(config.apps, config=config)
    except AppLoadError as exc:
        typer.echo(f"roomctl serve: {exc}", err=True)
        raise typer.Exit(1) from None

    # A daemon holds thousands of long-lived objects per thousand connections; with the
    # default thresholds the cyclic GC rescans them all the time. Freeze what start-up made
    # and collect young objects less often. Rare collections cost no memory, because a
    # closed connection leaves no reference cycle (tests/test_memory.py). Measured here
    # (tests/bench/idle_memory.py --no-trace, 5000 connections): 0.07 s of GC pauses in a
    # 2.1 s connect storm with these settings, 0.25-0.34 s with Python's; RSS flat over
    # 30,000 churned connections either way (tests/bench/soak.py).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)

    serving = trio.CancelScope()

    notifier = Notifier.from_environment()  # systemd's Type=notify, when it runs us

    def shut_down(signum: signal.Signals) -> None:
        log.info("%s received", signum.name, extra={"event": "signal", "signal": signum.name})
        serving.cancel()  # the daemon's graceful shutdown runs as it is cancelled

    async def serve_until_cancelled() -> None:
        with serving:
            async with trio.open_nursery() as nursery:
                bound_host, bound_port = await nursery.start(
                    functools.partial(serve_daemon, notifier=notifier), config, apps)
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
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=typer.Context)
    params = [context, *(_parameter(item, setting) for item, setting in settings()),
              *_OWN_PARAMETERS]

    @functools.wraps(serve)
    def command(ctx: typer.Context, **values: Any) -> None:
        serve(ctx, **values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # Typer must see the new signature, not serve's
    return command
