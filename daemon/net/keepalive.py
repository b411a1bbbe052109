"""Idle detection: WebSocket pings that a dead peer cannot answer.

A TCP connection whose peer vanished (a laptop lid closed, a NAT entry expired) looks
open until something is written to it. Every ``interval`` seconds the daemon pings each
WebSocket; a peer that has not answered one ping within ``timeout`` seconds is closed.

No task per connection: one sweeper task (``daemon.server``) walks the connections a few
times per interval and calls ``Pings.step`` on each. A ping is written straight into the
connection's ordered output (``daemon.wire.OutputStream``), and its payload is registered
in trio-websocket's table of pings in flight (``WebSocketConnection._pings``, private,
trio-websocket 0.12.x as pinned), whose reader task sets our event when the pong
arrives. ``WebSocketConnection.ping`` would do the same but waits for the pong, which
would take a task per connection.
"""

from __future__ import annotations

import itertools
import struct

import trio
import trio_websocket

from daemon.net import wire

__all__ = ["Pings", "ping_frame"]

_PING = 0x89  # FIN + ping opcode
_payloads = itertools.count(1)


def ping_frame(payload: bytes) -> bytes:
    """Return an unmasked server-to-client ping frame (``payload`` at most 125 bytes)."""
    if len(payload) > 125:
        raise ValueError("a control frame's payload is at most 125 bytes")
    return bytes((_PING, len(payload))) + payload


class Pings:
    """The ping bookkeeping of one WebSocket: the ping in flight, and when the next is due."""

    __slots__ = ("_answered", "_due", "_sent_at")

    def __init__(self, now: float, interval: float) -> None:
        self._due = now + interval
        self._sent_at = 0.0
        self._answered: trio.Event | None = None

    def step(self, ws: trio_websocket.WebSocketConnection, out: wire.OutputStream,
             now: float, *, interval: float, timeout: float) -> bool:
        """Ping when due; return False when the last ping went unanswered for ``timeout``."""
        answered = self._answered
        if answered is not None:
            if not answered.is_set():
                return now - self._sent_at < timeout
            self._answered = None
            self._due = self._sent_at + interval
        if now >= self._due:
            payload = struct.pack("!Q", next(_payloads))
            self._answered = trio.Event()
            ws._pings[payload] = self._answered
            out.write(ping_frame(payload))
            self._sent_at = now
        return True
