"""What the daemon's per-connection loop needs from a connection: frames in, bytes out.

The serving loop (``Daemon.serve_connection``) never touches a socket. It asks a
``Transport`` for the next batch of complete messages (text as ``str``, binary as
``bytes``), decodes them and feeds the engine; what the engine sends goes, already framed,
to the transport's ``Sink`` through synchronous, ordered writes. A WebSocket on a socket of
this process (``daemon.net.websocket.WebSocket``) is one Transport. A connection whose
socket lives on another node (frames arriving over a bounded channel, output going back
over a link) is another, served by the same loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Closed", "Sink", "Transport"]


class Closed(Exception):
    """The connection ended: the peer closed it (``code``), broke the protocol, or vanished.

    ``code`` is the WebSocket close code the peer sent or was sent (1006 when the
    connection dropped without one).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Sink(Protocol):
    """Where a connection's output goes: complete frames, written in order, never blocking.

    ``write`` takes framed bytes (``daemon.net.wire.frame``) and returns at once; what the
    peer does not take yet waits in order. ``pending`` counts the writes waiting, which the
    daemon bounds (a peer that does not read is closed as a slow consumer). ``on_stall`` is
    called once when waiting output made no progress for ``stall_timeout`` seconds.
    """

    stall_timeout: float
    on_stall: Callable[[], None] | None

    @property
    def pending(self) -> int: ...

    @property
    def corked(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def cork(self) -> None: ...

    def uncork(self) -> None: ...

    def discard_pending(self) -> None: ...


class Transport(Protocol):
    """One client connection as the serving loop sees it."""

    @property
    def out(self) -> Sink: ...

    async def receive(self) -> list[str | bytes]:
        """Return the next complete messages, at least one, in order.

        Raises Closed once the connection has ended.
        """
        ...

    async def aclose(self, code: int, reason: str = "") -> None:
        """End the connection with ``code``; the caller bounds how long this may take."""
        ...

    def keepalive(self, now: float, interval: float, timeout: float) -> bool:
        """Probe the peer when due; return False when it stopped answering for ``timeout``."""
        ...
