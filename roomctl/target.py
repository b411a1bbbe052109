"""Where the daemon is and which token to show it: the resolved connection options.

Light on purpose (no event loop, no WebSocket library), so that ``roomctl status`` and the
option parsing cost little at start-up.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from protocol.local import ADMIN_TOKEN_FILE, DEFAULT_URL, default_data_dir
from roomctl.errors import CliError, ExitCode

__all__ = ["Credential", "Target", "TokenSource", "is_local", "validate_url"]


def is_local(host: str) -> bool:
    """Whether ``host`` names this machine (localhost, or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TokenSource = Literal["flag", "environment", "profile", "data-dir"]


@dataclass(frozen=True)
class Credential:
    """A token to present, and where it came from."""

    token: str
    source: TokenSource = "flag"
    file: Path | None = None  # the file it was read from (a profile's, a data directory's)

    @property
    def implicit(self) -> bool:
        """Whether it was read from a data directory rather than given (flag, variable,
        profile): a daemon refusing it is probably another daemon."""
        return self.source == "data-dir"


@dataclass(frozen=True)
class Target:
    """Where the daemon is and how to talk to it: the resolved global options."""

    url: str = DEFAULT_URL  # http, https, ws or wss; any path is ignored
    token: str | None = None  # explicit token (--token / ROOMCTL_TOKEN, or a profile's)
    data_dir: Path | None = None  # where a local daemon keeps its admin token
    timeout: float = 10.0  # seconds to connect and to get each reply
    ca_file: Path | None = None
    insecure: bool = False
    token_source: TokenSource = "flag"  # where ``token`` (or ``token_file``) came from
    token_file: Path | None = None  # a profile's token file, read when a token is needed
    profile: str | None = None  # the profile in use, if any

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme in ("https", "wss")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def ws_url(self, path: str) -> str:
        """Return the ws:// or wss:// URL of ``path`` on the daemon."""
        parts = urlsplit(self.url)
        scheme = "wss" if self.secure else "ws"
        return urlunsplit((scheme, parts.netloc, path, "", ""))

    def http_url(self, path: str) -> str:
        """Return the http:// or https:// URL of ``path`` on the daemon."""
        parts = urlsplit(self.url)
        scheme = "https" if self.secure else "http"
        return urlunsplit((scheme, parts.netloc, path, "", ""))

    @property
    def admin_token_file(self) -> Path:
        """The file a local daemon keeps its admin token in (under ``data_dir``)."""
        return (self.data_dir or default_data_dir()) / ADMIN_TOKEN_FILE

    def credential(self) -> Credential | None:
        """Return the token to present: the explicit one (or a profile's token file), else
        a local daemon's admin token.

        The admin token file is read only when the URL names this machine, so a token never
        leaves it for a remote daemon by accident. Returns None when there is neither.
        Raises CliError (UNAUTHORIZED) for a profile's token file that cannot be read.
        """
        if self.token:
            return Credential(self.token, self.token_source, self.token_file)
        if self.token_file is not None:
            return Credential(_read_token_file(self.token_file, self.profile), "profile",
                              self.token_file)
        if not is_local(self.host):
            return None
        path = self.admin_token_file
        try:
            token = path.read_text().strip()
        except OSError:
            return None
        return Credential(token, "data-dir", path.absolute()) if token else None

    def resolved_token(self) -> str | None:
        """Return the token ``credential`` finds, or None."""
        credential = self.credential()
        return credential.token if credential is not None else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """Return the context to verify an https/wss daemon with; None for http/ws.

        ``ca_file`` is trusted in addition to the system's CAs. Raises CliError (USAGE) for a
        CA file that holds no PEM certificate.
        """
        if not self.secure:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None)
        except (ssl.SSLError, OSError) as exc:
            reason = ("no PEM CA certificate in it" if isinstance(exc, ssl.SSLError)
                      else exc.strerror or str(exc))
            raise CliError(ExitCode.USAGE, f"--ca-file {self.ca_file}: {reason}") from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def validate_url(url: str) -> str:
    """Return ``url`` if it is an http, https, ws or wss URL with a host; raise ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"{url!r} is not an http, https, ws or wss URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    return url


def _read_token_file(path: Path, profile: str | None) -> str:
    """Return the first line of a profile's token file; raise CliError (UNAUTHORIZED)."""
    where = f"profile {profile!r}: " if profile else ""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CliError(ExitCode.UNAUTHORIZED, f"{where}cannot read the token file {path}: "
                                              f"{exc.strerror or exc}") from None
    if not token:
        raise CliError(ExitCode.UNAUTHORIZED, f"{where}the token file {path} is empty")
    return token


def no_admin_token(target: Target) -> CliError:
    """The error of a command that needs the admin token and has none."""
    where = f"--token, ROOMCTL_TOKEN or {target.admin_token_file}" \
        if is_local(target.host) else "--token or ROOMCTL_TOKEN"
    return CliError(ExitCode.UNAUTHORIZED, f"no admin token: give it with {where}")


def admin_token_refused(target: Target, credential: Credential, reason: str, *,
                        code: str | None, also: str | None = None) -> CliError:
    """The error for an admin token read from a data directory that the daemon refused:
    probably another daemon's (``also``: why the retry without it was refused too)."""
    then = "" if also is None else f", and without it: {also}"
    return CliError(
        ExitCode.UNAUTHORIZED,
        f"the daemon at {target.url} refused the admin token in {credential.file} "
        f"({reason}){then}; give --data-dir that daemon's data directory, or a token with "
        "--token", code=code)
