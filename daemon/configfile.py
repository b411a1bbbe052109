"""The daemon's configuration file: TOML, one key per ``Config`` field, checked as a whole.

A file holds the same settings as ``roomctl serve``'s options, under the ``Config`` field
names (``max_text = 2000`` for ``--max-text 2000``), plus whatever keys the caller adds
(``roomctl serve`` adds ``log_level`` and ``log_format``). ``load`` refuses, with one
``ConfigFileError`` naming the file, the key and the rule: a key it does not know, a value
of the wrong TOML type, and a value outside the rule of its ``Setting`` (the same check
and the same words as the option's). Relative paths are taken from the file's directory,
so a file means the same whatever directory the daemon starts in. ``dump`` writes the
effective configuration back as a file a person can start from.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config import Config, ConfigError, Setting, settings

__all__ = ["ConfigFileError", "Key", "config_keys", "dump", "load"]

_TYPES = typing.get_type_hints(Config)


class ConfigFileError(ValueError):
    """The file cannot be used: ``key`` (None for the file as a whole) breaks ``rule``."""

    def __init__(self, path: Path, key: str | None, rule: str) -> None:
        where = f"{path}: {key}: " if key is not None else f"{path}: "
        super().__init__(where + rule)
        self.path = path
        self.key = key
        self.rule = rule


@dataclass(frozen=True)
class Key:
    """One key a file may hold: its Python type, its ``Setting``, and its allowed words."""

    name: str
    kind: Any  # int, float, bool, str, Path, tuple[str, ...] (with None where optional)
    setting: Setting
    choices: tuple[str, ...] = ()


def config_keys() -> dict[str, Key]:
    """Return a Key for every ``Config`` field, by field name, in declaration order."""
    return {item.name: Key(item.name, _TYPES[item.name], setting)
            for item, setting in settings()}


def load(path: Path, keys: Mapping[str, Key]) -> dict[str, Any]:
    """Return the values ``path`` sets, by key, as the Python values of their fields.

    Raises ConfigFileError for a file that cannot be read or is not TOML, and for the
    first key that is unknown, of the wrong type or outside its rule.
    """
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise ConfigFileError(path, None, f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(path, None, "not UTF-8 text") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(path, None, f"not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for name, raw in document.items():
        key = keys.get(name)
        if key is None:
            raise ConfigFileError(path, name, _unknown(name, keys))
        values[name] = _value(path, key, raw)
    return values


def _unknown(name: str, keys: Mapping[str, Key]) -> str:
    if isinstance(name, str) and "-" in name and name.replace("-", "_") in keys:
        return f"unknown key; keys are spelled with '_': {name.replace('-', '_')}"
    close = difflib.get_close_matches(name, list(keys), n=1)
    return "unknown key" + (f"; did you mean {close[0]}?" if close else "")


def _value(path: Path, key: Key, raw: Any) -> Any:
    """Return ``raw`` as the key's Python value, or raise ConfigFileError saying why not."""
    kind = key.kind
    if kind in (bool,):
        if not isinstance(raw, bool):
            raise ConfigFileError(path, key.name, "must be true or false")
        return raw
    if kind in (int, int | None):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigFileError(path, key.name, "must be a whole number")
        value: Any = raw
    elif kind is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigFileError(path, key.name, "must be a number")
        value = float(raw)
    elif kind in (Path, Path | None):
        if not isinstance(raw, str) or not raw:
            raise ConfigFileError(path, key.name, "must be a path, as a string")
        value = Path(raw) if Path(raw).is_absolute() else path.absolute().parent / raw
    elif kind == tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise ConfigFileError(path, key.name, 'must be a list of strings, like ["a", "b"]')
        value = tuple(raw)
    else:
        if not isinstance(raw, str):
            raise ConfigFileError(path, key.name, "must be a string")
        value = raw
        if key.choices and value.lower() not in key.choices:
            raise ConfigFileError(path, key.name, f"must be one of {', '.join(key.choices)}")
    try:
        key.setting.check(key.name, value)
    except ConfigError as exc:
        raise ConfigFileError(path, key.name, exc.rule) from None
    return value


def dump(values: Mapping[str, Any], keys: Mapping[str, Key]) -> str:
    """Return ``values`` (one per key, in the keys' order) as a commented TOML file.

    Each key is preceded by its help text. A value TOML cannot hold (None: not set) is
    written commented out, and so is a secret's, masked: the output is safe to share.
    """
    lines = ["# roomctl serve configuration: roomctl serve --config FILE",
             "# Each key is the option of the same name (roomctl(1)); an option or a",
             "# ROOMCTL_* variable given as well wins over the file."]
    for name, key in keys.items():
        value = values.get(name)
        lines += ["", *(f"# {line}" for line in _wrap(key.setting.help))]
        if key.setting.secret and value is not None:
            lines.append(f'# {name} = "********"  (secret: not shown)')
        elif value is None:
            lines.append(f"# {name} = {_placeholder(key)}")
        else:
            lines.append(f"{name} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _placeholder(key: Key) -> str:
    metavar = key.setting.metavar or "VALUE"
    return f'"{metavar}"' if key.kind in (Path, Path | None, str) else metavar


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    # A JSON string is a TOML basic string (both escape quotes, backslashes and controls
    # the same way), so any text round-trips.
    return json.dumps(str(value), ensure_ascii=False)


def _wrap(text: str, width: int = 86) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return lines + ([current] if current else [])
