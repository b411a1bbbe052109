# Theory of operation
# -------------------
# The daemon serves plain HTTP (health checks, REST calls, the web page) and WebSocket
# signaling on the same port, so we own the accept loop and the one parse of every request
# head:
#
#   serve_tcp -> handle_connection(stream)
#                  [with tls: the first bytes must start a TLS handshake (plain HTTP gets a
#                   400 saying so); the stream is wrapped in trio.SSLStream and the
#                   handshake runs within the same head_timeout budget as the head itself]
#                  h11 parses the request head (bounded size, bounded time)
#                  |- plain request: read the (bounded) body, call on_http, write an HTTP/1.1
#                  |  response, loop for keep-alive
#                  `- GET + Upgrade: websocket: check the opening handshake from the head h11
#                     already parsed (daemon.net.websocket.Handshake; a bad one gets 400 or
#                     426 here), drop h11 and its buffers, and call on_websocket(upgrade,
#                     http_request). The handler rejects (an HTTP status and a JSON body,
#                     then close) or accepts (101; wsproto's Connection takes the socket
#                     over, with whatever bytes followed the head) and returns the
#                     coroutine that serves the connection, in this same task.
#
# Hypercorn's protocol/h11.py and protocol/ws_stream.py split HTTP and WebSocket the same
# way. Every byte a WebSocket writes goes through one wire.OutputStream.
#
# Failure containment: every connection runs in its own task, and everything except
# cancellation is caught here and turned into an HTTP 500 or a WebSocket close 1011 for that
# one connection, so a handler bug cannot take the listener down.

from __future__ import annotations

import errno
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import msgspec
import trio

from daemon.net import wire
from daemon.net.transport import Closed
from daemon.net.websocket import Handshake, HandshakeError, Upgrade
from protocol.errors import ErrorCode
from protocol.http import CODE_FOR_STATUS, ErrorBody, ErrorDetail

__all__ = [
    "DEFAULT_LIMITS",
    "FrontLimits",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "ResponseChannel",
    "Upgrade",
    "WebSocketHandler",
    "error_body",
    "handle_connection",
    "peer_of",
    "refuse_connection",
    "serve_tcp",
]

logger: Final = logging.getLogger(__name__)

# Reads larger than the head limit would only let h11's buffer overshoot it further.
_RECEIVE_CHUNK: Final = 16 * 1024
# Bounds every "be polite before hanging up" step so a dead peer cannot pin a task.
_CLOSE_TIMEOUT: Final = 2.0
# See _Connection._linger for why we drain before closing after an error.
_LINGER_SECONDS: Final = 1.0
_LINGER_BYTES: Final = 64 * 1024
_PORT_RETRIES: Final = 5
_NO_BODY_STATUSES: Final = frozenset({204, 304})
# Framing is ours to decide; a handler setting these could desynchronise the connection.
_RESERVED_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})
_NO_PEER: Final = ("", 0)
_TLS_HANDSHAKE_RECORD: Final = 0x16  # the first byte of every TLS ClientHello
# accept(2) failures that mean "overloaded, try again" (as trio.serve_listeners has them).
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                            errno.ENOBUFS})
_ACCEPT_RETRY: Final = 0.1
_TASK_NAME: Final = "daemon.net.front: a connection"
_encode_json = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class HttpRequest:
    """One parsed request head (plus body for plain requests)."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    peer: tuple[str, int]
    body: bytes


@dataclass(frozen=True)
class HttpResponse:
    """What an HTTP handler returns; framing headers are added by the front.

    With ``stream`` the rest is ignored: the front hands the exchange to ``stream``, which
    answers through the ``ResponseChannel`` it gets, with a whole response or a head and
    then a body written as it comes (Server-Sent Events).
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    stream: Callable[[ResponseChannel], Awaitable[None]] | None = None


class ResponseChannel:
    """How a streaming handler answers: ``respond`` with a whole response (an error found
    before the stream began), or ``start`` a streamed one and ``send`` its body.

    While a stream runs, the front watches the client's side: when it hangs up, the
    handler is cancelled. ``send`` raises trio.BrokenResourceError when the client is
    gone or takes longer than the head timeout to accept the bytes.
    """

    def __init__(self, connection: _Connection, nursery: trio.Nursery) -> None:
        self._connection = connection
        self._nursery = nursery
        self.state: str = "new"  # then "responded", or "started" and then "finished"

    async def respond(self, response: HttpResponse) -> None:
        """Send ``response`` whole; the connection may then serve another request."""
        if self.state != "new":
            raise RuntimeError("this request was answered already")
        self.state = "responded"
        head, body = self._connection._render(response, close=False)
        await self._connection._send(head, h11.Data(data=body), h11.EndOfMessage())

    async def start(self, status: int, content_type: str,
                    headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Send the head of a streamed response (its body's length unknown: chunked)."""
        if self.state != "new":
            raise RuntimeError("this request was answered already")
        self.state = "started"
        head, _ = self._connection._render(
            HttpResponse(status, b"", content_type=content_type, headers=headers),
            close=True, streamed=True)
        await self._connection._send(head)
        self._nursery.start_soon(self._connection._watch_hangup, self._nursery.cancel_scope)

    async def send(self, data: bytes) -> None:
        """Send part of a started response's body."""
        if self.state != "started":
            raise RuntimeError("start the response first")
        try:
            await self._connection._send(h11.Data(data=data))
        except _Hangup:
            raise trio.BrokenResourceError("the client does not read") from None

    async def finish(self, data: bytes = b"") -> None:
        """Send the last of a started response's body and end it (the last chunk), so the
        client sees a whole response; the front closes the connection after. Without it
        the front ends the response once the handler returns."""
        if self.state != "started":
            raise RuntimeError("start the response first")
        self.state = "finished"
        try:
            await self._connection._send(*((h11.Data(data=data),) if data else ()),
                                         h11.EndOfMessage())
        except _Hangup:
            raise trio.BrokenResourceError("the client does not read") from None


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
WebSocketHandler = Callable[[Upgrade, HttpRequest], Awaitable[None] | None]
"""Decides on a checked upgrade request: it must ``accept`` or ``reject`` the ``Upgrade``
and, having accepted, return the coroutine that serves the connection.

Synchronous on purpose: the decision needs no I/O, and the serving coroutine then runs
without the handler's frame beneath it for the whole session."""


@dataclass(frozen=True)
class FrontLimits:
    """Per-connection resource bounds.

    ``head_timeout`` also bounds receiving a plain request's body and writing a response,
    so a client that trickles bytes or never reads cannot hold a task forever.
    """

    max_head_bytes: int = 16 * 1024
    head_timeout: float = 10.0
    max_body_bytes: int = 64 * 1024
    keepalive_timeout: float = 30.0
    max_message_size: int = 64 * 1024  # one WebSocket message, after reassembly (1009 above)


DEFAULT_LIMITS: Final = FrontLimits()


class _Reject(Exception):
    """Answer the current request with an error status, then close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Hangup(Exception):
    """Drop the connection without a response (e.g. the peer stopped reading)."""


class _PrefixedStream(trio.abc.Stream):
    """Replays bytes we already read from ``inner`` before reading from it again.

    The TLS handshake must see the bytes read to tell TLS from plain HTTP. Once the
    prefix is used up, the hot methods are rebound on the instance to the inner stream's
    bound methods, so they pay no extra coroutine layer per call.
    """

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix
        self.send_all = inner.send_all  # type: ignore[method-assign]
        self.wait_send_all_might_not_block = (  # type: ignore[method-assign]
            inner.wait_send_all_might_not_block
        )
        if not prefix:
            self.receive_some = inner.receive_some  # type: ignore[method-assign]

    # The class-level methods exist to satisfy trio.abc.Stream; the instance attributes
    # assigned in __init__ shadow them.
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        prefix = self._prefix
        if not prefix:
            return await self._inner.receive_some(max_bytes)
        # Stream.receive_some must be a checkpoint even when it has data ready.
        await trio.lowlevel.checkpoint()
        if max_bytes is None or max_bytes >= len(prefix):
            chunk, self._prefix = prefix, b""
        else:
            chunk, self._prefix = prefix[:max_bytes], prefix[max_bytes:]
        if not self._prefix:
            self.receive_some = self._inner.receive_some  # type: ignore[method-assign]
        return chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _fd_of(stream: trio.abc.Stream) -> int | None:
    """Return the socket's file descriptor for a plain TCP stream, None for anything else."""
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    return None


def peer_of(stream: trio.abc.Stream) -> tuple[str, int]:
    """Return the remote (address, port) of a TCP stream, or ("", 0) when unknown."""
    # Only bare SocketStream/SSLStream have a socket; anything else (or a socket that is
    # already disconnected) yields the "unknown" marker instead of an error.
    sock = getattr(stream, "socket", None)
    if sock is None:
        sock = getattr(getattr(stream, "transport_stream", None), "socket", None)
    if sock is None:
        return _NO_PEER
    try:
        address = sock.getpeername()
    except OSError:
        return _NO_PEER
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return _NO_PEER


def _decode_headers(event: h11.Request) -> dict[str, str]:
    # latin-1 is lossless for whatever bytes h11 accepted, so nothing is silently dropped.
    result: dict[str, str] = {}
    for raw_name, raw_value in event.headers:
        name = raw_name.decode("ascii")
        value = raw_value.decode("latin-1")
        result[name] = f"{result[name]}, {value}" if name in result else value
    return result


def _split_target(target: str) -> tuple[str, str]:
    # urlsplit would read an origin-form target such as "//a/b" as a network location,
    # so only absolute-form targets go through it.
    if target.startswith("/") or "://" not in target:
        path, _, query = target.partition("?")
        return path, query
    parts = urlsplit(target)
    return parts.path or "/", parts.query


def _build_request(event: h11.Request, peer: tuple[str, int], body: bytes) -> HttpRequest:
    target = event.target.decode("ascii", errors="replace")
    raw_path, raw_query = _split_target(target)
    return HttpRequest(
        method=event.method.decode("ascii", errors="replace"),
        target=target,
        path=unquote(raw_path, errors="replace"),
        query=dict(parse_qsl(raw_query, keep_blank_values=True)),
        headers=_decode_headers(event),
        peer=peer,
        body=body,
    )


def _head_size(event: h11.Request) -> int:
    # h11 only enforces its size limit while a head is incomplete; a complete oversized
    # head that arrived in one read would slip through, so measure it again.
    size = len(event.method) + len(event.target) + len(event.http_version) + 9
    for name, value in event.headers.raw_items():
        size += len(name) + len(value) + 4
    return size + 2


def _header_tokens(event: h11.Request, name: bytes) -> set[bytes]:
    return {
        token.strip().lower()
        for header, value in event.headers
        if header == name
        for token in value.split(b",")
    }


def _is_websocket_upgrade(event: h11.Request) -> bool:
    return (
        event.method == b"GET"
        and b"websocket" in _header_tokens(event, b"upgrade")
        and b"upgrade" in _header_tokens(event, b"connection")
    )


def _reason(status: int) -> bytes:
    # h11 would send an empty reason phrase; legal, but unfriendly in curl -v and logs.
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def error_body(status: int, message: str, code: ErrorCode | None = None) -> bytes:
    """Return the JSON body of an error answer: ``{"error": {"code", "message"}}``, as
    the HTTP API's (``protocol.http.ErrorBody``); ``code`` defaults to the status's."""
    if code is None:
        code = CODE_FOR_STATUS.get(status, ErrorCode.BAD_REQUEST if status < 500
                                   else ErrorCode.INTERNAL)
    return _encode_json(ErrorBody(error=ErrorDetail(code=code, message=message))) + b"\n"


def _response(status: int, body: bytes, *, content_type: str = "application/json",
              headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """Return a complete HTTP/1.1 response that closes the connection."""
    extra = b"".join(b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1"))
                     for name, value in headers)
    return (b"HTTP/1.1 %d %s\r\nServer: roomctl\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n%sConnection: close\r\n\r\n%s"
            % (status, _reason(status), content_type.encode("latin-1"), len(body), extra, body))


class _Connection:
    """State for one TCP connection; see the module comment for the flow."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        on_http: HttpHandler,
        limits: FrontLimits,
        peer: tuple[str, int],
        started: float,
    ) -> None:
        self._stream = stream
        self._on_http = on_http
        self._limits = limits
        self._peer = peer
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self._started = started  # accept time: the TLS handshake shares the head's budget
        self._head_only = False

    async def run(self) -> _WebSocketRequest | None:
        """Serve plain HTTP requests; return a checked WebSocket upgrade when one comes."""
        try:
            return await self._serve()
        except _Reject as exc:
            await self._fail(exc.status, exc.reason)
        except HandshakeError as exc:
            await self._fail(exc.status, exc.reason, exc.headers)
        except h11.RemoteProtocolError as exc:
            await self._fail(exc.error_status_hint, str(exc))
        return None

    async def _serve(self) -> _WebSocketRequest | None:
        first = True
        while True:
            event = await self._read_head(first)
            if event is None:
                return None
            first = False
            self._head_only = event.method == b"HEAD"
            if _head_size(event) > self._limits.max_head_bytes:
                raise _Reject(431, "request header fields too large")
            if _is_websocket_upgrade(event):
                return self._websocket_request(event)
            if not await self._serve_http(event):
                return None
            self._h11.start_next_cycle()

    async def _next_event(self) -> object:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive()

    async def _receive(self) -> None:
        data = await self._stream.receive_some(_RECEIVE_CHUNK)
        # h11 is typed for bytes; SocketStream already returns bytes, so this never copies.
        self._h11.receive_data(data if isinstance(data, bytes) else bytes(data))

    async def _read_head(self, first: bool) -> h11.Request | None:
        if first:
            # The first head gets one budget from accept time; idling is not a separate
            # allowance, or a slowloris client could take twice the budget.
            head_deadline = self._started + self._limits.head_timeout
        else:
            if not self._h11.trailing_data[0]:
                with trio.move_on_after(self._limits.keepalive_timeout) as idle:
                    # EOF arrives as b"" and makes the next h11 event ConnectionClosed.
                    await self._receive()
                if idle.cancelled_caught:
                    return None
            head_deadline = trio.current_time() + self._limits.head_timeout
        with trio.move_on_at(head_deadline) as scope:
            event = await self._next_event()
        if scope.cancelled_caught:
            if self._h11.trailing_data[0]:
                raise _Reject(408, "request head timeout")
            return None  # never said anything: hang up quietly
        return event if isinstance(event, h11.Request) else None

    async def _read_body(self, event: h11.Request) -> bytes:
        limit = self._limits.max_body_bytes
        declared = dict(event.headers).get(b"content-length")
        if declared is not None and int(declared) > limit:
            raise _Reject(413, "request body too large")
        if self._h11.they_are_waiting_for_100_continue:
            await self._send(
                h11.InformationalResponse(status_code=100, headers=[], reason=_reason(100))
            )
        body = bytearray()
        with trio.move_on_after(self._limits.head_timeout) as scope:
            while True:
                part = await self._next_event()
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > limit:
                        raise _Reject(413, "request body too large")
                elif isinstance(part, h11.EndOfMessage):
                    return bytes(body)
                else:
                    raise _Hangup
        assert scope.cancelled_caught
        raise _Reject(408, "request body timeout")

    async def _serve_http(self, event: h11.Request) -> bool:
        """Answer one plain request; return whether the connection may be reused."""
        request = _build_request(event, self._peer, await self._read_body(event))
        try:
            response = await self._on_http(request)
            if response.stream is not None:
                return await self._serve_stream(request, response.stream)
            h11_response, body = self._render(response, close=False)
        except Exception:
            logger.exception("HTTP handler failed: %s %s from %s", request.method,
                             request.path, request.peer)
            h11_response, body = self._render(
                HttpResponse(500, error_body(500, "internal server error")), close=True
            )
        await self._send(h11_response, h11.Data(data=body), h11.EndOfMessage())
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def _serve_stream(self, request: HttpRequest,
                            stream: Callable[[ResponseChannel], Awaitable[None]]) -> bool:
        """Let ``stream`` answer; return whether the connection may be reused (only after
        a whole response)."""
        failed = False
        async with trio.open_nursery() as nursery:
            channel = ResponseChannel(self, nursery)
            try:
                await stream(channel)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                logger.debug("stream to %s ended: the client went away", request.peer)
            except Exception:
                logger.exception("HTTP stream failed: %s %s from %s", request.method,
                                 request.path, request.peer)
                failed = True
            nursery.cancel_scope.cancel()  # the hang-up watcher
        if channel.state == "new":
            if not failed:
                logger.error("HTTP stream handler for %s did not answer", request.path)
            head, body = self._render(HttpResponse(500, error_body(500, "internal server "
                                                                   "error")), close=True)
            await self._send(head, h11.Data(data=body), h11.EndOfMessage())
            return False
        if channel.state == "finished":
            return False
        if channel.state == "started":
            with trio.move_on_after(_CLOSE_TIMEOUT):
                try:
                    await self._send(h11.EndOfMessage())
                except (trio.BrokenResourceError, trio.ClosedResourceError, _Hangup,
                        h11.LocalProtocolError):
                    pass
            return False
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def _watch_hangup(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` when the client closes its side (a streamed response runs)."""
        try:
            while await self._stream.receive_some(_RECEIVE_CHUNK):
                pass  # a request behind a stream is not served: the connection closes after
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def _render(self, response: HttpResponse, *, close: bool,
                streamed: bool = False) -> tuple[h11.Response, bytes]:
        # Everything that can reject a handler's response (types, status range, header
        # encoding, h11's header validation) happens here, before any byte is written, so
        # a bad response can still be replaced by a 500.
        if not isinstance(response, HttpResponse):
            raise TypeError(f"HTTP handler returned {type(response).__name__}, not HttpResponse")
        status = response.status
        if not 200 <= status <= 599:
            raise ValueError(f"HTTP handler returned status {status}")
        has_body = status not in _NO_BODY_STATUSES
        body = response.body if has_body else b""
        headers: dict[str, tuple[bytes, bytes]] = {
            "server": (b"Server", b"roomctl"),
            "date": (b"Date", formatdate(usegmt=True).encode("ascii")),
        }
        if has_body:
            if not streamed:  # (h11 frames a body of unknown length: chunked, or close)
                headers["content-length"] = (b"Content-Length", b"%d" % len(body))
            if response.content_type:
                headers["content-type"] = (
                    b"Content-Type",
                    response.content_type.encode("latin-1"),
                )
        extra: list[tuple[bytes, bytes]] = []
        for name, value in response.headers:
            key = name.lower()
            if key in _RESERVED_HEADERS:
                continue
            pair = (name.encode("ascii"), value.encode("latin-1"))
            if key in headers:
                headers[key] = pair
            else:
                extra.append(pair)
        header_list = [*headers.values(), *extra]
        if close:
            header_list.append((b"Connection", b"close"))
        return h11.Response(status_code=status, headers=header_list, reason=_reason(status)), body

    async def _send(self, *events: h11.Event) -> None:
        chunks: list[bytes] = []
        for event in events:
            if isinstance(event, h11.Data) and (self._head_only or not event.data):
                continue
            data = self._h11.send(event)
            if data:
                chunks.append(data)
        with trio.move_on_after(self._limits.head_timeout) as scope:
            await self._stream.send_all(b"".join(chunks))
        if scope.cancelled_caught:
            raise _Hangup

    async def _fail(self, status: int, reason: str,
                    headers: tuple[tuple[str, str], ...] = ()) -> None:
        logger.debug("rejecting request from %s: %d %s", self._peer, status, reason)
        # Mid-response there is no way to switch to an error; just close.
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response, body = self._render(HttpResponse(status, error_body(status, reason),
                                                   headers=headers),
                                      close=True)
        await self._send(response, h11.Data(data=body), h11.EndOfMessage())
        await self._linger()

    async def _linger(self) -> None:
        await _linger(self._stream)

    def _websocket_request(self, event: h11.Request) -> _WebSocketRequest:
        """Check an upgrade request; return what serving it needs (or raise _Reject)."""
        # An upgrade request has no body, so h11 yields EndOfMessage without any I/O;
        # anything else means a body we refuse to forward into the WebSocket stream.
        if not isinstance(self._h11.next_event(), h11.EndOfMessage):
            raise _Reject(400, "upgrade request must not have a body")
        # A Host that is not a valid name is refused before any handler has to cope with it.
        for name, value in event.headers:
            if name == b"host":
                try:
                    value.decode("idna")
                except UnicodeError:
                    raise _Reject(400, "invalid Host header") from None
        handshake = Handshake.from_request(event)  # HandshakeError: answered by run()
        # Bytes the client sent right behind the head (its first frames) belong to wsproto.
        received, _ = self._h11.trailing_data
        return _WebSocketRequest(handshake, _build_request(event, self._peer, b""),
                                 bytes(received))


@dataclass(frozen=True, slots=True)
class _WebSocketRequest:
    handshake: Handshake
    request: HttpRequest
    received: bytes


async def _end_websocket(stream: trio.abc.Stream, upgrade: Upgrade, output: wire.OutputStream,
                         path: str, failed: bool) -> None:
    """Close what the handler left open: an unanswered upgrade gets a 500, a rejected one
    its status, an open WebSocket a close frame (1011 if the handler failed)."""
    with trio.move_on_after(_CLOSE_TIMEOUT):
        if upgrade.pending:
            if not failed:
                logger.error("websocket handler for %s neither accepted nor rejected", path)
            upgrade.reject(500, error_body(500, "internal server error"))
        if upgrade.rejection is not None:
            status, body = upgrade.rejection
            output.write(_response(status, body))
            await output.wait_send_all_might_not_block()
            await _linger(stream)
        elif upgrade.websocket is not None:
            # Idempotent when the peer or the handler already closed it.
            await upgrade.websocket.aclose(1011 if failed else 1000)


async def _linger(stream: trio.abc.Stream) -> None:
    # Closing a socket that still has unread input makes the kernel send RST, which can
    # destroy the error response before the client reads it. Half-close, then drain
    # for a bounded time so the client sees our answer and then EOF.
    try:
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        drained = 0
        with trio.move_on_after(_LINGER_SECONDS):
            while drained < _LINGER_BYTES:
                data = await stream.receive_some(_RECEIVE_CHUNK)
                if not data:
                    return
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _canned_response(status: int, reason: str) -> bytes:
    return _response(status, error_body(status, reason))


async def _start_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext, deadline: float, peer: tuple[str, int]
) -> trio.abc.Stream | None:
    """Return the stream wrapped in TLS once the handshake is done; None if it failed.

    Plain HTTP on the TLS port gets a 400 saying so, instead of the TLS alert a browser
    or curl would show as gibberish.
    """
    with trio.move_on_at(deadline):
        first = await stream.receive_some(_RECEIVE_CHUNK)
        if not first:
            return None
        if first[0] != _TLS_HANDSHAKE_RECORD:
            logger.debug("plain text on the TLS port from %s", peer)
            if first[:1].isalpha():
                await stream.send_all(_canned_response(
                    400, "this port speaks TLS: use https:// or wss://"))
                await _linger(stream)
            return None
        secured = trio.SSLStream(_PrefixedStream(stream, bytes(first)), context,
                                 server_side=True, https_compatible=True)
        try:
            await secured.do_handshake()
        except trio.BrokenResourceError as exc:
            logger.debug("TLS handshake with %s failed: %s", peer, exc.__cause__ or exc)
            return None
        return secured
    logger.debug("TLS handshake with %s timed out", peer)
    return None


async def refuse_connection(stream: trio.abc.Stream, status: int, reason: str, *,
                            tls: bool = False) -> None:
    """Close a connection we will not serve, at once; plain HTTP first gets ``status``.

    No request is read and no TLS handshake is made (either would be work for a client
    we are refusing): the response is written if the socket takes it immediately, and a
    client that has already sent its request may see a reset instead.
    """
    try:
        if not tls:
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await stream.send_all(_canned_response(status, reason))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await stream.aclose()


async def handle_connection(
    stream: trio.abc.Stream,
    *,
    on_http: HttpHandler,
    on_websocket: WebSocketHandler,
    limits: FrontLimits = DEFAULT_LIMITS,
    peer: tuple[str, int] | None = None,
    tls: ssl.SSLContext | None = None,
    flushers: trio.Nursery | None = None,
) -> None:
    """Serve one client connection until it closes.

    Plain requests are answered by ``on_http`` in an HTTP/1.1 keep-alive loop. A
    ``GET`` with ``Upgrade: websocket`` and ``Connection: upgrade`` is checked as a
    WebSocket opening handshake (400 or 426 if it is not one), and
    ``on_websocket(upgrade, http_request)`` must call ``upgrade.accept()`` or
    ``upgrade.reject()``; the coroutine it returns then serves the connection in this
    task. When that ends, a WebSocket left open is closed with 1000 (1011 if it raised).
    ``peer`` overrides the remote address read from the stream's socket. With ``tls``
    the stream is served over TLS (https and wss); its handshake must finish within
    ``limits.head_timeout`` of the call, together with the first request head. A
    WebSocket's output flusher (a task that exists only while the socket is not taking
    everything written) runs in ``flushers``, or in a nursery of the connection's own when
    it is None.

    Protocol errors become 400/408/413/431 responses, handler exceptions become a 500 or
    a WebSocket close with code 1011, and both end only this connection: nothing but
    cancellation propagates out. The stream is always closed on return.
    """
    if flushers is None:
        async with trio.open_nursery() as own:
            await handle_connection(stream, on_http=on_http, on_websocket=on_websocket,
                                    limits=limits, peer=peer, tls=tls, flushers=own)
        return
    started = trio.current_time()
    peer = peer_of(stream) if peer is None else peer
    connection = _Connection(stream, on_http, limits, peer, started)
    try:
        if tls is not None:
            secured = await _start_tls(stream, tls, started + limits.head_timeout, peer)
            if secured is None:
                return
            stream = connection._stream = secured
        ws_request = await connection.run()
        if ws_request is None:
            return
        # A WebSocket, served in this task for as long as it lasts. Inline rather than in a
        # helper, and holding nothing it does not need (h11's state and buffers, the
        # request, which the handler may drop): an idle connection keeps its stack.
        del connection
        output = wire.OutputStream(stream, _fd_of(stream), flushers)
        try:
            upgrade = Upgrade(ws_request.handshake, stream, output,
                              received=ws_request.received,
                              max_message=limits.max_message_size)
            request, path = ws_request.request, ws_request.request.path
            del ws_request
            failed = False
            try:
                serving = on_websocket(upgrade, request)
                del request
                if serving is not None:
                    await serving
            except Closed:
                logger.debug("websocket peer %s went away", peer)
            except Exception:
                failed = True
                logger.exception("websocket handler failed: %s from %s", path, peer)
            await _end_websocket(stream, upgrade, output, path, failed)
        finally:
            # The socket is closed after this; its descriptor number must not be written
            # to again, whoever still holds the output stream. This also stops its flusher.
            output.release()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, _Hangup):
        logger.debug("connection from %s dropped", peer)
    except* Exception:
        logger.exception("connection from %s failed", peer)
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            try:
                await stream.aclose()
            except Exception:
                logger.debug("closing connection from %s failed", peer, exc_info=True)


async def _guarded(handler: Callable[[trio.SocketStream], Awaitable[None]],
                   stream: trio.SocketStream, address: str | None,
                   limit: _PerAddress | None) -> None:
    # A handler exception must not cancel every other connection and the listener; keep
    # the blast radius at one connection even for handlers other than handle_connection.
    try:
        await handler(stream)
    except* Exception:
        logger.exception("connection handler crashed")
    finally:
        if limit is not None and address is not None:
            limit.release(address)
        await trio.aclose_forcefully(stream)


class _PerAddress:
    """Connections open per client address, counted from accept to close."""

    __slots__ = ("maximum", "open", "refuse")

    def __init__(self, maximum: int,
                 refuse: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
        self.maximum = maximum
        self.refuse = refuse
        self.open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self.open.get(address, 0)
        if count >= self.maximum:
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.open[address] - 1
        if count:
            self.open[address] = count
        else:
            del self.open[address]


async def _accept(listener: trio.SocketListener, handler_nursery: trio.Nursery,
                  handler: Callable[[trio.SocketStream], Awaitable[None]],
                  limit: _PerAddress | None) -> None:
    # trio.serve_listeners' loop, without its own wrapper coroutine around each handler:
    # an idle connection holds every coroutine frame on its stack for as long as it lasts.
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.error("accept failed (%s); retrying in %s s", os.strerror(exc.errno),
                             _ACCEPT_RETRY)
                await trio.sleep(_ACCEPT_RETRY)
                continue
            # A name given saves trio making one per task (74 bytes each connection holds).
            if limit is None:
                handler_nursery.start_soon(_guarded, handler, stream, None, None,
                                           name=_TASK_NAME)
                continue
            address = peer_of(stream)[0]
            if limit.admit(address):
                handler_nursery.start_soon(_guarded, handler, stream, address, limit,
                                           name=_TASK_NAME)
            else:
                handler_nursery.start_soon(_guarded, limit.refuse, stream, None, None,
                                           name=_TASK_NAME)


async def _open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    bind_host = host or None
    try:
        listeners = await trio.open_tcp_listeners(port, host=bind_host)
    except OSError as exc:
        # "[Errno 98] Address already in use" alone does not say which address.
        where = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += " (another process is listening there)"
        error = OSError(f"cannot listen on {where}: {reason}")
        error.errno = exc.errno  # kept for callers; str(error) stays one plain sentence
        raise error from exc
    if port != 0 or len(listeners) == 1:
        return listeners
    # With port 0 each address (e.g. IPv4 and IPv6 wildcards) gets its own ephemeral
    # port, but callers advertise a single port: rebind everything to the first one.
    for _ in range(_PORT_RETRIES):
        chosen = listeners[0].socket.getsockname()[1]
        for listener in listeners:
            await listener.aclose()
        try:
            return await trio.open_tcp_listeners(chosen, host=bind_host)
        except OSError:
            listeners = await trio.open_tcp_listeners(0, host=bind_host)
    logger.warning("listeners for %r ended up on different ports", host)
    return listeners


async def serve_tcp(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    host: str,
    port: int,
    handler_nursery: trio.Nursery | None = None,
    *,
    max_per_address: int = 0,
    refuse: Callable[[trio.SocketStream], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host``:``port`` and run ``handler`` for every accepted connection.

    Reports ``(host, actual_port)`` through ``task_status`` once the sockets are
    listening (``port=0`` picks a free port), then serves until cancelled. Transient
    accept failures such as EMFILE are retried after a pause rather than raised. Handlers run
    in ``handler_nursery`` when given, so that cancelling the listener (to stop
    accepting) leaves open connections to a graceful close. A handler that raises ends
    its own connection only. With ``max_per_address``, a connection from an address that
    already has that many open is given to ``refuse`` instead of ``handler`` (so a flood
    from one address is turned away before it costs a parse or a handshake).
    """
    listeners = await _open_listeners(host, port)
    actual_port = listeners[0].socket.getsockname()[1]
    logger.debug("listening on %s port %d", host or "*", actual_port)
    limit = None
    if max_per_address:
        if refuse is None:
            raise ValueError("max_per_address needs a refuse handler")
        limit = _PerAddress(max_per_address, refuse)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept, listener, handler_nursery or nursery, handler, limit)
        task_status.started((host, actual_port))
