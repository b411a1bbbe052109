"""Finding the room apps a daemon runs: installed ones by entry point, others by name.

An app package declares itself in the entry-point group ``roomctl.apps``
(``[project.entry-points."roomctl.apps"] poll = "poll_app:make"``); ``roomctl serve``
loads every app of that group, and each ``--app module:factory`` (``ROOMCTL_APPS``) on top.
The built-in chat app is loaded the same way, through roomctl's own entry point, so a
third-party app is a peer of chat, not an afterthought (the ``llm`` tool loads its default
plugins like this too). A factory is called with the daemon's ``Config`` when it takes an
argument, with nothing otherwise, and must return an ``App``.

Chat comes first: the first app is the one a hello to an unknown room creates.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from daemon.core.app import App

ENTRY_POINT_GROUP = "roomctl.apps"
BUILT_IN = "chat"


class AppLoadError(Exception):
    """An app could not be loaded; the message is one line naming it and why."""


def load_apps(specs: Sequence[str] = (), *, config: Any = None) -> list[App[Any, Any]]:
    """Return the installed apps (chat first, then by entry-point name), then ``specs``' apps.

    ``specs`` are ``module:factory`` names. Raises AppLoadError for an app that cannot be
    imported, whose factory fails or returns no ``App``, or whose name another app has.
    """
    found: list[tuple[str, Callable[..., Any]]] = []
    points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                    key=lambda p: (p.name != BUILT_IN, p.name))
    for point in points:
        try:
            found.append((f"entry point {point.name!r} ({point.value})", point.load()))
        except Exception as exc:
            raise AppLoadError(f"entry point {point.name!r} ({point.value}): "
                               f"{_reason(exc)}") from None
    for spec in specs:
        found.append((f"--app {spec}", _factory(spec)))
    apps: list[App[Any, Any]] = []
    names: dict[str, str] = {}
    for where, factory in found:
        app = _make(where, factory, config)
        if app.name in names:
            raise AppLoadError(f"{where}: an app named {app.name!r} is already loaded "
                               f"({names[app.name]})")
        names[app.name] = where
        apps.append(app)
    return apps


def _factory(spec: str) -> Callable[..., Any]:
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise AppLoadError(f"--app {spec}: give it as module:factory")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(f"--app {spec}: {_reason(exc)}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"--app {spec}: {module_name} has no {attribute}") from None
    if not callable(target):
        raise AppLoadError(f"--app {spec}: {attribute} is not callable")
    return target


def _make(where: str, factory: Callable[..., Any], config: Any) -> App[Any, Any]:
    try:
        takes_config = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes_config = False
    try:
        app = factory(config) if takes_config else factory()
    except Exception as exc:
        raise AppLoadError(f"{where}: its factory failed: {_reason(exc)}") from None
    if not isinstance(app, App):
        raise AppLoadError(f"{where}: its factory returned {type(app).__name__}, not an App")
    return app


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
