"""The server side of a WebSocket on wsproto: the upgrade's answer, then one connection's frames.

Theory of operation
-------------------
The HTTP front (``daemon.net.front``) reads the upgrade request with h11 and checks it here
(``Handshake.from_request``: version 13, a well-formed key, the offered subprotocols), so the
request head is parsed once. Its handler gets an ``Upgrade`` and either rejects it (an HTTP
status) or accepts it, which writes the 101 response and returns the ``WebSocket``.

From then on the socket belongs to the connection's one task. ``WebSocket.receive`` reads
what the socket has (one read of up to 64 KiB), feeds it to wsproto's ``Connection``, and
returns every complete message that read brought, as one batch: text as ``str`` (wsproto
has checked its UTF-8), binary as ``bytes``. Along the way it answers pings, notes pongs
for the keepalive sweeper (``daemon.net.keepalive``) and enforces the message size limit
(1009). No reader task, no channel: a frame costs one parse and no task switch, and a
read holding several frames costs one wake-up.

Output: data frames are framed once by ``wire.frame`` and written by the daemon through
``out`` (a ``wire.OutputStream``); control frames (pong, ping, close) come from wsproto's
``send``, which keeps its closing state right, and go through the same ordered stream.

Closing: a close frame from the peer is answered at once and ends ``receive`` with
``Closed`` (after the messages that came before it). A peer that breaks the protocol
(wsproto's parse failure) is sent a close frame with wsproto's code (1002; 1007 for text
that is not UTF-8) and is not waited for. ``aclose`` sends our close frame and waits for
the peer's; the caller bounds that wait.

This implements ``daemon.net.transport.Transport``.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Final, cast

import h11
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import generate_accept_token

from daemon.net import wire
from daemon.net.keepalive import Pings
from daemon.net.transport import Closed

__all__ = ["Handshake", "HandshakeError", "Upgrade", "WebSocket"]

WEBSOCKET_VERSION: Final = b"13"
_CHUNK: Final = 64 * 1024  # one read; everything it holds is parsed and handled as a batch
_OPEN: Final = ConnectionState.OPEN
_LOCAL_CLOSING: Final = ConnectionState.LOCAL_CLOSING
_REMOTE_CLOSING: Final = ConnectionState.REMOTE_CLOSING
_CLOSED: Final = ConnectionState.CLOSED


def _read_now(fd: int) -> bytes | None:
    """Return what a readable socket holds (b"" at its end or on an error), None if nothing."""
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""  # reset by the peer


class HandshakeError(Exception):
    """The upgrade request is not a valid WebSocket opening handshake.

    ``status`` and ``headers`` say what to answer (400, or 426 for an unsupported version).
    """

    def __init__(self, status: int, reason: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def _tokens(value: bytes) -> list[str]:
    return [t for t in (part.strip() for part in value.decode("latin-1").split(",")) if t]


class Handshake:
    """The parts of a checked upgrade request that the answer needs."""

    __slots__ = ("key", "subprotocols")

    def __init__(self, key: bytes, subprotocols: tuple[str, ...]) -> None:
        self.key = key
        self.subprotocols = subprotocols

    @classmethod
    def from_request(cls, event: h11.Request) -> Handshake:
        """Return the handshake of an upgrade request (RFC 6455, section 4.2.1).

        The front has checked the method and the Upgrade and Connection headers. Raises
        HandshakeError for HTTP/1.0, a missing or malformed key, or a version other than 13.
        """
        if event.http_version != b"1.1":
            raise HandshakeError(400, "WebSocket needs HTTP/1.1")
        key: bytes | None = None
        version: bytes | None = None
        offered: list[str] = []
        for name, value in event.headers:
            if name == b"sec-websocket-key":
                key = value.strip()
            elif name == b"sec-websocket-version":
                version = value.strip()
            elif name == b"sec-websocket-protocol":
                offered += _tokens(value)
        if version != WEBSOCKET_VERSION:
            raise HandshakeError(426, "unsupported WebSocket version; this server speaks 13",
                                 (("Sec-WebSocket-Version", "13"),))
        if key is None:
            raise HandshakeError(400, "missing Sec-WebSocket-Key")
        try:
            nonce = base64.b64decode(key, validate=True)
        except binascii.Error:
            nonce = b""
        if len(nonce) != 16:
            raise HandshakeError(400, "malformed Sec-WebSocket-Key")
        return cls(key, tuple(offered))

    def response(self, subprotocol: str | None) -> bytes:
        """Return the 101 response head accepting this handshake."""
        lines = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: ", generate_accept_token(self.key),
                 b"\r\n"]
        if subprotocol is not None:
            lines += [b"Sec-WebSocket-Protocol: ", subprotocol.encode("ascii"), b"\r\n"]
        lines.append(b"\r\n")
        return b"".join(lines)


_ANSWERED: Final = Handshake(b"", ())


class Upgrade:
    """A checked upgrade request that its handler must ``accept`` or ``reject`` (once)."""

    __slots__ = ("_handshake", "_max_message", "_out", "_received", "_stream", "rejection",
                 "websocket")

    def __init__(self, handshake: Handshake, stream: trio.abc.Stream, out: wire.OutputStream,
                 *, received: bytes = b"", max_message: int) -> None:
        self._handshake = handshake
        self._stream = stream
        self._out = out
        self._received = received  # bytes the client sent after the request head
        self._max_message = max_message
        self.websocket: WebSocket | None = None
        self.rejection: tuple[int, bytes] | None = None

    @property
    def proposed_subprotocols(self) -> tuple[str, ...]:
        return self._handshake.subprotocols

    @property
    def pending(self) -> bool:
        """Return whether the handler has neither accepted nor rejected the request yet."""
        return self.websocket is None and self.rejection is None

    def accept(self, subprotocol: str | None = None) -> WebSocket:
        """Answer 101 (choosing ``subprotocol``, one of those offered) and return the WebSocket.

        Raises RuntimeError when the request was already answered, ValueError for a
        subprotocol the client did not offer.
        """
        if not self.pending:
            raise RuntimeError("the upgrade request was already answered")
        if subprotocol is not None and subprotocol not in self.proposed_subprotocols:
            raise ValueError(f"the client did not offer subprotocol {subprotocol!r}")
        self._out.write(self._handshake.response(subprotocol))
        self._handshake = _ANSWERED  # its key and offers are not needed any more
        self.websocket = WebSocket(self._stream, self._out, fd=self._out.fd,
                                   subprotocol=subprotocol, max_message=self._max_message,
                                   received=self._received)
        self._received = b""
        return self.websocket

    def reject(self, status: int, body: bytes = b"") -> None:
        """Refuse the upgrade: the front answers ``status`` with ``body`` (JSON) and closes.

        Raises RuntimeError when the request was already answered.
        """
        if not self.pending:
            raise RuntimeError("the upgrade request was already answered")
        self.rejection = (status, body)


class WebSocket:
    """One accepted WebSocket: batches of messages in, framed output through ``out``.

    ``fd`` is the socket's descriptor for plain TCP, read directly after waiting for it to
    be readable; without one (TLS) the stream's ``receive_some`` is used.
    """

    __slots__ = ("_ended", "_fd", "_max_message", "_parts", "_parts_size", "_pings",
                 "_stream", "_wait_for_close", "_ws", "out", "subprotocol")

    def __init__(self, stream: trio.abc.Stream, out: wire.OutputStream, *, fd: int | None,
                 max_message: int, subprotocol: str | None = None, received: bytes = b"") -> None:
        self._stream = stream
        self._fd = fd
        self.out = out
        self.subprotocol = subprotocol
        self._max_message = max_message
        self._ws = Connection(ConnectionType.SERVER, trailing_data=received)
        self._parts: list[str | bytes] | None = None  # a fragmented message being assembled
        self._parts_size = 0
        # How the connection ended, once it has: (code, reason). Not the Closed exception
        # itself, whose traceback would hold this object's frames, and them this object: a
        # reference cycle that only the cyclic GC could free.
        self._ended: tuple[int, str] | None = None
        # Whether aclose waits for the peer's close frame: not once the peer broke the
        # protocol (its close would mean nothing), nor a second time.
        self._wait_for_close = True
        self._pings: Pings | None = None  # from the keepalive sweeper's first visit

    @property
    def closed(self) -> bool:
        """Return whether the connection has ended (a close frame or EOF, either way)."""
        return self._ended is not None

    # --- receiving -----------------------------------------------------------------------

    async def receive(self) -> list[str | bytes]:
        """Return every complete message the next read brings (at least one), in order.

        Raises Closed when the peer closed the connection, dropped it, broke the protocol,
        or sent a message over the size limit; the close frame that answers is queued.
        """
        while True:
            messages = self._handle_events()
            if messages:
                return messages
            del messages  # not held while waiting
            if self._ended is not None:
                raise Closed(*self._ended)
            fd = self._fd
            if fd is None:
                data: bytes | None = await self._read()
            else:
                # Waited for here rather than in _read: an idle connection waits here, and
                # every coroutine frame on its stack is memory it holds all that time.
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    data = b""
                else:
                    data = _read_now(fd)
                    if data is None:
                        continue  # a spurious wake-up
            if not data:
                self._ended = (CloseReason.ABNORMAL_CLOSURE, "the connection dropped")
                raise Closed(*self._ended)
            self._ws.receive_data(data)

    def _handle_events(self) -> list[str | bytes]:
        messages: list[str | bytes] = []
        if self._ended is not None:
            return messages
        ws = self._ws
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                assert isinstance(event, TextMessage | BytesMessage)
                # wsproto's binary payloads are bytes already: bytes() returns the same object.
                data: str | bytes = (event.data if isinstance(event, TextMessage)
                                     else bytes(event.data))
                if event.message_finished and self._parts is None:
                    if len(data) > self._max_message:
                        self._too_big()
                        break
                    messages.append(data)
                    continue
                if self._parts is None:
                    self._parts, self._parts_size = [], 0
                self._parts.append(data)
                self._parts_size += len(data)
                if self._parts_size > self._max_message:
                    self._too_big()
                    break
                if event.message_finished:
                    parts, self._parts = self._parts, None
                    if kind is TextMessage:
                        messages.append("".join(cast(list[str], parts)))
                    else:
                        messages.append(b"".join(cast(list[bytes], parts)))
            elif kind is Ping:
                assert isinstance(event, Ping)
                if ws.state is _OPEN:
                    self.out.write(bytes(ws.send(event.response())))
            elif kind is Pong:
                assert isinstance(event, Pong)
                if self._pings is not None:
                    self._pings.answered(bytes(event.payload))
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                self._closing(event)
                break
        return messages

    def _closing(self, event: CloseConnection) -> None:
        ws = self._ws
        if ws.state is _REMOTE_CLOSING:  # the peer's close: answer it with its code
            self.out.write(bytes(ws.send(event.response())))
        elif ws.state is _OPEN:  # wsproto could not parse what the peer sent
            self._wait_for_close = False
            self.out.write(bytes(ws.send(CloseConnection(code=event.code,
                                                         reason=event.reason))))
        # LOCAL_CLOSING -> CLOSED: the peer answered our close; nothing to send.
        self._ended = (int(event.code), event.reason or "")

    def _too_big(self) -> None:
        self._parts = None
        self.out.write(bytes(self._ws.send(CloseConnection(
            code=CloseReason.MESSAGE_TOO_BIG, reason=f"message over {self._max_message} bytes"))))
        self._ended = (CloseReason.MESSAGE_TOO_BIG, "message too big")

    async def _read(self) -> bytes:
        """Return the next bytes from the socket; b"" once it has closed or failed."""
        fd = self._fd
        if fd is None:
            try:
                return bytes(await self._stream.receive_some(_CHUNK))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        while True:
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                return b""
            data = _read_now(fd)
            if data is not None:
                return data

    # --- keepalive -------------------------------------------------------------------------

    def keepalive(self, now: float, interval: float, timeout: float) -> bool:
        """Ping when due; return False when the last ping went unanswered for ``timeout``."""
        if self._ws.state is not _OPEN:
            return True
        pings = self._pings
        if pings is None:
            self._pings = Pings(now, interval)
            return True
        if pings.overdue(now, timeout):
            return False
        payload = pings.next_ping(now)
        if payload is not None:
            self.out.write(bytes(self._ws.send(Ping(payload=payload))))
        return True

    # --- closing ---------------------------------------------------------------------------

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code``: send a close frame (unless one went out) and wait for the
        peer's, then for our output to be written. Idempotent; the caller bounds the wait."""
        ws = self._ws
        if ws.state is _OPEN:
            self.out.write(bytes(ws.send(CloseConnection(code=code, reason=reason))))
        if self._ended is None:
            self._ended = (code, reason)
        try:
            while ws.state is _LOCAL_CLOSING and self._wait_for_close:
                # Until the peer's close frame comes, what else arrives is dropped.
                data = await self._read()
                if not data:
                    break
                ws.receive_data(data)
                for event in ws.events():
                    if type(event) is CloseConnection:
                        if ws.state is not _CLOSED:  # a parse failure, not the peer's close
                            self._wait_for_close = False
                        break
        finally:
            self._wait_for_close = False
        await self.out.wait_send_all_might_not_block()
