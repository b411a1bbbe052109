"""Outbound WebSocket framing done once per broadcast, written in batches.

trio-websocket frames each ``send_message`` through wsproto and writes it with its own
``send_all``: per frame, per recipient. Server-to-client frames are never masked, so a
broadcast's frame bytes are the same for every recipient: we build them once here and
each connection's writer joins whatever is queued into one ``send_all`` under the
connection's own send lock. We only ever send whole, unfragmented data frames, the one
kind of frame that leaves wsproto's state untouched; control frames (ping, pong, close)
stay with trio-websocket. This reaches into two private attributes of
``WebSocketConnection`` (``_stream`` and ``_stream_lock``), which is why pyproject pins
trio-websocket below 0.13; tests exercise it with real clients on every run.
"""

from __future__ import annotations

import struct

import trio
import trio_websocket

_TEXT = 0x81  # FIN + text opcode
_BINARY = 0x82  # FIN + binary opcode


def frame(payload: bytes, *, binary: bool) -> bytes:
    """Return one complete, unmasked server-to-client WebSocket data frame."""
    first = _BINARY if binary else _TEXT
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 65536:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


async def send_frames(ws: trio_websocket.WebSocketConnection, data: bytes) -> None:
    """Write already framed bytes to the connection in one ``send_all``.

    Raises trio_websocket.ConnectionClosed when the connection is closing or gone.
    """
    async with ws._stream_lock:
        if ws.closed is not None:
            raise trio_websocket.ConnectionClosed(ws.closed)
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise trio_websocket.ConnectionClosed(
                ws.closed or trio_websocket.CloseReason(1006, "connection lost")
            ) from None
