"""Hand-made WebSocket frames against a live daemon, while two witnesses chat through it.

The frame path (``daemon.net.websocket`` on wsproto) sees every kind of frame a client can
send: any opcode, FIN and RSV bits, masked or not (with any mask), every length encoding
(and lengths that lie), fragmented messages with control frames inside them, broken
fragmentation, text that is not UTF-8, oversized messages, close frames with every kind
of code and reason, all of it cut into random pieces on the wire. Each connection sends
one such script, then a probe, and must end in one of three ways: the probe answered, a
close frame with a documented code (never 1011), or, when the script stopped in the
middle of a frame, open until the client hangs up. Afterwards: every fuzz connection is
gone from the daemon (none hung), the witnesses' history is whole and in order, and the
daemon logged no error.

The suite runs a short version. The long run (at least 100,000 frames):

    FRAME_FUZZ_FRAMES=100000 .venv/bin/python -m pytest -q -p no:cacheprovider \\
        tests/test_frame_fuzz.py -s

``FRAME_FUZZ_SEED`` picks the scripts (the seed is printed; a failure names it).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import trio
import wsproto.frame_protocol as fp

from tests.conftest import WAIT, Client, ServeProcess
from tests.test_fuzz import healthz, history, logged_daemon, open_ws

FRAMES = int(os.environ.get("FRAME_FUZZ_FRAMES", "3000"))
SEED = int(os.environ.get("FRAME_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 32))))
CONCURRENCY = 24
MAX_MESSAGE = 64 * 1024
# Close codes a fuzzed connection may get: protocol errors (1002), text that is not UTF-8
# (1007), too many bad frames (1008), too big (1009), the documented roomctl codes, and
# the code of a close frame it sent itself (echoed). Never 1011, a daemon bug.
ROOMCTL_CODES = {1000, 1001, 1002, 1007, 1008, 1009, 4001, 4003, 4004, 4008, 4012, 4013}
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
REQUESTS = [
    {"type": "hello", "name": "fuzz"}, {"type": "get-participants"}, {"type": "join"},
    {"type": "part"}, {"type": "set-status", "status": "away"},
    {"type": "send-message", "text": "fuzz"},
    {"type": "relay-ice-candidate", "peer_id": "nobody", "candidate": {"candidate": ""}},
    {"type": "set-media-state", "audio_muted": True, "video_muted": False},
]


@pytest.fixture
def daemon(tmp_path: pathlib.Path) -> Iterator[tuple[ServeProcess, pathlib.Path]]:
    with logged_daemon(tmp_path, "--handshake-timeout", "2", "--rate-limit", "0",
                       "--grace", "2") as running:
        yield running


# --- making frames --------------------------------------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = b"\0\0\0\0", length: int | None = None,
          width: int | None = None) -> bytes:
    """One client frame. ``length`` may lie about the payload; ``width`` forces the length
    encoding (7, 16 or 64 bits), minimal or not."""
    size = len(payload) if length is None else length
    if width is None:
        width = 7 if size < 126 else 16 if size < 65536 else 64
    mask_bit = 0x80 if mask is not None else 0
    head = bytes(((0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF),))
    if width == 7:
        head += bytes((mask_bit | min(size, 125),))
    elif width == 16:
        head += bytes((mask_bit | 126,)) + struct.pack("!H", min(size, 65535))
    else:
        head += bytes((mask_bit | 127,)) + struct.pack("!Q", size)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Script:
    """Random frames for one connection. Most are valid, so a connection lives long enough
    to reach deep states (a message half assembled, a ping inside it); about one in
    twelve is fatal (a protocol error, text that is not UTF-8, a message too big, a close
    frame), and the script ends there, as the daemon's reading of it does."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.frames: list[bytes] = []
        self.ended = False  # a fatal frame was added: nothing after it would be read
        self.truncated = False  # the last frame promises more bytes than it has
        self.closes: set[int] = set()  # codes of valid close frames sent (echoed back)

    def mask(self) -> bytes:
        return b"\0\0\0\0" if self.rng.random() < 0.5 else self.rng.randbytes(4)

    def valid_text(self) -> bytes:
        r = self.rng.random()
        if r < 0.6:
            return json.dumps(self.rng.choice(REQUESTS)).encode()
        return "".join(chr(self.rng.choice([0x41, 0x7B, 0xE9, 0x20AC, 0x1F600]))
                       for _ in range(self.rng.randrange(40))).encode()

    def message(self) -> tuple[int, bytes]:
        if self.rng.random() < 0.7:
            return TEXT, self.valid_text()
        if self.rng.random() < 0.5:
            return BINARY, msgspec.msgpack.encode(self.rng.choice(REQUESTS))
        return BINARY, self.rng.randbytes(self.rng.randrange(80))

    def add(self) -> None:
        rng = self.rng
        if rng.random() < 1 / 12:
            self.add_fatal()
            return
        kind = rng.choices(["message", "fragments", "control", "empty"], [50, 25, 20, 5])[0]
        if kind == "message":
            opcode, data = self.message()
            self.frames.append(frame(opcode, data, mask=self.mask()))
        elif kind == "empty":
            self.frames.append(frame(rng.choice([TEXT, BINARY]), b"", mask=self.mask()))
        elif kind == "fragments":  # a message in pieces, with control frames inside
            opcode, data = self.message()
            count = rng.randrange(1, 6)
            cuts = sorted(rng.randrange(len(data) + 1) for _ in range(count - 1))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            for i, piece in enumerate(pieces):
                self.frames.append(frame(opcode if i == 0 else CONT, piece,
                                         fin=i == len(pieces) - 1, mask=self.mask()))
                if rng.random() < 0.3:
                    self.frames.append(frame(rng.choice([PING, PONG]),
                                             rng.randbytes(rng.randrange(126)),
                                             mask=self.mask()))
        else:
            self.frames.append(frame(rng.choice([PING, PONG]), rng.randbytes(rng.randrange(126)),
                                     mask=self.mask()))

    def add_fatal(self) -> None:
        rng = self.rng
        self.ended = True
        kind = rng.choice(["utf8", "control", "close", "bad-close", "opcode", "rsv", "length",
                           "unmasked", "big", "orphan", "interleaved", "truncated"])
        if kind == "utf8":  # an overlong form, a surrogate, a stray continuation, a cut
            bad = rng.choice([b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xff", b"\xe2\x82"])
            self.frames.append(frame(TEXT, b'{"type":"hello","name":"' + bad + b'"}',
                                     mask=self.mask()))
        elif kind == "control":  # over 125 bytes, or fragmented
            if rng.random() < 0.5:
                self.frames.append(frame(PING, rng.randbytes(rng.randrange(126, 300))))
            else:
                self.frames.append(frame(PONG, b"x", fin=False))
        elif kind == "close":
            code = rng.choice([1000, 1001, 1003, 1007, 1008, 1012, 3000, 4000, 4999])
            self.closes.add(code)
            reason = rng.choice([b"", b"bye", "ünïcode".encode()])
            self.frames.append(frame(CLOSE, struct.pack("!H", code) + reason, mask=self.mask()))
        elif kind == "bad-close":  # local-only or out-of-range codes, 1 byte, bad UTF-8
            code = rng.choice([999, 1004, 1005, 1006, 1015, 2999, 5000, 65535])
            payload = rng.choice([struct.pack("!H", code), b"\x03",
                                  struct.pack("!H", 1000) + b"\xff\xfe"])
            self.frames.append(frame(CLOSE, payload, mask=self.mask()))
        elif kind == "opcode":
            self.frames.append(frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]),
                                     rng.randbytes(rng.randrange(20)), mask=self.mask()))
        elif kind == "rsv":  # no extension was negotiated
            self.frames.append(frame(TEXT, self.valid_text(), rsv=rng.randrange(1, 8)))
        elif kind == "length":  # a length in more bytes than it needs
            self.frames.append(frame(TEXT, self.valid_text(), width=rng.choice([16, 64])))
        elif kind == "unmasked":
            self.frames.append(frame(TEXT, self.valid_text(), mask=None))
        elif kind == "big":  # over the message limit, whole or in fragments
            if rng.random() < 0.5:
                self.frames.append(frame(BINARY, rng.randbytes(MAX_MESSAGE + 1)))
            else:
                chunk = rng.randbytes(30_000)
                self.frames += [frame(BINARY, chunk, fin=False), frame(CONT, chunk, fin=False),
                                frame(CONT, chunk)]
        elif kind == "orphan":  # a continuation with nothing to continue
            self.frames.append(frame(CONT, self.valid_text(), fin=rng.random() < 0.5))
        elif kind == "interleaved":  # a new message before the last one finished
            self.frames += [frame(TEXT, b"{", fin=False), frame(BINARY, b"x")]
        else:  # declares more than it sends: the daemon waits for the rest
            payload = self.valid_text()
            self.frames.append(frame(TEXT, payload, length=len(payload) + 50))
            self.truncated = True

    def wire(self) -> list[bytes]:
        """The frames as the pieces they go out in (cut at random places)."""
        data = b"".join(self.frames)
        pieces: list[bytes] = []
        while data:
            cut = len(data) if self.rng.random() < 0.6 else self.rng.randrange(1, len(data) + 1)
            pieces.append(data[:cut])
            data = data[cut:]
        return pieces


# --- one connection ---------------------------------------------------------------------------


@dataclass
class Tally:
    frames: int = 0
    connections: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)


async def attack(sp: ServeProcess, rng: random.Random, tally: Tally) -> None:
    script = Script(rng)
    subprotocol = rng.choice([None, "roomctl.v1", "roomctl.v1.msgpack"])
    binary = subprotocol == "roomctl.v1.msgpack"

    def request(obj: dict[str, object]) -> bytes:
        if binary:
            return frame(BINARY, msgspec.msgpack.encode(obj))
        return frame(TEXT, json.dumps(obj).encode())

    if rng.random() < 0.5:
        script.frames.append(request({"type": "hello", "name": "fuzz"}))
    for _ in range(rng.randrange(1, 60)):
        script.add()
        if script.ended:
            break
    head = (b"GET /v1/rooms/fuzz%d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" % rng.randrange(3))
    if subprotocol:
        head += b"Sec-WebSocket-Protocol: %s\r\n" % subprotocol.encode()
    outcome = "?"
    with trio.fail_after(WAIT * 3):
        stream = await trio.open_tcp_stream(sp.host, sp.port)
        async with stream:
            try:
                await stream.send_all(head + b"\r\n")
                for piece in script.wire():
                    await stream.send_all(piece)
                if not script.ended:
                    await stream.send_all(request({"type": "get-participants", "ref": "probe"}))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            tally.frames += len(script.frames)
            outcome = await read_outcome(stream, binary, wait=0.3 if script.truncated else WAIT)
    tally.connections += 1
    tally.outcomes["close" if outcome.startswith("close") else outcome] += 1
    if script.truncated:
        ok = outcome in ("open", "answered") or outcome.startswith("close ")
    elif script.ended:
        ok = outcome.startswith("close ")
    else:
        ok = outcome == "answered" or outcome.startswith("close ")
    if ok and outcome.startswith("close "):
        code = int(outcome.split()[1])
        ok = code in ROOMCTL_CODES or code in script.closes
    if not ok:
        tally.bad.append(f"{outcome}: {b''.join(script.frames)[:300]!r}")


async def read_outcome(stream: trio.SocketStream, binary: bool, wait: float) -> str:
    """Return "answered" (the probe's reply came), "close CODE", "eof" (closed without a
    close frame), or "open" (nothing for ``wait`` seconds)."""
    parser = fp.FrameProtocol(client=True, extensions=[])
    head = b""
    with trio.move_on_after(wait):
        try:
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return "eof"
                head += chunk
            status, _, rest = head.partition(b"\r\n\r\n")
            if not status.startswith(b"HTTP/1.1 101 "):
                return "http " + status[9:12].decode()
            parser.receive_bytes(rest)
            message: list[Any] = []  # wsproto yields a frame's payload as it arrives
            while True:
                for server_frame in parser.received_frames():
                    if server_frame.opcode is fp.Opcode.CLOSE:
                        code, _reason = server_frame.payload  # type: ignore[misc]
                        return f"close {int(code)}"
                    if server_frame.opcode in (fp.Opcode.PING, fp.Opcode.PONG):
                        continue
                    message.append(server_frame.payload)
                    if not server_frame.message_finished:
                        continue
                    whole = "".join(message) if isinstance(message[0], str) else b"".join(message)
                    message = []
                    reply = msgspec.msgpack.decode(whole) if binary else json.loads(whole)
                    if isinstance(reply, dict) and reply.get("ref") == "probe":
                        return "answered"
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return "eof"
                parser.receive_bytes(chunk)
        except trio.BrokenResourceError:
            return "eof"
    return "open"


# --- the test ---------------------------------------------------------------------------------


def test_hand_made_frames_never_break_the_daemon(
        daemon: tuple[ServeProcess, pathlib.Path]) -> None:
    sp, log = daemon
    print(f"\nframe fuzz: seed {SEED}, at least {FRAMES} frames")
    rng = random.Random(SEED)
    tally = Tally()
    chatted: list[tuple[int, str]] = []

    async def main() -> None:
        done = trio.Event()

        async def witnesses() -> None:
            # Alice (JSON) and Bob (MessagePack) chat in turn the whole time; each message
            # must reach the other within WAIT.
            async with await open_ws(sp, "/v1/rooms/witness", ["roomctl.v1"]) as a_ws, \
                    await open_ws(sp, "/v1/rooms/witness", ["roomctl.v1.msgpack"]) as b_ws:
                alice, bob = Client(a_ws, binary=False), Client(b_ws, binary=True)
                assert (await alice.hello("alice"))["type"] == "welcome"
                assert (await bob.hello("bob"))["type"] == "welcome"
                n = 0
                while not done.is_set():
                    speaker, listener = (alice, bob) if n % 2 == 0 else (bob, alice)
                    word = f"w{n}"
                    ok = await speaker.request({"type": "send-message", "text": word})
                    assert ok["type"] == "ok", ok
                    with trio.fail_after(WAIT):
                        while (await listener.recv_type("message-posted"))["message"]["text"] \
                                != word:
                            pass
                    chatted.append((ok["seq"], word))
                    n += 1
                    await trio.sleep(0.02)

        async def fuzzers() -> None:
            slots = trio.Semaphore(CONCURRENCY)

            async def one(seed: int) -> None:
                try:
                    await attack(sp, random.Random(seed), tally)
                finally:
                    slots.release()

            async with trio.open_nursery() as nursery:
                while tally.frames < FRAMES:
                    await slots.acquire()
                    nursery.start_soon(one, rng.randrange(1 << 32))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(witnesses)
            nursery.start_soon(fuzzers)

    trio.run(main)
    print(f"frame fuzz: {tally.frames} frames on {tally.connections} connections; "
          f"outcomes {dict(tally.outcomes)}; witnesses posted {len(chatted)}")
    assert tally.frames >= FRAMES
    assert tally.bad == [], f"seed {SEED}: {tally.bad[:5]}"

    async def afterwards() -> tuple[int, list[tuple[int, str]]]:
        # No fuzz connection may linger: the daemon notices every one of them has gone.
        with trio.fail_after(WAIT * 2):
            while True:
                stream = await trio.open_tcp_stream(sp.host, sp.port)
                async with stream:
                    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                          b"Connection: close\r\n\r\n")
                    data = b""
                    while chunk := await stream.receive_some(4096):
                        data += chunk
                body = json.loads(data.split(b"\r\n\r\n", 1)[1])
                if body["connections"] == 0:
                    break
                await trio.sleep(0.2)
        return await healthz(sp), await history(sp)

    status, stored = trio.run(afterwards)
    assert status == 200
    seqs = [seq for seq, _ in stored]
    assert seqs == list(range(1, len(seqs) + 1)), "the witness room's sequence has gaps"
    assert set(chatted) <= set(stored), "a witness message changed or vanished"
    assert sp.proc.poll() is None
    logged = log.read_text()
    assert "Traceback" not in logged and " ERROR " not in logged, logged[-3000:]
