"""daemon.net.websocket: the opening handshake and the frame path, byte by byte.

The handshake checks run on h11 request events, with no socket. The frame tests speak
raw RFC 6455 over real TCP on 127.0.0.1 to the front with an echo handler (test_front's
``Recorder``), so every byte the server writes is seen, and wsproto's own client-side
parser reads it back.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable

import h11
import pytest
import trio
import wsproto.frame_protocol as fp

from daemon.net.front import FrontLimits, HttpRequest, Upgrade
from daemon.net.transport import Closed
from daemon.net.websocket import Handshake, HandshakeError, WebSocket
from tests.front_util import Recorder, StartServer

WAIT = 5.0
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def upgrade_head(path: str = "/ws", *extra: bytes, version: bytes = b"13",
                 key: bytes = KEY) -> bytes:
    return (b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n%s\r\n"
            % (path.encode(), key, version, b"".join(h + b"\r\n" for h in extra)))


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True,
                 rsv: int = 0) -> bytes:
    """A client-to-server frame, masked with a key that changes the bytes."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    key = b"\x37\xfa\x21\x3d"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class Peer:
    """A raw WebSocket client: bytes out, server frames parsed back by wsproto."""

    def __init__(self, stream: trio.SocketStream, after_head: bytes) -> None:
        self.stream = stream
        self.parser = fp.FrameProtocol(client=True, extensions=[])
        self.parser.receive_bytes(after_head)
        self.eof = False

    async def frame(self) -> tuple[int, bytes | str | tuple[int, str]]:
        """Return the next (opcode, payload) from the server; close payloads are (code, reason)."""
        with trio.fail_after(WAIT):
            while True:
                for frame in self.parser.received_frames():
                    # The frames here are small; a partial one would be a test bug.
                    assert frame.frame_finished, "a frame arrived in pieces"
                    return int(frame.opcode), frame.payload
                data = await self.stream.receive_some(65536)
                if not data:
                    self.eof = True
                    raise EOFError
                self.parser.receive_bytes(data)

    async def at_eof(self) -> bool:
        """Return whether the server closes the TCP connection (reading and dropping bytes)."""
        with trio.fail_after(WAIT):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
        return True


async def open_peer(port: int, *extra: bytes, then: bytes = b"") -> tuple[Peer, bytes]:
    """Connect, send the upgrade head (and ``then`` in the same write); return the peer and
    the response head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_head("/ws", *extra) + then)
    data = b""
    with trio.fail_after(WAIT):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, data
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return Peer(stream, rest), head


async def welcomed(port: int, *extra: bytes, then: bytes = b"") -> Peer:
    peer, head = await open_peer(port, *extra, then=then)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert await peer.frame() == (TEXT, "hello")
    return peer


# --- the handshake, from request events ------------------------------------------------------


def request(*headers: tuple[bytes, bytes], version: bytes = b"1.1") -> h11.Request:
    return h11.Request(method="GET", target="/ws", http_version=version,
                       headers=[(b"Host", b"x"), (b"Upgrade", b"websocket"),
                                (b"Connection", b"Upgrade"), *headers])


def test_a_valid_handshake_offers_its_subprotocols_and_answers_with_the_rfc_token() -> None:
    handshake = Handshake.from_request(request(
        (b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Protocol", b"roomctl.v1, chat"),
        (b"Sec-WebSocket-Protocol", b"roomctl.v1.msgpack")))
    assert handshake.subprotocols == ("roomctl.v1", "chat", "roomctl.v1.msgpack")
    response = handshake.response("chat")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert b"\r\nSec-WebSocket-Protocol: chat\r\n" in response
    assert response.endswith(b"\r\n\r\n")
    assert b"Sec-WebSocket-Protocol" not in handshake.response(None)


@pytest.mark.parametrize(("headers", "version", "status"), [
    ([(b"Sec-WebSocket-Version", b"13")], b"1.1", 400),  # no key
    ([(b"Sec-WebSocket-Key", b"short"), (b"Sec-WebSocket-Version", b"13")], b"1.1", 400),
    ([(b"Sec-WebSocket-Key", b"!!!!" * 6), (b"Sec-WebSocket-Version", b"13")], b"1.1", 400),
    ([(b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Version", b"8")], b"1.1", 426),
    ([(b"Sec-WebSocket-Key", KEY)], b"1.1", 426),  # no version
    ([(b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Version", b"13")], b"1.0", 400),
], ids=["no-key", "short-key", "not-base64", "version-8", "no-version", "http-1.0"])
def test_invalid_handshakes_are_refused_with_a_status(
        headers: list[tuple[bytes, bytes]], version: bytes, status: int) -> None:
    event = request(*headers, version=version) if version == b"1.1" else h11.Request(
        method="GET", target="/ws", http_version=version,
        headers=[(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), *headers])
    with pytest.raises(HandshakeError) as info:
        Handshake.from_request(event)
    assert info.value.status == status
    if status == 426:
        assert info.value.headers == (("Sec-WebSocket-Version", "13"),)


async def test_an_unsupported_version_gets_426_naming_13(start_server: StartServer,
                                                          recorder: Recorder) -> None:
    port = await start_server()
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(upgrade_head(version=b"8"))
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 426 ")
    assert b"\r\nsec-websocket-version: 13\r\n" in data.lower()
    assert recorder.ws == []


# --- frames, over real TCP -------------------------------------------------------------------


async def test_frames_sent_right_behind_the_upgrade_request_are_not_lost(
        start_server: StartServer) -> None:
    port = await start_server()
    peer = await welcomed(port, then=client_frame(TEXT, b"early") + client_frame(TEXT, b"bird"))
    assert await peer.frame() == (TEXT, "early")
    assert await peer.frame() == (TEXT, "bird")
    await peer.stream.aclose()


async def test_a_fragmented_message_is_reassembled_and_a_ping_inside_it_answered_first(
        start_server: StartServer) -> None:
    port = await start_server()
    peer = await welcomed(port)
    text = "fragmenté ✓".encode()
    await peer.stream.send_all(
        client_frame(TEXT, text[:5], fin=False)  # splits the é between two fragments
        + client_frame(CONTINUATION, text[5:9], fin=False)
        + client_frame(PING, b"are you there")
        + client_frame(CONTINUATION, text[9:]))
    assert await peer.frame() == (PONG, b"are you there")
    assert await peer.frame() == (TEXT, "fragmenté ✓")
    # A binary message in fragments, one byte at a time on the wire.
    for byte in client_frame(BINARY, b"\x00\x01", fin=False) + client_frame(CONTINUATION,
                                                                             b"\x02"):
        await peer.stream.send_all(bytes((byte,)))
    assert await peer.frame() == (BINARY, b"\x00\x01\x02")
    await peer.stream.aclose()


async def test_one_read_of_many_frames_is_one_batch_in_order(start_server: StartServer) -> None:
    port = await start_server()
    peer = await welcomed(port)
    await peer.stream.send_all(b"".join(client_frame(TEXT, b"m%d" % i) for i in range(50)))
    assert [await peer.frame() for _ in range(50)] == [(TEXT, f"m{i}") for i in range(50)]
    await peer.stream.aclose()


async def test_an_unsolicited_pong_changes_nothing(start_server: StartServer) -> None:
    port = await start_server()
    peer = await welcomed(port)
    await peer.stream.send_all(client_frame(PONG, b"nobody asked") + client_frame(TEXT, b"x"))
    assert await peer.frame() == (TEXT, "x")
    await peer.stream.aclose()


async def test_the_peers_close_is_answered_with_its_own_code_then_the_socket_closes(
        start_server: StartServer, recorder: Recorder) -> None:
    port = await start_server()
    peer = await welcomed(port)
    await peer.stream.send_all(client_frame(CLOSE, close_payload(4321, b"bye")))
    assert await peer.frame() == (CLOSE, (4321, "bye"))
    assert await peer.at_eof()
    await recorder.wait_finished(1)


@pytest.mark.parametrize(("frames", "code"), [
    ([client_frame(TEXT, b"\xff\xfe")], 1007),  # text that is not UTF-8
    ([client_frame(0x3, b"?")], 1002),  # a reserved opcode
    ([client_frame(TEXT, b"x", masked=False)], 1002),  # clients must mask
    ([client_frame(TEXT, b"x", rsv=4)], 1002),  # no extension negotiated
    ([client_frame(CONTINUATION, b"x")], 1002),  # nothing to continue
    ([client_frame(PING, b"x", fin=False)], 1002),  # control frames are never fragmented
    ([client_frame(CLOSE, close_payload(1005))], 1002),  # a local-only close code
], ids=["utf8", "opcode", "unmasked", "rsv", "continuation", "fragmented-ping", "code-1005"])
async def test_a_protocol_error_gets_its_close_code_and_the_socket_closes_at_once(
        start_server: StartServer, recorder: Recorder, frames: list[bytes], code: int) -> None:
    port = await start_server()
    peer = await welcomed(port)
    started = trio.current_time()
    await peer.stream.send_all(b"".join(frames))
    opcode, payload = await peer.frame()
    assert opcode == CLOSE
    assert isinstance(payload, tuple) and payload[0] == code
    # Not waited for: the peer broke the protocol, its close frame would mean nothing.
    assert await peer.at_eof()
    assert trio.current_time() - started < 1.0
    await recorder.wait_finished(1)


async def test_a_message_over_the_limit_closes_1009_even_in_small_fragments(
        start_server: StartServer) -> None:
    port = await start_server(limits=FrontLimits(max_message_size=1000))
    peer = await welcomed(port)
    await peer.stream.send_all(client_frame(TEXT, b"a" * 1000))
    assert await peer.frame() == (TEXT, "a" * 1000)
    for _ in range(3):
        await peer.stream.send_all(client_frame(TEXT if _ == 0 else CONTINUATION, b"b" * 400,
                                                fin=False))
    opcode, payload = await peer.frame()
    assert (opcode, payload) == (CLOSE, (1009, "message over 1000 bytes"))
    # A well-behaved peer answers the close, and the handshake ends.
    await peer.stream.send_all(client_frame(CLOSE, close_payload(1009)))
    assert await peer.at_eof()


async def test_receive_raises_closed_when_the_peer_vanishes(
        start_server: StartServer, recorder: Recorder) -> None:
    ended: list[int] = []

    async def wait(ws: WebSocket) -> None:
        try:
            await ws.receive()
        except Closed as exc:
            ended.append(exc.code)
            raise

    def handler(upgrade: Upgrade, request: HttpRequest) -> Awaitable[None]:
        return wait(upgrade.accept())

    port = await start_server(on_websocket=handler)
    peer, head = await open_peer(port)
    assert head.startswith(b"HTTP/1.1 101 ")
    await peer.stream.aclose()  # no close frame
    await recorder.wait_finished(1)
    assert ended == [1006]
