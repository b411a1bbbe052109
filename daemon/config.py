"""Daemon configuration and the files it keeps in its data directory."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from daemon.core.engine import DEFAULT_EMPTY_TIMEOUT
from protocol.limits import MAX_DISPLAY_NAME, MAX_FRAME_BYTES, MAX_MESSAGE_TEXT

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750
DB_FILE = "roomctl.db"
ADMIN_TOKEN_FILE = "admin-token"
LOCK_FILE = "lock"

log = logging.getLogger(__name__)


_PATH_FIELDS = ("data_dir", "tls_cert", "tls_key")


def default_data_dir() -> Path:
    """Return ``$XDG_STATE_HOME/roomctl``, or ``~/.local/state/roomctl`` without it."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "roomctl"


@dataclass(frozen=True)
class Config:
    """Everything ``serve`` needs; the CLI builds it from options and ``ROOMCTL_*`` variables.

    Path fields (``data_dir``, ``tls_cert``, ``tls_key``) also take a ``str`` (any
    ``os.PathLike``); they hold a ``Path`` once built.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    # Keep rooms and messages in memory; the data dir then holds only the admin token.
    memory: bool = False
    grace: float = 60.0  # seconds a dropped participant stays before it leaves
    auto_create: bool = True  # a hello to an unknown room creates it
    # A room created by a hello (not by create-room) that never held a message, a topic or
    # a pin is removed once it has had no session for this long; math.inf keeps it.
    empty_timeout: float = DEFAULT_EMPTY_TIMEOUT
    handshake_timeout: float = 10.0  # from TCP accept to a valid hello
    head_timeout: float = 10.0  # to receive an HTTP request head
    max_head_bytes: int = 16 * 1024
    max_frame_bytes: int = MAX_FRAME_BYTES
    outbound_queue: int = 2048  # frames waiting for one peer's socket before it counts as too slow
    send_timeout: float = 10.0  # pending output may make no progress this long before the cut
    close_timeout: float = 2.0  # for a connection's closing handshake
    max_bad_frames: int = 20  # bad frames tolerated per connection before it is closed (1008)
    shutdown_timeout: float = 5.0  # how long clients get to see the 1001 close on shutdown
    # Access (daemon.core.access): every room needs a join token; how many rooms and participants.
    require_tokens: bool = False
    max_rooms: int | None = 10_000
    max_participants: int | None = 100  # per room; a chat room may set a lower limit
    # TLS: serve https and wss on the port when both are set (daemon.net.tls).
    tls_cert: Path | None = None  # PEM certificate chain
    tls_key: Path | None = None  # PEM private key
    # Requests per connection (daemon.net.ratelimit); rate 0 turns the limit off. Connections
    # that presented the admin token are not limited: they can delete every room anyway.
    rate_limit: float = 20.0  # requests per second, sustained
    rate_burst: int = 200  # requests at once (a WebRTC mesh join sends a few dozen)
    max_rate_limited: int = 100  # refused requests within 10 s before the close (1008)
    # Connections open at once from one client address (loopback included); 0: no limit.
    max_connections_per_address: int = 64
    # Idle detection: a WebSocket ping every ping_interval seconds; no pong within
    # ping_timeout closes the connection (1011). ping_interval 0 sends no pings.
    ping_interval: float = 30.0
    ping_timeout: float = 20.0
    # Browser origins allowed to open WebSockets besides the daemon's own (daemon.net.origins).
    allowed_origins: tuple[str, ...] = ()
    # Chat limits, at most the protocol's (4000 and 64 characters).
    max_text: int = MAX_MESSAGE_TEXT
    max_name: int = MAX_DISPLAY_NAME

    def __post_init__(self) -> None:
        # A str here used to fail deep inside serve(); normalise every path field once.
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not self.empty_timeout >= 0:
            raise ValueError("empty_timeout must be 0 or more seconds (math.inf: never)")

    @property
    def db_path(self) -> Path | None:
        return None if self.memory else self.data_dir / DB_FILE

    @property
    def tls(self) -> bool:
        """Whether the daemon serves https and wss."""
        return self.tls_cert is not None


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
