"""The front with recording handlers on a real port, shared by test_front and test_websocket.

``Recorder`` answers plain requests and echoes WebSocket messages on
``daemon.net.websocket.WebSocket``; ``start_front`` serves it on 127.0.0.1 port 0. The
``recorder`` and ``start_server`` fixtures are registered by conftest.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from daemon.net import wire
from daemon.net.front import (
    FrontLimits,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    Upgrade,
    WebSocketHandler,
    handle_connection,
    serve_tcp,
)
from daemon.net.websocket import WebSocket

StartServer = Callable[..., Awaitable[int]]


class Recorder:
    """Handlers that remember what they were called with."""

    def __init__(self) -> None:
        self.http: list[HttpRequest] = []
        self.ws: list[HttpRequest] = []
        self.proposed: list[tuple[str, ...]] = []
        self.finished = 0  # handle_connection calls that returned

    async def wait_finished(self, count: int, timeout: float = 1.0) -> None:
        with trio.fail_after(timeout):
            while self.finished < count:
                await trio.sleep(0.01)

    async def on_http(self, request: HttpRequest) -> HttpResponse:
        self.http.append(request)
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/missing":
            return HttpResponse(404, b'{"error":"no such room"}')
        if request.path == "/echo-body":
            return HttpResponse(200, request.body, content_type="application/octet-stream")
        return HttpResponse(200, b'{"ok":true}', headers=(("X-Room", "abc"),))

    def on_websocket(self, upgrade: Upgrade, request: HttpRequest) -> Awaitable[None] | None:
        self.ws.append(request)
        self.proposed.append(upgrade.proposed_subprotocols)
        if request.path == "/ignore":
            return None  # neither accept() nor reject()
        if request.path == "/reject":
            upgrade.reject(403, b"nope")
            return None
        subprotocol = "roomctl.v1" if "roomctl.v1" in upgrade.proposed_subprotocols else None
        return self.echo(upgrade.accept(subprotocol))

    @staticmethod
    async def echo(ws: WebSocket) -> None:
        ws.out.write(wire.frame(b"hello", binary=False))
        while True:
            for message in await ws.receive():
                if message == "boom":
                    raise RuntimeError("websocket handler bug")
                binary = isinstance(message, bytes)
                ws.out.write(wire.frame(message if binary else message.encode(),
                                        binary=binary))


async def start_front(
    nursery: trio.Nursery,
    recorder: Recorder,
    *,
    on_http: HttpHandler | None = None,
    on_websocket: WebSocketHandler | None = None,
    limits: FrontLimits | None = None,
) -> int:
    """Serve the front in ``nursery``, with ``recorder``'s handlers unless others are given;
    return the port. ``recorder.finished`` counts the connections whose handling ended."""

    async def handler(stream: trio.SocketStream) -> None:
        await handle_connection(
            stream,
            on_http=on_http or recorder.on_http,
            on_websocket=on_websocket or recorder.on_websocket,
            limits=limits or FrontLimits(),
        )
        recorder.finished += 1

    host, port = await nursery.start(serve_tcp, handler, "127.0.0.1", 0)
    assert host == "127.0.0.1"
    assert port > 0
    return port


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def start_server(nursery: trio.Nursery, recorder: Recorder) -> StartServer:
    """``await start_server(...)``: the front on a port of its own (see start_front)."""
    return partial(start_front, nursery, recorder)
