"""Where a daemon is, and what it keeps where a CLI on the same machine may read it.

Facts the daemon and the CLI share beyond the frames themselves, declared once: the
default address and port, the URL paths of the endpoints, the default data directory
and the names of the files in it. Pure data (reading the environment is all it does).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from protocol.limits import ROOM_NAME_PATTERN

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

ROOMS_PATH = "/v1/rooms"  # GET: the public rooms; /v1/rooms/{room}: a room's WebSocket
ADMIN_PATH = "/v1/admin"  # the admin endpoint's WebSocket
ROOM_PATH = re.compile("^" + ROOMS_PATH + "/(" + ROOM_NAME_PATTERN.strip("^$") + ")$")
"""Matches a room's WebSocket path; group 1 is the room's name."""

DATA_DIR_NAME = "roomctl"  # under $XDG_STATE_HOME
ADMIN_TOKEN_FILE = "admin-token"  # the admin token, mode 0600
JOIN_SECRET_FILE = "join-secret"  # the join tokens' signing secret, mode 0600


def room_path(room: str) -> str:
    """Return the WebSocket path of ``room`` (``/v1/rooms/{room}``)."""
    return f"{ROOMS_PATH}/{quote(room, safe='')}"


def default_data_dir() -> Path:
    """Return ``$XDG_STATE_HOME/roomctl``, or ``~/.local/state/roomctl`` without it."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / DATA_DIR_NAME
