"""Named profiles: where a daemon is and how to reach it, kept in the client's config file.

``$XDG_CONFIG_HOME/roomctl/config.toml`` (``~/.config/roomctl/config.toml``) holds one
table per profile, as ``gh`` keeps hosts and ``kubectl`` contexts::

    default = "prod"                # the profile used when none is chosen (optional)

    [profiles.prod]
    url = "https://rooms.example.com"
    token_file = "~/.config/roomctl/prod.token"   # or token = "..."
    ca_file = "prod-ca.pem"                        # relative: to this file's folder

A command uses the profile named by ``--profile`` or ``ROOMCTL_PROFILE``, else the
file's ``default``. Each setting then comes from the first of: its option, its variable,
the profile, the built-in default. Nothing here prints; a file that cannot be used is a
CliError (usage, exit 2) naming the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roomctl.errors import CliError, ExitCode
from roomctl.target import validate_url

CONFIG_NAME = "config.toml"
KEYS = ("url", "token", "token_file", "ca_file", "insecure", "data_dir")
_PATHS = ("token_file", "ca_file", "data_dir")


@dataclass(frozen=True)
class Profile:
    """One profile of the config file (unset settings are None)."""

    name: str
    file: Path
    url: str | None = None
    token: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    insecure: bool | None = None
    data_dir: Path | None = None


def config_file() -> Path:
    """Return ``$XDG_CONFIG_HOME/roomctl/config.toml`` (``~/.config/...`` without it)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "roomctl" / CONFIG_NAME


def load(name: str | None, path: Path | None = None) -> Profile | None:
    """Return the profile ``name``, or the file's default one when ``name`` is None.

    Returns None when no profile applies (no name and no default, or no file and no
    name). Raises CliError (USAGE) for a named profile that is not there, or a file that
    is not valid TOML or holds unknown keys or values of the wrong type.
    """
    path = path or config_file()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if name is None:
            return None
        raise CliError(ExitCode.USAGE, f"no profile {name!r}: {path} does not exist") from None
    except OSError as exc:
        raise CliError(ExitCode.USAGE, f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(ExitCode.USAGE, f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"default", "profiles"})
    if unknown:
        raise CliError(ExitCode.USAGE, f"{path}: unknown key {unknown[0]!r} (the file holds "
                                       "'default' and [profiles.NAME] tables)")
    profiles = data.get("profiles", {})
    default = data.get("default")
    if not isinstance(profiles, dict) or (default is not None and not isinstance(default, str)):
        raise CliError(ExitCode.USAGE, f"{path}: 'default' must be a profile's name and "
                                       "'profiles' its tables")
    chosen = name or default
    if chosen is None:
        return None
    table = profiles.get(chosen)
    if not isinstance(table, dict):
        known = ", ".join(sorted(profiles)) or "none"
        what = "default profile" if name is None else "profile"
        raise CliError(ExitCode.USAGE, f"no {what} {chosen!r} in {path} (profiles: {known})")
    return _profile(chosen, table, path)


def _profile(name: str, table: dict[str, Any], path: Path) -> Profile:
    where = f"{path}: profile {name!r}"
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise CliError(ExitCode.USAGE, f"{where}: unknown key {unknown[0]!r} (keys: "
                                       f"{', '.join(KEYS)})")
    if "token" in table and "token_file" in table:
        raise CliError(ExitCode.USAGE, f"{where}: give token or token_file, not both")
    values: dict[str, Any] = {}
    for key, value in table.items():
        wanted = bool if key == "insecure" else str
        if not isinstance(value, wanted) or (wanted is str and not value):
            kind = "true or false" if wanted is bool else "a non-empty string"
            raise CliError(ExitCode.USAGE, f"{where}: {key} must be {kind}")
        if key == "url":
            assert isinstance(value, str)
            try:
                validate_url(value)
            except ValueError as exc:
                raise CliError(ExitCode.USAGE, f"{where}: url: {exc}") from None
        if key in _PATHS:
            assert isinstance(value, str)
            found = Path(value).expanduser()
            value = found if found.is_absolute() else path.parent / found
        values[key] = value
    return Profile(name=name, file=path, **values)
