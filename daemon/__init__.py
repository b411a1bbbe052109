"""roomctl's signaling daemon: rooms, sessions, the WebRTC relay, chat, on one trio port.

Embed it in a trio program with ``await nursery.start(daemon.serve, config, [apps...])``.
The engine, apps and config import no I/O framework; ``serve`` (and with it trio) is
imported on first use, so ``import daemon.core.engine`` stays sans-IO.
"""

from typing import TYPE_CHECKING, Any

from daemon.apps.api import App, Context, handles
from daemon.apps.chat import ChatApp
from daemon.config import Config

if TYPE_CHECKING:
    from daemon.server import VERSION, serve

__all__ = ["VERSION", "App", "ChatApp", "Config", "Context", "handles", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("serve", "VERSION"):
        from daemon import server

        return getattr(server, name)
    raise AttributeError(f"module 'daemon' has no attribute {name!r}")
