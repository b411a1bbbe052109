"""A connection whose client is a coroutine of this daemon: how the HTTP API speaks to rooms.

The HTTP API serves every operation on a room as a short connection of its own, served
by the same loop as a WebSocket (``Daemon.serve_client``, so that with several nodes it
can be served by the room's owner): it says ``hello``, sends its requests and reads the
answers, as any client would. ``Loopback`` is both ends of that connection. The daemon
sees a ``daemon.net.transport.Transport``: ``receive`` hands it what the client sent,
and what the daemon writes (framed WebSocket messages, in order) goes to ``LoopbackSink``,
which takes the frames apart and decodes them for the client side: ``request`` waits for
the answer to one request (by ``ref``), ``next_event`` returns the other frames in order.

Bounds: what the client sends waits for the daemon's loop, which takes it at once; what
the daemon sends waits for the client in a queue whose length is the sink's ``pending``,
so a client that stops reading (an event stream whose HTTP peer is slow) is closed by the
daemon as a slow consumer past ``outbound_queue`` frames, as a WebSocket would be.
"""

from __future__ import annotations

import collections
import itertools
import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
import trio

from daemon.net.transport import Closed
from protocol import CORE_EVENTS, Codec, ProtocolError, WireFormat
from protocol.admin import ADMIN_EVENTS
from protocol.chat import CHAT_EVENTS
from protocol.messages import Event, Reply, Request

__all__ = ["Loopback", "LoopbackSink"]

_CLIENT_EVENTS: tuple[type[Event], ...] = (*CORE_EVENTS, *CHAT_EVENTS, *ADMIN_EVENTS)
# What a daemon may send in one frame is bounded by what it may build, not by the
# client's frame limit (a page of history is close to 64 KiB of JSON): 16 MiB, as the CLI.
_MAX_FRAME = 16 * 1024 * 1024
_CODEC = Codec(WireFormat.JSON, _CLIENT_EVENTS, max_frame_bytes=_MAX_FRAME)
_encode = msgspec.json.Encoder().encode
_OPCODE_TEXT, _OPCODE_BINARY = 0x1, 0x2

ReplyT = TypeVar("ReplyT", bound=Reply)


class LoopbackSink:
    """The daemon's output to a ``Loopback``: framed messages, decoded as they are written."""

    __slots__ = ("_buffer", "_on_frame", "on_stall", "queued", "stall_timeout")

    def __init__(self, on_frame: Callable[[Event], None]) -> None:
        self._on_frame = on_frame
        self._buffer = b""
        self.queued = 0  # frames decoded and not yet taken by the client
        self.stall_timeout = 10.0
        self.on_stall: Callable[[], None] | None = None

    @property
    def pending(self) -> int:
        return self.queued

    @property
    def corked(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        # A write is one framed message here, but a node forwarding for another may
        # hand over several at once: take every complete frame the bytes hold.
        buffer = self._buffer + data if self._buffer else data
        while True:
            frame = _unframe(buffer)
            if frame is None:
                break
            opcode, payload, used = frame
            buffer = buffer[used:]
            if opcode not in (_OPCODE_TEXT, _OPCODE_BINARY):
                continue
            try:
                event = _CODEC.decode(payload)
            except ProtocolError:
                continue  # an event type of an app this client does not know: not for it
            self.queued += 1
            self._on_frame(event)  # type: ignore[arg-type]
        self._buffer = buffer

    def cork(self) -> None:
        pass  # every frame is handed over as it comes; there is no socket to spare writes

    def uncork(self) -> None:
        pass

    def discard_pending(self) -> None:
        pass


def _unframe(data: bytes) -> tuple[int, bytes, int] | None:
    """Return (opcode, payload, bytes used) of the unmasked frame ``data`` starts with, or
    None when it does not hold a whole one yet."""
    if len(data) < 2:
        return None
    opcode, size = data[0] & 0x0F, data[1] & 0x7F
    start = 2
    if size == 126:
        if len(data) < 4:
            return None
        (size,), start = struct.unpack_from("!H", data, 2), 4
    elif size == 127:
        if len(data) < 10:
            return None
        (size,), start = struct.unpack_from("!Q", data, 2), 10
    end = start + size
    if len(data) < end:
        return None
    return opcode, data[start:end], end


class Loopback:
    """An in-process client connection: the daemon's ``Transport``, and the client's API.

    The client side (``send``, ``request``, ``next_event``, ``close``) is used by one
    task; the daemon's side (``receive``, ``aclose``, ``out``) by the serving loop.
    """

    _refs = itertools.count(1)

    def __init__(self) -> None:
        self.out = LoopbackSink(self._arrived)
        self._inbox: list[bytes] = []  # requests for the daemon, not yet received
        self._inbox_ready = trio.Event()
        self._replies: dict[str, Reply] = {}
        self._waiting: dict[str, trio.Event] = {}
        self._events: collections.deque[Event] = collections.deque()
        self._event_ready = trio.Event()
        self._hung_up = False  # the client side closed
        self.closed: Closed | None = None  # the daemon closed it: with what code

    # --- the daemon's side (Transport) -----------------------------------------------------

    async def receive(self) -> list[str | bytes]:
        while not self._inbox:
            if self._hung_up or self.closed is not None:
                raise Closed(1000 if self.closed is None else self.closed.code)
            self._inbox_ready = trio.Event()
            await self._inbox_ready.wait()
        batch: list[str | bytes] = list(self._inbox)
        self._inbox.clear()
        return batch

    async def aclose(self, code: int, reason: str = "") -> None:
        await trio.lowlevel.checkpoint()
        self._ended(Closed(code, reason))

    def keepalive(self, now: float, interval: float, timeout: float) -> bool:
        return True  # the client is this process: it cannot vanish without a word

    def _arrived(self, frame: Event) -> None:
        ref = frame.ref if isinstance(frame, Reply) else None
        if ref is not None and ref in self._waiting:
            self.out.queued -= 1
            self._replies[ref] = frame  # type: ignore[assignment]
            self._waiting.pop(ref).set()
            return
        self._events.append(frame)
        self._event_ready.set()

    def _ended(self, closed: Closed) -> None:
        if self.closed is None:
            self.closed = closed
        self._inbox_ready.set()
        self._event_ready.set()
        for waiting in self._waiting.values():
            waiting.set()

    # --- the client's side -----------------------------------------------------------------

    def next_ref(self) -> str:
        return f"h{next(self._refs)}"

    def send(self, *frames: Request) -> None:
        """Queue ``frames`` for the daemon (it gets them together, in one batch)."""
        if self._hung_up:
            raise Closed(1000, "closed by the client")
        self._inbox.extend(_encode(frame) for frame in frames)
        self._inbox_ready.set()

    async def request(self, frame: Request, expect: type[ReplyT] | None = None) -> Reply:
        """Send ``frame`` (with a ``ref``) and return the answer to it.

        Frames that come meanwhile wait for ``next_event``. Raises Closed when the daemon
        closed the connection first. ``expect`` only types the result.
        """
        ref = frame.ref
        assert ref is not None, "a request needs a ref to be answered"
        waiting = self._waiting[ref] = trio.Event()
        self.send(frame)
        await self.wait_for(ref, waiting)
        return self._replies.pop(ref)

    def expect(self, *refs: str) -> dict[str, trio.Event]:
        """Register ``refs`` as awaited before sending them; return their events."""
        made = {ref: trio.Event() for ref in refs}
        self._waiting.update(made)
        return made

    async def wait_for(self, ref: str, waiting: trio.Event) -> None:
        """Wait until the answer to ``ref`` came; raise Closed if the daemon closed first."""
        await waiting.wait()
        if ref not in self._replies:
            self._waiting.pop(ref, None)
            assert self.closed is not None
            raise self.closed

    def answer(self, ref: str) -> Reply:
        """Take the answer to ``ref`` (after ``wait_for``)."""
        return self._replies.pop(ref)

    async def next_event(self) -> Event:
        """Return the next frame that answers none of this client's waiting requests.

        Raises Closed once the daemon has closed the connection and every frame is taken.
        """
        while not self._events:
            if self.closed is not None:
                raise self.closed
            self._event_ready = trio.Event()
            await self._event_ready.wait()
        self.out.queued -= 1
        return self._events.popleft()

    def pending_events(self) -> Sequence[Any]:
        """The frames waiting for ``next_event``, oldest first (read only)."""
        return tuple(self._events)

    def close(self) -> None:
        """The client hangs up: the daemon's next ``receive`` ends the connection (1000)."""
        self._hung_up = True
        self._inbox_ready.set()
