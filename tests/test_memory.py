"""A connection that has gone leaves nothing behind for the cyclic GC.

``roomctl serve`` raises the GC thresholds (roomctl/cli.py), so garbage in reference
cycles piles up between rare collections: each closed connection that left a cycle cost
about 4 KB of RSS until then. Here a real daemon (in this process, so its objects can be
inspected) serves connections that end every way a connection ends, with the automatic
GC off; then one collection with ``DEBUG_SAVEALL`` shows what only the cyclic GC could
have freed. None of it may be the daemon's per-connection objects.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest
import trio

import daemon
from daemon.core.engine import Session
from daemon.net.websocket import WebSocket
from daemon.net.wire import OutputStream
from daemon.server import Connection
from tests.conftest import WAIT, running_server

HEAD = (b"GET /v1/rooms/%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
CLOSE_1000 = bytes((0x88, 0x82)) + b"\0\0\0\0" + b"\x03\xe8"


def text(payload: bytes) -> bytes:
    """A masked client text frame (an all-zero mask leaves the payload as it is)."""
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def one_client(port: int, kind: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if kind == "http":
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while await stream.receive_some(65536):
                pass
            return
        if kind == "silent":  # never says hello: closed at the handshake timeout
            await stream.send_all(HEAD % b"churn")
            while await stream.receive_some(65536):
                pass
            return
        await stream.send_all(HEAD % b"churn" + text(b'{"type":"hello","name":"c"}')
                              + text(b'{"type":"join"}'))
        data = b""
        while b'"welcome"' not in data:
            data += await stream.receive_some(65536)
        if kind == "leave":
            await stream.send_all(text(b'{"type":"leave"}') + CLOSE_1000)
        elif kind == "close":
            await stream.send_all(CLOSE_1000)
        elif kind == "bad-frames":
            await stream.send_all(text(b'{"type":"nope"}') + text(b"[[[")
                                  + text(b'{"type":"send-message","text":"hi"}'))
        elif kind == "protocol-error":
            await stream.send_all(bytes((0x83, 0x80)) + b"\0\0\0\0")
        elif kind == "relay":
            await stream.send_all(text(b'{"type":"relay-ice-candidate","peer_id":"x",'
                                       b'"candidate":{"candidate":""}}'))
        # "drop" and the rest: the socket just closes (the session waits out its grace).
        with trio.move_on_after(0.2):
            while await stream.receive_some(65536):
                pass


async def test_a_closed_connection_is_freed_by_reference_counting_alone(
        make_config: Callable[..., daemon.Config], no_automatic_gc: None) -> None:
    kinds = ["leave", "close", "drop", "bad-frames", "protocol-error", "relay", "http",
             "silent"]
    config = make_config(grace=0.2, handshake_timeout=0.5, close_timeout=0.3, rate_limit=0)
    async with running_server(config) as srv:
        for _ in range(3):
            async with trio.open_nursery() as clients:
                for i in range(40):
                    clients.start_soon(one_client, srv.port, kinds[i % len(kinds)])
        with trio.fail_after(WAIT):
            await trio.sleep(0.5)  # the last graces expire
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        gc.set_debug(0)
        leaked = [type(o).__name__ for o in gc.garbage
                  if isinstance(o, Connection | WebSocket | OutputStream | Session)]
        assert leaked == []
        # And they are indeed gone, not kept alive by something reachable.
        assert not [o for o in gc.get_objects() if isinstance(o, Connection | WebSocket)]
