"""Property-based fuzzing of a running daemon (hypothesis): random and mutated frames.

One real ``roomctl serve`` process takes every example. Two witnesses chat in the room
``witness`` first, so there is history to protect. Each example opens fresh connections
and throws frames at the daemon, in JSON or MessagePack, as text or binary frames:

* random bytes and random text;
* valid requests (every request example of roomctl-protocol(7)) with fields dropped,
  added, retyped or replaced by random values, an unknown or wrong ``type``, then
  encoded in either format and sometimes damaged byte by byte;
* raw WebSocket frames with random opcodes, flags and lengths, under the codec.

Per example: the daemon answers with documented error codes, closes only with
documented close codes (never 1011, an internal error), and otherwise still answers a
probe on the same connection. After all examples: ``/healthz`` is 200, the witnesses
still chat, the history they made is intact with contiguous sequence numbers, and the
daemon logged no error or traceback.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode
from tests.conftest import ROOT, WAIT, Client, ServeProcess
from tests.test_man import PROTOCOL_PAGE, example_json, examples, source

# Examples of frames through the codec, and of hand-made WebSocket frames under it.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
MAX_RAW_EXAMPLES = int(os.environ.get("FUZZ_RAW_EXAMPLES", "50"))
ERROR_CODES = {code.value for code in ErrorCode}
# Close codes a fuzzed connection may get; 1011 (a daemon bug) is not among them.
CLOSE_CODES = {1000, 1002, 1007, 1008, 1009, 4001, 4003, 4004, 4008, 4012, 4013}
TEMPLATES: list[dict[str, Any]] = [
    example_json(e.text) for e in examples(source(PROTOCOL_PAGE)) if e.kind == "request"]
TAGS = sorted({t["type"] for t in TEMPLATES})
ROOMS = ["fuzz", "witness", "fuzz2"]


# --- the daemon and its witnesses -------------------------------------------------------------


@contextmanager
def logged_daemon(tmp_path: pathlib.Path, *args: str
                  ) -> Iterator[tuple[ServeProcess, pathlib.Path]]:
    """Run a ``roomctl serve`` whose stderr goes to a file (its size must not stall it)."""
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "roomctl", "serve", "--port", "0", "--memory",
             "--data-dir", str(tmp_path / "data"), "--log-level", "warning", *args],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://"), (line, log.read_text())
        host, _, port = line.removeprefix("listening on http://").rpartition(":")
        yield ServeProcess(proc, host, int(port), tmp_path / "data"), log
    finally:
        proc.kill()
        proc.wait(timeout=WAIT)


@pytest.fixture
def daemon(tmp_path: pathlib.Path) -> Iterator[tuple[ServeProcess, pathlib.Path]]:
    with logged_daemon(tmp_path, "--handshake-timeout", "2") as running:
        yield running


async def open_ws(sp: ServeProcess, path: str, subprotocols: list[str] | None = None
                  ) -> Any:
    return trio_websocket.open_websocket_url(sp.url + path, subprotocols=subprotocols or [],
                                             connect_timeout=WAIT, disconnect_timeout=WAIT)


async def witnesses_chat(sp: ServeProcess, words: list[str]) -> list[tuple[int, str]]:
    """Alice (JSON) and Bob (MessagePack) post ``words`` in turn; each sees the other's.

    Returns the (seq, text) of every message posted.
    """
    posted: list[tuple[int, str]] = []
    async with await open_ws(sp, "/v1/rooms/witness", ["roomctl.v1"]) as a_ws, \
            await open_ws(sp, "/v1/rooms/witness", ["roomctl.v1.msgpack"]) as b_ws:
        alice, bob = Client(a_ws, binary=False), Client(b_ws, binary=True)
        assert (await alice.hello("alice"))["type"] == "welcome"
        assert (await bob.hello("bob"))["type"] == "welcome"
        for i, word in enumerate(words):
            speaker, listener = (alice, bob) if i % 2 == 0 else (bob, alice)
            ok = await speaker.request({"type": "send-message", "text": word})
            assert ok["type"] == "ok", ok
            with trio.fail_after(WAIT):  # its own echoes come first; skip them
                while (await listener.recv_type("message-posted"))["message"]["text"] != word:
                    pass
            posted.append((ok["seq"], word))
    return posted


async def history(sp: ServeProcess) -> list[tuple[int, str]]:
    async with await open_ws(sp, "/v1/rooms/witness") as ws:
        reader = Client(ws, binary=False)
        assert (await reader.hello("reader", hidden=True))["type"] == "welcome"
        found: list[tuple[int, str]] = []
        while True:
            page = await reader.request({"type": "get-messages",
                                         "after": found[-1][0] if found else 0, "limit": 1000})
            found += [(m["seq"], m["text"]) for m in page["messages"]]
            if not page["has_more"]:
                return found


async def healthz(sp: ServeProcess) -> int:
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(sp.host, sp.port)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
    return int(data.split()[1])


# --- strategies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                               max_size=4),
    max_leaves=8)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request example with a few of its fields changed."""
    frame = dict(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["replace", "drop", "add", "retag", "keep"]))
        keys = sorted(frame)
        if action == "replace" and keys:
            frame[draw(st.sampled_from(keys))] = draw(json_values)
        elif action == "drop" and keys:
            frame.pop(draw(st.sampled_from(keys)))
        elif action == "add":
            frame[draw(st.text(max_size=12))] = draw(json_values)
        elif action == "retag":
            frame["type"] = draw(st.sampled_from(TAGS) | st.text(max_size=20))
    return frame


def encode(frame: Any, fmt: str) -> bytes:
    try:
        if fmt == "json":
            return msgspec.json.encode(frame)
        return msgspec.msgpack.encode(frame)
    except (TypeError, OverflowError, msgspec.EncodeError, ValueError):
        return json.dumps(frame, default=str).encode()  # NaN, huge ints: JSON takes them


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a byte flipped, cut short, or random bytes spliced in."""
    if not data:
        return data
    kind = draw(st.sampled_from(["flip", "cut", "splice"]))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:at] + bytes((data[at] ^ draw(st.integers(1, 255)),)) + data[at + 1:]
    if kind == "cut":
        return data[:at]
    return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]


@dataclass(frozen=True)
class Frame:
    binary: bool
    data: bytes

    def payload(self) -> str | bytes:
        if self.binary:
            return self.data
        return self.data.decode("utf-8", errors="replace")  # a text frame must be UTF-8


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    source_ = draw(st.sampled_from(["bytes", "text", "mutated", "mutated", "mutated"]))
    if source_ == "bytes":
        return Frame(True, draw(st.binary(max_size=200)))
    if source_ == "text":
        return Frame(False, draw(st.text(max_size=200)).encode())
    fmt = draw(st.sampled_from(["json", "msgpack"]))
    data = encode(draw(mutated()), fmt)
    if draw(st.integers(0, 3)) == 0:
        data = draw(damaged(data))
    return Frame(draw(st.booleans()) if fmt == "json" else True, data)


@dataclass(frozen=True)
class Case:
    path: str
    subprotocol: str | None
    hello_first: bool
    frames: tuple[Frame, ...]


cases = st.builds(
    Case,
    path=st.sampled_from([f"/v1/rooms/{r}" for r in ROOMS] + ["/v1/admin"]),
    subprotocol=st.sampled_from([None, "roomctl.v1", "roomctl.v1.msgpack"]),
    hello_first=st.booleans(),
    frames=st.lists(frames(), min_size=1, max_size=8).map(tuple),
)


@dataclass(frozen=True)
class RawCase:
    """WebSocket frames built by hand: any opcode, flags, mask and length."""

    frames: tuple[bytes, ...]


@st.composite
def raw_frame(draw: st.DrawFn) -> bytes:
    fin = draw(st.booleans())
    rsv = draw(st.integers(0, 7))
    opcode = draw(st.integers(0, 15))
    masked = draw(st.booleans())
    payload = draw(st.binary(max_size=150))
    declared = draw(st.sampled_from([len(payload), len(payload)]) | st.integers(0, 200))
    head = bytes(((0x80 if fin else 0) | rsv << 4 | opcode,))
    if declared < 126:
        head += bytes(((0x80 if masked else 0) | declared,))
    else:
        head += bytes(((0x80 if masked else 0) | 126,)) + declared.to_bytes(2, "big")
    mask = b"\0\0\0\0" if masked else b""
    return head + mask + payload


raw_cases = st.builds(RawCase, frames=st.lists(raw_frame(), min_size=1, max_size=4).map(tuple))


# --- running one example ----------------------------------------------------------------------


@dataclass
class Outcome:
    codes_seen: set[str]
    close_code: int | None  # None: the connection stayed open and answered the probe


async def run_case(sp: ServeProcess, case: Case) -> Outcome:
    binary = case.subprotocol == "roomctl.v1.msgpack"
    subprotocols = [case.subprotocol] if case.subprotocol else []
    codes: set[str] = set()
    with trio.fail_after(WAIT * 2):
        async with await open_ws(sp, case.path, subprotocols) as ws:
            client = Client(ws, binary=binary)
            try:
                if case.hello_first and case.path != "/v1/admin":
                    await client.hello("fuzzer")
                for frame in case.frames:
                    await client.send_raw(frame.payload())
                # The probe: a valid request must still be answered (or the connection was
                # closed for a documented reason).
                probe = {"type": "get-participants", "ref": "probe"}
                await client.send(probe)
                while True:
                    reply = await client.recv()
                    if reply.get("type") == "error":
                        codes.add(reply.get("code"))
                    if reply.get("ref") == "probe":
                        return Outcome(codes, None)
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None
                return Outcome(codes, exc.reason.code)
    raise AssertionError("unreachable")


async def run_raw_case(sp: ServeProcess, case: RawCase) -> str:
    """Send hand-made frames after a real handshake; return how the connection ended.

    ``open`` (still open after 0.3 s), ``eof`` (closed without a close frame, as
    trio-websocket does on a WebSocket protocol error) or the close code.
    """
    with trio.fail_after(WAIT * 2):
        stream = await trio.open_tcp_stream(sp.host, sp.port)
        async with stream:
            await stream.send_all(
                b"GET /v1/rooms/fuzz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
            assert data.startswith(b"HTTP/1.1 101 ")
            data = data.split(b"\r\n\r\n", 1)[1]
            ended = True
            try:
                for frame in case.frames:
                    await stream.send_all(frame)
                with trio.move_on_after(0.3) as waited:  # whatever it does, it does it fast
                    while chunk := await stream.receive_some(4096):
                        data += chunk
                ended = not waited.cancelled_caught
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    at = data.find(b"\x88")
    if at >= 0 and len(data) >= at + 4 and data[at + 1] >= 2:
        return str(int.from_bytes(data[at + 2:at + 4], "big"))
    return "eof" if ended else "open"


# --- the test ---------------------------------------------------------------------------------


def test_fuzzed_frames_never_break_the_daemon_or_reach_other_rooms(
        daemon: tuple[ServeProcess, pathlib.Path]) -> None:
    sp, log = daemon
    before = trio.run(witnesses_chat, sp, [f"before {i}" for i in range(10)])
    tally = {"examples": 0, "answered": 0, "closed": 0, "skipped (known codec bug)": 0}
    closes: dict[int, int] = {}
    raw_ends: dict[str, int] = {}
    errors: dict[str, int] = {}  # error code -> examples that got it
    fuzz_settings = settings(deadline=None, database=None,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large])

    @settings(fuzz_settings, max_examples=MAX_EXAMPLES)
    @given(case=cases)
    def attack(case: Case) -> None:
        tally["examples"] += 1
        outcome = trio.run(run_case, sp, case)
        assert outcome.codes_seen <= ERROR_CODES, outcome
        for code in outcome.codes_seen:
            errors[code] = errors.get(code, 0) + 1
        if outcome.close_code is None:
            tally["answered"] += 1
        else:
            tally["closed"] += 1
            closes[int(outcome.close_code)] = closes.get(int(outcome.close_code), 0) + 1
            assert outcome.close_code in CLOSE_CODES, outcome

    @settings(fuzz_settings, max_examples=MAX_RAW_EXAMPLES)
    @given(case=raw_cases)
    def attack_raw(case: RawCase) -> None:
        ended = trio.run(run_raw_case, sp, case)
        assert ended in ("open", "eof") or int(ended) in CLOSE_CODES, ended
        raw_ends[ended] = raw_ends.get(ended, 0) + 1

    attack()
    attack_raw()
    print(f"\nfuzz: {tally}; errors {errors}; close codes {closes}; hand-made WebSocket "
          f"frames: {raw_ends}")
    assert trio.run(healthz, sp) == 200
    after = trio.run(witnesses_chat, sp, [f"after {i}" for i in range(4)])
    stored = trio.run(history, sp)
    seqs = [seq for seq, _ in stored]
    assert seqs == list(range(1, len(seqs) + 1)), "the witness room's sequence has gaps"
    for seq, text in before + after:
        assert (seq, text) in stored, f"message {seq} of the witnesses changed or vanished"
    assert sp.proc.poll() is None
    logged = log.read_text()
    assert "Traceback" not in logged and " ERROR " not in logged, logged[-3000:]


# --- frames msgspec rejects outside its own errors (invalid UTF-8, deep nesting) -----------


async def test_malformed_binary_frames_get_bad_request_not_1011(
        daemon: tuple[ServeProcess, pathlib.Path]) -> None:
    sp, _ = daemon
    for fmt, data in [
        ("roomctl.v1", b'{"type":"hello","name":"\xe8"}'),
        ("roomctl.v1", b'{"type":"hello","ref":"\xe8"}'),
        ("roomctl.v1.msgpack", b"\x81\xa4type\xa5h\xe8llo"),
        ("roomctl.v1", b'{"type":"hello","x":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ]:
        async with await open_ws(sp, "/v1/rooms/fuzz", [fmt]) as ws:
            client = Client(ws, binary=fmt.endswith("msgpack"))
            await client.send_raw(data)
            reply = await client.recv()
            assert reply["type"] == "error" and reply["code"] == "bad-request", (data, reply)
