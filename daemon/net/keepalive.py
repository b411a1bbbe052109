"""Idle detection: WebSocket pings that a dead peer cannot answer.

A TCP connection whose peer vanished (a laptop lid closed, a NAT entry expired) looks
open until something is written to it. Every ``interval`` seconds the daemon pings each
WebSocket; a peer that has not answered one ping within ``timeout`` seconds is closed.

No task and no timer per connection: one sweeper task (``Daemon.keepalive``) walks the
connections a few times per interval and asks each transport to step its ``Pings``, the
bookkeeping below; the WebSocket writes the ping into its ordered output and tells its
``Pings`` when the matching pong arrives (``daemon.net.websocket``).
"""

from __future__ import annotations

import itertools
import struct

__all__ = ["Pings"]

_payloads = itertools.count(1)


class Pings:
    """The ping bookkeeping of one connection: the ping in flight, and when the next is due."""

    __slots__ = ("_due", "_in_flight", "_interval", "_sent_at")

    def __init__(self, now: float, interval: float) -> None:
        self._interval = interval
        self._due = now + interval
        self._sent_at = 0.0
        self._in_flight: bytes | None = None

    def overdue(self, now: float, timeout: float) -> bool:
        """Return whether the ping in flight has waited ``timeout`` seconds for its pong."""
        return self._in_flight is not None and now - self._sent_at >= timeout

    def next_ping(self, now: float) -> bytes | None:
        """Return the payload of a ping to send now (and count it as sent), or None."""
        if self._in_flight is not None or now < self._due:
            return None
        payload = struct.pack("!Q", next(_payloads))
        self._in_flight = payload
        self._sent_at = now
        return payload

    def answered(self, payload: bytes) -> None:
        """Note a pong; the one answering the ping in flight makes the next due an interval
        after that ping was sent. Unsolicited pongs (allowed by RFC 6455) change nothing."""
        if payload == self._in_flight:
            self._in_flight = None
            self._due = self._sent_at + self._interval
