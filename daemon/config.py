"""Daemon configuration and the files it keeps in its data directory."""

from __future__ import annotations

import fcntl
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from protocol.limits import MAX_FRAME_BYTES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750
DB_FILE = "roomctl.db"
ADMIN_TOKEN_FILE = "admin-token"
LOCK_FILE = "lock"


def default_data_dir() -> Path:
    """Return ``$XDG_STATE_HOME/roomctl``, or ``~/.local/state/roomctl`` without it."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "roomctl"


@dataclass(frozen=True)
class Config:
    """Everything ``serve`` needs; the CLI builds it from options and ``ROOMCTL_*`` variables."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    # Keep rooms and messages in memory; the data dir then holds only the admin token.
    memory: bool = False
    grace: float = 60.0  # seconds a dropped participant stays before it leaves
    auto_create: bool = True  # a hello to an unknown room creates it
    handshake_timeout: float = 10.0  # from TCP accept to a valid hello
    head_timeout: float = 10.0  # to receive an HTTP request head
    max_head_bytes: int = 16 * 1024
    max_frame_bytes: int = MAX_FRAME_BYTES
    outbound_queue: int = 2048  # frames waiting for one peer's socket before it counts as too slow
    send_timeout: float = 10.0  # pending output may make no progress this long before the cut
    close_timeout: float = 2.0  # for a connection's closing handshake
    max_bad_frames: int = 20  # bad frames tolerated per connection before it is closed (1008)
    shutdown_timeout: float = 5.0  # how long clients get to see the 1001 close on shutdown

    @property
    def db_path(self) -> Path | None:
        return None if self.memory else self.data_dir / DB_FILE


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
    # Written whole under a temporary name, then renamed: a crash never leaves an empty
    # or partial token behind (and an empty one left by hand is replaced).
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{ADMIN_TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return token


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
