"""Daemon configuration (``Config`` and each field's ``Setting``) and the files it keeps in
its data directory (the admin token, the lock)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import socket
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from daemon.core.engine import DEFAULT_EMPTY_TIMEOUT
from daemon.net.origins import normalize_origin
from protocol import local
from protocol.limits import (
    MAX_DISPLAY_NAME,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_TEXT,
    MAX_ROOM_PARTICIPANTS,
)
from protocol.local import ADMIN_TOKEN_FILE

DEFAULT_HOST = local.DEFAULT_HOST
DEFAULT_PORT = local.DEFAULT_PORT
DB_FILE = "roomctl.db"
LOCK_FILE = "lock"

log = logging.getLogger(__name__)

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

__all__ = ["ADMIN_TOKEN_FILE", "Config", "ConfigError", "Setting", "settings"]


def default_data_dir() -> Path:
    """Return ``$XDG_STATE_HOME/roomctl``, or ``~/.local/state/roomctl`` without it."""
    return local.default_data_dir()


class ConfigError(ValueError):
    """A setting's value breaks its rule; ``name`` is the ``Config`` field, ``rule`` in words."""

    def __init__(self, name: str, rule: str) -> None:
        super().__init__(f"{name}: {rule}")
        self.name = name
        self.rule = rule


@dataclass(frozen=True)
class Setting:
    """How one ``Config`` field is set from outside the program, and its rule.

    ``roomctl serve`` makes its options from these (``--name-with-dashes``, and the
    variable ``ROOMCTL_NAME_IN_CAPITALS``), so a default, a help text or a limit is
    written once, here. ``minimum``/``maximum`` are inclusive, ``above`` exclusive.
    """

    help: str
    metavar: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    flag: str | None = None  # a boolean's option spelling: "--memory", "--a/--no-a"
    option: str | None = None  # an option name other than the field's
    show_default: str | None = None  # what --help says the default is, when not the value
    secret: bool = False  # never printed back (a future key or password)

    def check(self, name: str, value: Any) -> None:
        """Raise ConfigError unless ``value`` keeps this setting's numeric rule."""
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return
        if value != value:  # NaN passes no comparison, so no rule
            raise ConfigError(name, "must be a number")
        low_ok = self.minimum is None or value >= self.minimum
        high_ok = self.maximum is None or value <= self.maximum
        above_ok = self.above is None or value > self.above
        if low_ok and high_ok and above_ok:
            return
        raise ConfigError(name, self.rule())

    def rule(self) -> str:
        """Return the numeric rule in words ("must be 1 to 4000", "must be more than 0")."""
        if self.above is not None:
            return f"must be more than {self.above:g}"
        if self.minimum is not None and self.maximum is not None:
            return f"must be {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"must be {self.minimum:g} or more"
        if self.maximum is not None:
            return f"must be {self.maximum:g} or less"
        return "is not allowed"


def _set(default: Any = MISSING, *, factory: Any = MISSING, **setting: Any) -> Any:
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"setting": Setting(**setting)})
    return field(default=default, metadata={"setting": Setting(**setting)})


@dataclass(frozen=True)
class Config:
    """Everything ``serve`` needs; ``roomctl serve`` builds it from options and variables.

    Each field carries its ``Setting`` (help, value name, rule): the CLI's options are
    made from them and every value is checked here, so the embedding API, the command
    line and the environment refuse the same values with the same words
    (``ConfigError``). Path fields also take a ``str``; they hold a ``Path`` once built.
    """

    host: str = _set(local.DEFAULT_HOST, help="Address to listen on.", metavar="ADDRESS")
    port: int = _set(local.DEFAULT_PORT, help="TCP port; 0 picks a free one.", metavar="PORT",
                     minimum=0, maximum=65535)
    data_dir: Path = _set(factory=default_data_dir, metavar="DIR",
                          help="Where rooms, messages and the admin token live.",
                          show_default="$XDG_STATE_HOME/roomctl")
    memory: bool = _set(False, flag="--memory",
                        help="Keep rooms and messages in memory only (the admin token still "
                             "goes to the data directory).")
    grace: float = _set(60.0, metavar="SECONDS", minimum=0,
                        help="Seconds a dropped participant may take to resume before it "
                             "leaves.")
    auto_create: bool = _set(True, flag="--auto-create/--no-auto-create",
                             help="Create a room when someone first joins it.")
    empty_timeout: float = _set(DEFAULT_EMPTY_TIMEOUT, metavar="SECONDS", minimum=0,
                                help="Seconds a room made by joining it, and never used (no "
                                     "message, topic or pin), stays once empty; 'inf' keeps "
                                     "it.")
    handshake_timeout: float = _set(10.0, metavar="SECONDS", above=0,
                                    help="Seconds from the WebSocket opening to a successful "
                                         "hello.")
    head_timeout: float = _set(10.0, metavar="SECONDS", above=0,
                               help="Seconds from accepting a connection to its whole request "
                                    "head (TLS handshake included).")
    max_head_bytes: int = _set(16 * 1024, metavar="BYTES", minimum=1024, maximum=1024 * 1024,
                               help="Largest HTTP request head; a larger one gets 431.")
    max_frame_bytes: int = _set(MAX_FRAME_BYTES, metavar="BYTES", minimum=1024,
                                maximum=MAX_FRAME_BYTES,
                                help="Largest WebSocket frame; a larger one closes the "
                                     "connection (1009).")
    outbound_queue: int = _set(2048, metavar="N", minimum=1,
                               help="Writes waiting for one client's socket before it counts "
                                    "as too slow and is closed (4011).")
    send_timeout: float = _set(10.0, metavar="SECONDS", above=0,
                               help="Seconds a client's pending output may make no progress "
                                    "before it is closed as too slow (4011).")
    close_timeout: float = _set(2.0, metavar="SECONDS", above=0,
                                help="Seconds for one connection's closing handshake.")
    max_bad_frames: int = _set(20, metavar="N", minimum=0,
                               help="Bad frames a connection may send before it is closed "
                                    "(1008).")
    shutdown_timeout: float = _set(5.0, metavar="SECONDS", minimum=0,
                                   help="Seconds clients get to see the 1001 close on shutdown.")
    require_tokens: bool = _set(False, flag="--require-tokens",
                                help="Make every room private: joining needs a join token.")
    max_rooms: int | None = _set(10_000, metavar="N", minimum=1,
                                 help="Most rooms the daemon holds.")
    max_participants: int | None = _set(100, metavar="N", minimum=1,
                                        maximum=MAX_ROOM_PARTICIPANTS,
                                        help="Most participants in one room (hidden observers "
                                             "not counted).")
    tls_cert: Path | None = _set(None, metavar="FILE",
                                 help="PEM certificate chain: serve https and wss (needs "
                                      "--tls-key).")
    tls_key: Path | None = _set(None, metavar="FILE", help="PEM private key of --tls-cert.")
    rate_limit: float = _set(20.0, metavar="N", minimum=0,
                             help="Requests per second per connection, sustained; 0: no limit. "
                                  "The admin token's connections are not limited.")
    rate_burst: int = _set(200, metavar="N", minimum=1,
                           help="Requests a connection may make at once, after a quiet spell.")
    max_rate_limited: int = _set(100, metavar="N", minimum=1,
                                 help="Refused (rate-limited) requests within 10 s before the "
                                      "connection is closed (1008).")
    max_connections_per_address: int = _set(64, metavar="N", minimum=0,
                                            help="Connections open at once from one client "
                                                 "address, loopback included; 0: no limit.")
    ping_interval: float = _set(30.0, metavar="SECONDS", minimum=0,
                                help="Seconds between WebSocket pings to each client; 0: no "
                                     "pings.")
    ping_timeout: float = _set(20.0, metavar="SECONDS", above=0,
                               help="Seconds a client has to answer a ping before it is closed "
                                    "(1011).")
    allowed_origins: tuple[str, ...] = _set((), metavar="ORIGIN", option="--allowed-origin",
                                            help="A web origin (https://chat.example.org) "
                                                 "whose pages may connect, besides the "
                                                 "daemon's own; repeat it, or '*' for any.")
    max_text: int = _set(MAX_MESSAGE_TEXT, metavar="N", minimum=1, maximum=MAX_MESSAGE_TEXT,
                         help="Longest message text, in characters.")
    max_name: int = _set(MAX_DISPLAY_NAME, metavar="N", minimum=1, maximum=MAX_DISPLAY_NAME,
                         help="Longest display name, in characters.")
    apps: tuple[str, ...] = _set((), metavar="MODULE:FACTORY", option="--app",
                                 help="Also run the room app this factory makes (a module "
                                      "on the Python path); repeat for several. Installed "
                                      "apps (entry points roomctl.apps) always run.")
    # Several nodes (daemon.cluster): rooms, logs and sessions in Redis instead of SQLite.
    redis: str | None = _set(None, metavar="URL", secret=True,
                             help="Run as one node of a cluster sharing its rooms through "
                                  "this Redis (redis://HOST:PORT/DB, rediss://..., "
                                  "unix:///path); without it the rooms live in SQLite.")
    node_id: str | None = _set(None, metavar="ID",
                               help="This node's name in the cluster; unique and stable "
                                    "across restarts.",
                               show_default="HOSTNAME-PORT")
    redis_lease: float = _set(5.0, metavar="SECONDS", minimum=0.5, maximum=60,
                              help="How long a node may go silent (dead, paused, cut off) "
                                   "before another takes over its rooms; its clients "
                                   "resume within about that much.")
    redis_durability: str = _set("strict", metavar="strict|relaxed",
                                 help="strict: refuse a Redis that does not fsync every "
                                      "write (appendonly yes, appendfsync always); relaxed: "
                                      "accept it, and lose what Redis had not fsynced when "
                                      "it crashes.")

    def __post_init__(self) -> None:
        # A str here used to fail deep inside serve(); normalise every path field once.
        for name in ("data_dir", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for item, setting in settings():
            setting.check(item.name, getattr(self, item.name))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert", "a TLS certificate and key go together: give both "
                                          "or neither")
        if self.memory and self.redis is not None:
            raise ConfigError("memory", "rooms are kept in Redis with --redis: give one of "
                                        "--memory and --redis, not both")
        if self.redis is not None and not self.redis.startswith(
                ("redis://", "rediss://", "unix://")):
            raise ConfigError("redis", "use redis://HOST:PORT/DB, rediss://... (TLS) or "
                                       "unix:///path/to/socket")
        if self.redis_durability not in ("strict", "relaxed"):
            raise ConfigError("redis_durability", "must be strict or relaxed")
        if self.node_id is not None and not _NODE_ID.match(self.node_id):
            raise ConfigError("node_id", "1-64 letters, digits, '.', '_' or '-'")
        origins: list[str] = []
        for origin in self.allowed_origins:
            try:
                origins.append(normalize_origin(origin))
            except ValueError as exc:
                raise ConfigError("allowed_origins", str(exc)) from None
        object.__setattr__(self, "allowed_origins", tuple(dict.fromkeys(origins)))

    def node_name(self) -> str:
        """This daemon's name in its logs and metrics, and its node id with ``redis``:
        ``node_id``, else ``<host name>-<port>`` with ``redis`` (a random suffix for port 0,
        whose real port is not known yet: ask once and keep it), else the host's name."""
        if self.node_id is not None:
            return self.node_id
        if self.redis is None:
            return socket.gethostname()
        suffix = str(self.port) if self.port else secrets.token_hex(3)
        return f"{socket.gethostname()}-{suffix}"

    @property
    def db_path(self) -> Path | None:
        return None if self.memory else self.data_dir / DB_FILE

    @property
    def tls(self) -> bool:
        """Whether the daemon serves https and wss."""
        return self.tls_cert is not None


def settings() -> list[tuple[Field[Any], Setting]]:
    """Return every ``Config`` field with its ``Setting``, in declaration order."""
    return [(item, item.metadata["setting"]) for item in fields(Config)]


def ensure_admin_token(data_dir: Path) -> str:
    """Return the admin token kept in ``data_dir``, creating it (mode 0600) on first start."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    # An empty file left by hand is replaced too.
    return _write_token(path)


def rotate_admin_token(data_dir: Path) -> Path:
    """Replace the admin token in ``data_dir`` with a new one; return the file's path.

    Safe while a daemon runs on the directory: the file is replaced atomically and the
    daemon reads the new token at its next admin check (see AdminTokenFile). Raises
    OSError when the directory cannot be written.
    """
    if data_dir.exists() and not data_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(data_dir))
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / ADMIN_TOKEN_FILE
    _write_token(path)
    return path


def _write_token(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    write_secret_file(path, token + "\n")
    return token


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically.

    Written whole under a temporary name, then renamed: a crash never leaves an empty or
    partial secret behind, and a reader sees the old content or the new.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AdminTokenFile:
    """The admin token of a running daemon, re-read whenever its file is replaced.

    ``current`` costs one ``stat``: the file is read again only when its inode, size or
    modification time changed, so ``roomctl serve --rotate-admin-token`` (or an editor)
    takes effect at the next admin check, without a restart. A file that vanished or
    became empty keeps the last good token, with a warning: locking the administrator
    out by deleting a file would help no one.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ADMIN_TOKEN_FILE
        self._token = ensure_admin_token(data_dir)
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> str:
        """Return the admin token as the file holds it now."""
        seen = self._signature()
        if seen != self._seen:
            self._seen = seen
            token = read_admin_token(self.path.parent)
            if token is None:
                log.warning("%s is missing or empty; the previous admin token stays valid",
                            self.path)
            elif token != self._token:
                self._token = token
                log.info("admin token changed (%s was replaced)", self.path)
        return self._token


class DataDirInUse(OSError):
    """Another daemon holds the data directory's lock."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data directory's exclusive lock; return the open lock file (close to release).

    Two daemons on one database would hand out the same sequence numbers. Raises
    DataDirInUse, naming the holder's pid, when another process has the lock.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    lock = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise DataDirInUse(
            f"data directory {data_dir} is in use by another roomctl serve (pid {holder})"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def read_admin_token(data_dir: Path) -> str | None:
    """Return the admin token in ``data_dir``, or None when there is none to read."""
    try:
        return (data_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None
