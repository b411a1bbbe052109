"""Tests for daemon.net.front: real TCP on 127.0.0.1, real trio-websocket clients.

The WebSocket handler here is a plain echo on ``daemon.net.websocket.WebSocket``; the
daemon's own handler is tested in test_daemon.py and the rest of the suite.
"""

from __future__ import annotations

import logging
from functools import partial

import h11
import pytest
import trio
import trio.testing
import trio_websocket

from daemon.net.front import (
    FrontLimits,
    HttpRequest,
    HttpResponse,
    handle_connection,
    serve_tcp,
)
from tests.front_util import Recorder, StartServer

WAIT = 5.0  # upper bound for any single network wait in these tests

class HttpClient:
    """Minimal keep-alive HTTP/1.1 client on top of h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> tuple[h11.Response, bytes]:
        all_headers = [("Host", "127.0.0.1"), *(headers or [])]
        if body or method == "POST":
            all_headers.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        return await self.response()

    async def response(self) -> tuple[h11.Response, bytes]:
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("server closed before responding")

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()


def header(response: h11.Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def raw_exchange(port: int, payload: bytes) -> bytes:
    """Send raw bytes and return everything the server says before closing."""
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            try:
                await stream.send_all(payload)
            except trio.BrokenResourceError:
                pass
            return await read_until_eof(stream)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def front_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "daemon.net.front" and r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- plain HTTP


async def test_plain_get_returns_handler_response(
    start_server: StartServer, recorder: Recorder
) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = HttpClient(stream)
            response, body = await client.request(
                "GET", "/v1/rooms/a%20b?x=1&x=2&y=&z=%C3%A9", headers=[("X-Token", "t1")]
            )
            local_port = stream.socket.getsockname()[1]
    assert response.status_code == 200
    assert body == b'{"ok":true}'
    assert header(response, b"content-length") == b"11"
    assert header(response, b"content-type") == b"application/json"
    assert header(response, b"server") == b"roomctl"
    assert header(response, b"date")
    assert header(response, b"x-room") == b"abc"
    [request] = recorder.http
    assert request.method == "GET"
    assert request.target == "/v1/rooms/a%20b?x=1&x=2&y=&z=%C3%A9"
    assert request.path == "/v1/rooms/a b"
    assert request.query == {"x": "2", "y": "", "z": "é"}
    assert request.headers["x-token"] == "t1"
    assert request.headers["host"] == "127.0.0.1"
    assert request.peer == ("127.0.0.1", local_port)
    assert request.body == b""


async def test_keep_alive_two_requests_on_one_connection(
    start_server: StartServer, recorder: Recorder
) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = HttpClient(stream)
            first, _ = await client.request("GET", "/one")
            client.next_cycle()
            second, _ = await client.request("GET", "/two")
    assert first.status_code == second.status_code == 200
    assert header(first, b"connection") is None
    assert [r.path for r in recorder.http] == ["/one", "/two"]
    assert recorder.http[0].peer == recorder.http[1].peer


async def test_pipelined_requests_are_answered_in_order(
    start_server: StartServer, recorder: Recorder
) -> None:
    port = await start_server()
    raw = await raw_exchange(
        port,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 200") == 2
    assert raw.index(b"HTTP/1.1 404") > raw.index(b"HTTP/1.1 200")
    assert raw.rstrip().endswith(b'{"ok":true}')
    assert b"connection: close" in raw.lower()
    assert [r.path for r in recorder.http] == ["/a", "/missing", "/c"]


async def test_http_10_request_is_answered_then_closed(start_server: StartServer) -> None:
    port = await start_server()
    raw = await raw_exchange(port, b"GET / HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in raw.lower()
    assert raw.endswith(b'{"ok":true}')


async def test_handler_404_passes_through_and_keeps_connection(start_server: StartServer) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = HttpClient(stream)
            response, body = await client.request("GET", "/missing")
            client.next_cycle()
            again, _ = await client.request("GET", "/")
    assert response.status_code == 404
    assert body == b'{"error":"no such room"}'
    assert again.status_code == 200


async def test_head_gets_headers_without_body(start_server: StartServer) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = HttpClient(stream)
            response, body = await client.request("HEAD", "/")
            client.next_cycle()
            _, after_body = await client.request("GET", "/")
    assert response.status_code == 200
    assert body == b""
    assert header(response, b"content-length") == b"11"
    assert after_body == b'{"ok":true}'


async def test_post_body_with_expect_100_continue(start_server: StartServer) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            client = HttpClient(stream)
            client.conn.send(
                h11.Request(method="POST", target="/", headers=[("Host", "x"),
                                                                 ("Content-Length", "5")])
            )
            await stream.send_all(b"hello")
            response, body = await client.response()
    assert response.status_code == 200
    assert body == b"hello"
    assert header(response, b"content-type") == b"application/octet-stream"


async def test_body_too_large_gets_413(start_server: StartServer, recorder: Recorder) -> None:
    port = await start_server(limits=FrontLimits(max_body_bytes=100))
    declared = await raw_exchange(
        port, b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 1000
    )
    chunked = await raw_exchange(
        port,
        b"POST /echo-body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"50\r\n" + b"a" * 0x50 + b"\r\n" + b"50\r\n" + b"a" * 0x50 + b"\r\n0\r\n\r\n",
    )
    assert status_of(declared) == 413
    assert status_of(chunked) == 413
    assert b"connection: close" in declared.lower()
    assert recorder.http == []


async def test_idle_keep_alive_connection_is_closed(start_server: StartServer) -> None:
    port = await start_server(limits=FrontLimits(keepalive_timeout=0.2))
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = HttpClient(stream)
            response, _ = await client.request("GET", "/")
            start = trio.current_time()
            assert await read_until_eof(stream) == b""
            assert trio.current_time() - start < 2.0
    assert response.status_code == 200


async def test_other_upgrade_is_served_as_plain_http(
    start_server: StartServer, recorder: Recorder
) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = HttpClient(stream)
            response, _ = await client.request(
                "GET", "/", headers=[("Upgrade", "h2c"), ("Connection", "Upgrade")]
            )
            client.next_cycle()
            again, _ = await client.request("GET", "/again")
    assert response.status_code == again.status_code == 200
    assert [r.path for r in recorder.http] == ["/", "/again"]


# --------------------------------------------------------------------------- limits and errors


async def test_oversized_head_gets_431(start_server: StartServer, recorder: Recorder) -> None:
    port = await start_server(limits=FrontLimits(max_head_bytes=1024))
    # Arrives in pieces: h11's incomplete-head limit fires.
    trickled = await raw_exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    )
    # Complete head in one read: caught by our own size check.
    whole = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000
                               + b"\r\n\r\n")
    assert status_of(trickled) == 431
    assert status_of(whole) == 431
    assert recorder.http == []


async def test_slow_head_gets_408_within_deadline(start_server: StartServer) -> None:
    port = await start_server(limits=FrontLimits(head_timeout=0.5))
    received = b""
    with trio.fail_after(2.0):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            start = trio.current_time()

            async def trickle() -> None:
                try:
                    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                    while True:
                        await trio.sleep(0.05)
                        await stream.send_all(b"X")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                received = await stream.receive_some(65536)
                elapsed = trio.current_time() - start
                nursery.cancel_scope.cancel()
    assert status_of(received) == 408
    assert 0.4 < elapsed < 1.5


async def test_silent_client_is_dropped_without_response(start_server: StartServer) -> None:
    port = await start_server(limits=FrontLimits(head_timeout=0.3))
    with trio.fail_after(2.0):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            assert await read_until_eof(stream) == b""


@pytest.mark.parametrize(
    "payload",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 requires Host
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Content-Length: 3\r\n\r\nabc",  # upgrade with a body
        b"GET / HTTP/1.1\r\nHost: xn--\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ],
    ids=["garbage", "no-host", "bad-content-length", "upgrade-with-body", "bad-idna-host"],
)
async def test_malformed_request_gets_400(
    start_server: StartServer,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
) -> None:
    port = await start_server()
    raw = await raw_exchange(port, payload)
    assert status_of(raw) == 400
    assert b"connection: close" in raw.lower()
    assert recorder.http == recorder.ws == []
    await recorder.wait_finished(1)
    assert front_errors(caplog) == []


async def test_http_handler_exception_gives_500_and_server_keeps_serving(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = await start_server()
    raw = await raw_exchange(port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(raw) == 500
    assert b"connection: close" in raw.lower()
    assert b"handler bug" not in raw
    [record] = front_errors(caplog)
    assert record.exc_info is not None
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            response, _ = await HttpClient(stream).request("GET", "/")
    assert response.status_code == 200


async def test_invalid_handler_response_gives_500(start_server: StartServer) -> None:
    async def bad_header(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, headers=(("X-Bad", "line\r\nbreak"),))

    port = await start_server(on_http=bad_header)
    raw = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(raw) == 500


# --------------------------------------------------------------------------- WebSocket


async def test_websocket_upgrade_echo_and_subprotocol(
    start_server: StartServer, recorder: Recorder
) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/v1/rooms/r%201/ws?token=abc&token=def",
            subprotocols=["roomctl.v1"],
            extra_headers=[(b"X-Client", b"cli"), (b"X-Multi", b"a"), (b"X-Multi", b"b")],
        ) as ws:
            assert ws.subprotocol == "roomctl.v1"
            assert await ws.get_message() == "hello"
            await ws.send_message("text ping")
            assert await ws.get_message() == "text ping"
            await ws.send_message(b"\x00\x01binary")
            assert await ws.get_message() == b"\x00\x01binary"
            local = ws.local
            assert isinstance(local, trio_websocket.Endpoint)
    [request] = recorder.ws
    assert request.method == "GET"
    assert request.path == "/v1/rooms/r 1/ws"
    assert request.query == {"token": "def"}
    assert request.headers["x-client"] == "cli"
    assert request.headers["x-multi"] == "a, b"
    assert request.headers["upgrade"].lower() == "websocket"
    assert "sec-websocket-key" in request.headers
    assert request.peer == ("127.0.0.1", local.port)
    assert request.body == b""
    assert recorder.proposed == [("roomctl.v1",)]
    assert recorder.http == []


async def test_websocket_without_subprotocol(start_server: StartServer) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
            assert ws.subprotocol is None
            assert await ws.get_message() == "hello"


async def test_websocket_reject_from_handler(start_server: StartServer) -> None:
    port = await start_server()
    with trio.fail_after(WAIT), pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/reject"):
            pass
    assert info.value.status_code == 403
    assert info.value.body == b"nope"


async def test_websocket_handler_that_never_answers_gets_500(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = await start_server()
    with trio.fail_after(WAIT), pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ignore"):
            pass
    assert info.value.status_code == 500
    assert len(front_errors(caplog)) == 1


async def test_bad_websocket_handshake_closes_promptly(
    start_server: StartServer, recorder: Recorder
) -> None:
    port = await start_server()  # default 10 s head timeout: must not be waited out
    raw = await raw_exchange(
        port,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",  # no Sec-WebSocket-Key
    )
    assert status_of(raw) == 400
    assert recorder.ws == []
    # The server side must give up too, not sit out the 10 s head timeout.
    await recorder.wait_finished(1)


async def test_websocket_handler_exception_closes_1011_others_unaffected(
    start_server: StartServer, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    port = await start_server()
    url = f"ws://127.0.0.1:{port}/ws"
    with trio.fail_after(WAIT):
        async with trio_websocket.open_websocket_url(url) as healthy, \
                trio_websocket.open_websocket_url(url) as doomed:
            assert await healthy.get_message() == "hello"
            assert await doomed.get_message() == "hello"
            await doomed.send_message("boom")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await doomed.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1011
            await recorder.wait_finished(1)  # the failed connection's task is gone
            await healthy.send_message("still here")
            assert await healthy.get_message() == "still here"
    [record] = front_errors(caplog)
    assert "websocket handler failed" in record.getMessage()


async def test_websocket_message_too_big_closes_1009(
    start_server: StartServer, recorder: Recorder
) -> None:
    port = await start_server(limits=FrontLimits(max_message_size=1024))
    with trio.fail_after(WAIT):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
            assert await ws.get_message() == "hello"
            await ws.send_message("x" * 1024)
            assert await ws.get_message() == "x" * 1024
            await ws.send_message("x" * 2000)
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1009
            await recorder.wait_finished(1)


async def test_websocket_after_plain_request_on_same_connection(
    start_server: StartServer, recorder: Recorder
) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            # A plain request, then an upgrade pipelined right behind it.
            await stream.send_all(
                b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /ws?n=2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            data = b""
            while b"101 Switching Protocols" not in data or not data.endswith(b"hello"):
                chunk = await stream.receive_some(65536)
                assert chunk
                data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert [r.path for r in recorder.http] == ["/first"]
    assert [(r.path, r.query) for r in recorder.ws] == [("/ws", {"n": "2"})]


# --------------------------------------------------------------------------- plumbing


async def test_handle_connection_on_non_socket_stream(recorder: Recorder) -> None:
    async def run(peer: tuple[str, int] | None) -> bytes:
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(handle_connection, server, on_http=recorder.on_http,
                        on_websocket=recorder.on_websocket, peer=peer)
            )
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return await read_until_eof(client)

    with trio.fail_after(WAIT):
        assert status_of(await run(None)) == 200
        assert status_of(await run(("10.0.0.1", 4242))) == 200
    assert [r.peer for r in recorder.http] == [("", 0), ("10.0.0.1", 4242)]


async def test_serve_tcp_survives_crashing_handler(nursery: trio.Nursery) -> None:
    async def crash(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"x")
            raise RuntimeError("not handle_connection")

    host, port = await nursery.start(serve_tcp, crash, "127.0.0.1", 0)
    assert host == "127.0.0.1"
    for _ in range(2):
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                assert await read_until_eof(stream) == b"x"


async def test_serve_tcp_refuses_connections_over_the_per_address_limit(
        nursery: trio.Nursery) -> None:
    async def greet(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hi")
        while await stream.receive_some(100):  # until the client hangs up
            pass

    async def refuse(stream: trio.SocketStream) -> None:
        await stream.send_all(b"no")

    host, port = await nursery.start(partial(serve_tcp, greet, "127.0.0.1", 0,
                                             max_per_address=2, refuse=refuse))

    async def first_bytes(stream: trio.SocketStream) -> bytes:
        with trio.fail_after(WAIT):
            return await stream.receive_some(100)

    a = await trio.open_tcp_stream(host, port)
    b = await trio.open_tcp_stream(host, port)
    assert [await first_bytes(a), await first_bytes(b)] == [b"hi", b"hi"]
    async with await trio.open_tcp_stream(host, port) as c:
        assert await first_bytes(c) == b"no"
        assert await read_until_eof(c) == b""  # refused, and closed
    await a.aclose()  # one fewer open from this address: the next one is let in
    with trio.fail_after(WAIT):
        while True:
            async with await trio.open_tcp_stream(host, port) as d:
                if await first_bytes(d) == b"hi":
                    break
            await trio.sleep(0.05)
    await b.aclose()
