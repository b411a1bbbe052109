"""daemon.net.wire: frames built once, and the ordered output buffer, on real socket pairs."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
import wsproto.frame_protocol as fp

from daemon.net import wire


def _parse(data: bytes) -> list[tuple[fp.Opcode, bytes]]:
    """Decode server-to-client frames with wsproto's own client-side frame parser."""
    proto = fp.FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    out = []
    for frame in proto.received_frames():
        payload = frame.payload
        out.append((frame.opcode, payload.encode() if isinstance(payload, str) else payload))
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100_000])
def test_frames_of_every_length_class_decode(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    assert _parse(wire.frame(payload, binary=True)) == [(fp.Opcode.BINARY, payload)]
    text = b"x" * size
    assert _parse(wire.frame(text, binary=False)) == [(fp.Opcode.TEXT, text)]


async def _pair() -> tuple[trio.SocketStream, socket.socket]:
    a, b = socket.socketpair()
    # Small buffers so that backpressure comes quickly.
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    b.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


async def _read_all(sock: socket.socket, expected: int) -> bytes:
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < expected:
            await trio.lowlevel.wait_readable(sock)
            data += sock.recv(1 << 20)
    return bytes(data)


async def test_writes_stay_whole_and_in_order_under_backpressure() -> None:
    stream, peer = await _pair()
    frames = [wire.frame(f"{i:06d}".encode() * 200, binary=False) for i in range(300)]
    async with trio.open_nursery() as nursery:
        out = wire.OutputStream(stream, stream.socket.fileno(), nursery)
        for f in frames:
            out.write(f)  # never blocks, even though the peer reads nothing yet
        assert out.pending > 0, "the socket buffer should have filled up"
        # trio-websocket's own writes (a pong, say) queue behind ours and wait for them.
        nursery.start_soon(out.send_all, wire.frame(b"pong", binary=True))
        data = await _read_all(peer, sum(map(len, frames)) + 6)
        assert out.pending == 0
    parsed = _parse(data)
    assert [p for _, p in parsed[:-1]] == [f"{i:06d}".encode() * 200 for i in range(300)]
    assert parsed[-1] == (fp.Opcode.BINARY, b"pong")
    peer.close()


async def test_discarding_keeps_a_half_written_frame_whole() -> None:
    stream, peer = await _pair()
    big = wire.frame(b"a" * 200_000, binary=True)
    async with trio.open_nursery() as nursery:
        out = wire.OutputStream(stream, stream.socket.fileno(), nursery)
        out.write(big)  # the kernel takes only part of it
        out.write(wire.frame(b"dropped", binary=True))
        out.discard_pending()
        out.write(wire.frame(b"close", binary=True))
        data = await _read_all(peer, len(big) + 7)
    assert _parse(data) == [(fp.Opcode.BINARY, b"a" * 200_000), (fp.Opcode.BINARY, b"close")]
    peer.close()


async def test_a_peer_that_stops_reading_is_reported_once() -> None:
    stream, peer = await _pair()
    stalls: list[int] = []
    async with trio.open_nursery() as nursery:
        out = wire.OutputStream(stream, stream.socket.fileno(), nursery, stall_timeout=0.2,
                                on_stall=lambda: stalls.append(1))
        out.write(wire.frame(b"z" * 100_000, binary=True))
        with trio.fail_after(5):
            while not stalls:
                await trio.sleep(0.05)
        await trio.sleep(0.5)
        assert stalls == [1]
        await out.aclose()
    peer.close()


async def test_writes_after_the_peer_vanished_are_dropped_quietly() -> None:
    stream, peer = await _pair()
    peer.close()
    async with trio.open_nursery() as nursery:
        out = wire.OutputStream(stream, stream.socket.fileno(), nursery)
        for _ in range(3):
            out.write(wire.frame(b"into the void", binary=True))
        assert out.error is not None
        with pytest.raises(trio.BrokenResourceError):
            await out.send_all(b"x")
        await out.aclose()


async def test_without_a_descriptor_writes_go_through_send_all() -> None:
    # A non-socket stream (as under TLS): everything goes through the wrapped send_all.
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        out = wire.OutputStream(left, None, nursery)
        for i in range(5):
            out.write(wire.frame(f"m{i}".encode(), binary=False))
        await out.send_all(wire.frame(b"last", binary=False))
        data = b""
        with trio.fail_after(5):
            while len(_parse(data)) < 6:
                data += await right.receive_some()
    assert [p for _, p in _parse(data)] == [b"m0", b"m1", b"m2", b"m3", b"m4", b"last"]


async def test_corked_writes_leave_together_in_order() -> None:
    stream, peer = await _pair()
    async with trio.open_nursery() as nursery:
        out = wire.OutputStream(stream, stream.socket.fileno(), nursery)
        out.write(wire.frame(b"before", binary=True))
        out.cork()
        for i in range(3):
            out.write(wire.frame(f"held {i}".encode(), binary=True))
        assert out.pending == 0  # held back, not waiting for the socket
        before = await _read_all(peer, 8)
        assert _parse(before) == [(fp.Opcode.BINARY, b"before")]
        out.uncork()
        held = await _read_all(peer, 3 * 8)
    assert [p for _, p in _parse(held)] == [b"held 0", b"held 1", b"held 2"]
    peer.close()


async def test_a_released_stream_never_writes_to_its_old_descriptor() -> None:
    stream, peer = await _pair()
    async with trio.open_nursery() as nursery:
        out = wire.OutputStream(stream, stream.socket.fileno(), nursery)
        out.write(wire.frame(b"before", binary=True))
        out.release()
        out.write(wire.frame(b"after", binary=True))  # dropped, not written
        assert out.pending == 0
    data = await _read_all(peer, 8)
    with trio.move_on_after(0.2):
        await trio.lowlevel.wait_readable(peer)
        data += peer.recv(100)
    assert _parse(data) == [(fp.Opcode.BINARY, b"before")]
    peer.close()
