"""Bad input: every case gets a typed error frame or a documented close code, and nothing else.

Each case is a small coroutine run against a real daemon. ``test_case`` runs one case per
test; ``test_the_daemon_survives_all_bad_input`` runs every case in turn against one daemon
while two clients keep chatting, then checks that nothing stored was lost and a fresh pair
of clients still chats.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio_websocket

import daemon
from tests.conftest import WAIT, Client, Server, closing, running_server

Connect = Callable[..., Any]
Case = Callable[[Server, Connect], Awaitable[None]]

# Every case's daemon: short grace (for expired resume tokens) and handshake time.
GRACE = 0.3
HANDSHAKE = 0.5
MAX_BAD_FRAMES = 20  # the daemon's default; the policy case relies on it


def config(make_config: Callable[..., daemon.Config]) -> daemon.Config:
    return make_config(grace=GRACE, handshake_timeout=HANDSHAKE)


async def error_for(client: Client, data: str | bytes, ref: str | None) -> dict[str, Any]:
    """Send raw ``data``; return the error frame that answers it (it must be the next frame).

    Participant events are skipped: earlier cases leave participants in the room whose
    grace period (0.3 s) may run out at any moment, and their departure is not an answer.
    """
    client.pending.clear()  # frames that arrived before this one are not the answer
    await client.send_raw(data)
    frame = await client.recv()
    while frame["type"] in ("participant-left", "participant-updated", "participant-joined"):
        frame = await client.recv()
    assert frame["type"] == "error", frame
    assert frame.get("ref") == ref, frame
    assert frame["message"]
    return frame


async def still_works(client: Client) -> None:
    """The connection is still open and answers requests."""
    reply = await client.request({"type": "get-participants"})
    assert reply["type"] == "participants"


@asynccontextmanager
async def in_room(connect: Connect, srv: Server, name: str, room: str = "bad",
                  binary: bool = False) -> AsyncIterator[Client]:
    async with connect(room, target=srv, binary=binary) as client:
        welcome = await client.hello(name)
        assert welcome["type"] == "welcome"
        yield client


def encode(frame: Any) -> str:
    return json.dumps(frame)


# --- the cases ------------------------------------------------------------------------------


async def malformed_json(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "m") as client:
        for data in ('{"type": "send-message", "text": "hi", "ref": "r1"', "not json", "",
                     "\u00ff\u0000"):
            error = await error_for(client, data, None)
            assert error["code"] == "bad-request"
        await still_works(client)


async def unknown_type(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "u") as client:
        error = await error_for(client, encode({"type": "launch-rockets", "ref": "r1"}), "r1")
        assert error["code"] == "bad-request"
        error = await error_for(client, encode({"ref": "r2", "text": "no type"}), "r2")
        assert error["code"] == "bad-request"
        error = await error_for(client, encode(["send-message", "hi"]), None)
        assert error["code"] == "bad-request"
        await still_works(client)


async def missing_and_mistyped_fields(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "f") as client:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("r1", {"type": "send-message"}),
            ("r2", {"type": "send-message", "text": 42}),
            ("r3", {"type": "set-status", "status": "asleep"}),
            ("r4", {"type": "get-messages", "limit": 0}),
            ("r5", {"type": "get-messages", "after": -1}),
            ("r6", {"type": "relay-ice-candidate", "peer_id": "p"}),
            ("r7", {"type": "relay-session-description", "peer_id": "p",
                    "description": {"type": "bogus", "sdp": ""}}),
            ("r8", {"type": "set-media-state", "audio_muted": "yes", "video_muted": True}),
            ("r9", {"type": "pin", "seq": 0}),
            ("r10", {"type": "set-name", "name": ""}),
        ]
        for ref, frame in cases:
            error = await error_for(client, encode({**frame, "ref": ref}), ref)
            assert error["code"] == "bad-request", (frame, error)
        # A mistyped ref cannot be echoed, but the frame is still answered.
        error = await error_for(client, encode({"type": "send-message", "ref": 7}), None)
        assert error["code"] == "bad-request"
        await still_works(client)


async def oversized_text(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "t") as client:
        frame = {"type": "send-message", "text": "x" * 4001, "ref": "r1"}
        error = await error_for(client, encode(frame), "r1")
        assert error["code"] == "bad-request"
        assert "4000" in error["message"]
        # Exactly at the limit is fine (and counts characters, not bytes).
        ok = await client.request({"type": "send-message", "text": "é" * 4000})
        assert ok["type"] == "ok"


async def oversized_frame(srv: Server, connect: Connect) -> None:
    # 64 KiB is the frame limit: one byte over closes the connection with 1009.
    async with connect("bad", target=srv) as client:
        await client.hello("big")
        padding = 64 * 1024 - len(encode({"type": "set-topic", "topic": ""})) + 1
        await client.send_raw(encode({"type": "set-topic", "topic": "x" * padding}))
        _, code = await closing(client)
        assert code == 1009
    async with connect("bad", target=srv, binary=True) as client:
        await client.hello("big binary")
        await client.send_raw(msgspec.msgpack.encode({"type": "set-topic",
                                                      "topic": "x" * 70_000}))
        _, code = await closing(client)
        assert code == 1009


async def first_frame_not_hello(srv: Server, connect: Connect) -> None:
    async with connect("bad", target=srv) as client:
        error = await error_for(client, encode({"type": "get-participants", "ref": "r1"}), "r1")
        assert error["code"] == "bad-request"
        assert "hello" in error["message"]
        welcome = await client.hello("late")
        assert welcome["type"] == "welcome"
        await still_works(client)


async def requests_before_hello(srv: Server, connect: Connect) -> None:
    async with connect("bad", target=srv) as client:
        early: list[tuple[str, dict[str, Any]]] = [
            ("r1", {"type": "send-message", "text": "sneaky"}),
            ("r2", {"type": "join"}),
            ("r3", {"type": "relay-ice-candidate", "peer_id": "x",
                    "candidate": {"candidate": ""}}),
            ("r4", {"type": "get-messages"}),
        ]
        for ref, frame in early:
            error = await error_for(client, encode({**frame, "ref": ref}), ref)
            assert error["code"] == "bad-request"
        # Without a ref there is no ok, but errors are still reported.
        await client.send({"type": "set-name", "name": "x"})
        error = await client.recv()
        assert error["type"] == "error" and error.get("ref") is None
        welcome = await client.hello("patient")
        assert welcome["type"] == "welcome"
        history = await client.request({"type": "get-messages"})
        assert "sneaky" not in [m["text"] for m in history["messages"]]


async def second_hello(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "twice") as client:
        error = await error_for(client, encode({"type": "hello", "name": "again", "ref": "r1"}),
                                "r1")
        assert error["code"] == "conflict"
        await still_works(client)


async def invalid_hello(srv: Server, connect: Connect) -> None:
    async with connect("bad", target=srv) as client:
        error = await error_for(client, encode({"type": "hello", "name": "n" * 65, "ref": "r1"}),
                                "r1")
        assert error["code"] == "bad-request"
        error = await error_for(client, encode({"type": "hello", "hidden": "yes", "ref": "r2"}),
                                "r2")
        assert error["code"] == "bad-request"
        assert (await client.hello("valid"))["type"] == "welcome"


async def too_many_bad_frames(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "spammer") as client:
        for n in range(MAX_BAD_FRAMES + 1):
            await client.send_raw(f"garbage {n}")
        frames, code = await closing(client)
        assert code == 1008
        # Every tolerated bad frame was answered before the close.
        assert len(frames) >= MAX_BAD_FRAMES
        assert {(f["type"], f["code"]) for f in frames} == {("error", "bad-request")}


async def signaling_outside_the_room(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "alice", room="bad") as alice, \
            in_room(connect, srv, "carol", room="elsewhere") as carol:
        await alice.request({"type": "join"})
        await carol.request({"type": "join"})
        candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}
        description = {"type": "offer", "sdp": "v=0\r\n"}
        for peer_id in (carol.session_id, "nobody", alice.session_id):
            for ref, frame in [
                ("r1", {"type": "relay-ice-candidate", "peer_id": peer_id,
                        "candidate": candidate}),
                ("r2", {"type": "relay-session-description", "peer_id": peer_id,
                        "description": description}),
            ]:
                error = await error_for(alice, encode({**frame, "ref": ref}), ref)
                assert error["code"] == "not-found", (peer_id, error)
        # Carol, in another room, received nothing from alice.
        await carol.no_frame(0.2)


async def wrong_and_expired_resume_tokens(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "expiring") as expiring:
        expired = expiring.resume_token
    await trio.sleep(GRACE + 0.3)
    async with in_room(connect, srv, "elsewhere", room="resume-elsewhere") as other_room, \
            connect("bad", target=srv) as client:
        for ref, token in [("r1", "no-such-token"),
                           # A live token for another room does not resume here.
                           ("r2", other_room.resume_token),
                           # Nor does one whose grace period is over.
                           ("r3", expired)]:
            error = await error_for(
                client, encode({"type": "hello", "resume": token, "ref": ref}), ref)
            assert error["code"] == "not-found"
        welcome = await client.hello("fresh")
        assert welcome["type"] == "welcome" and welcome["resumed"] is False


async def hello_timeout(srv: Server, connect: Connect) -> None:
    async with connect("bad", target=srv) as silent:
        _, code = await closing(silent, timeout=HANDSHAKE + WAIT)
        assert code == 4008
    # Frames that are not hello do not extend the handshake time.
    async with connect("bad", target=srv) as chatty:
        started = trio.current_time()
        while trio.current_time() - started < HANDSHAKE - 0.1:
            await chatty.send({"type": "get-participants"})
            await trio.sleep(0.05)
        frames, code = await closing(chatty)
        assert code == 4008
        # Had each frame restarted the clock, the close would come after HANDSHAKE + 0.4.
        assert trio.current_time() - started < HANDSHAKE + 0.3
        assert {f["type"] for f in frames} == {"error"}


async def msgpack_garbage(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "binary", binary=True) as client:
        for data in (b"\xc1", b"\xff\x00\xff", b"\x92\x01\x02", msgspec.msgpack.encode(42)):
            error = await error_for(client, data, None)
            assert error["code"] == "bad-request"
        frame = msgspec.msgpack.encode({"type": "send-message", "text": 5, "ref": "r1"})
        error = await error_for(client, frame, "r1")
        assert error["code"] == "bad-request"
        await still_works(client)


async def text_frame_on_msgpack(srv: Server, connect: Connect) -> None:
    async with in_room(connect, srv, "binary", binary=True) as client:
        await client.send_raw(encode({"type": "send-message", "text": "hi"}))
        error = await client.recv()
        assert error["type"] == "error"
        assert error["code"] == "bad-request"
        assert "binary" in error["message"]
        await still_works(client)


async def bad_handshakes(srv: Server, connect: Connect) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(
                f"{srv.url}/v1/rooms/bad", subprotocols=["chat.v9"], connect_timeout=WAIT):
            pass
    assert info.value.status_code == 400
    for path in ("/v1/rooms/-bad-", "/v1/nowhere", "/v1/rooms/" + "x" * 65):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(f"{srv.url}{path}",
                                                         connect_timeout=WAIT):
                pass
        assert info.value.status_code == 404


CASES: list[Case] = [
    malformed_json,
    unknown_type,
    missing_and_mistyped_fields,
    oversized_text,
    oversized_frame,
    first_frame_not_hello,
    requests_before_hello,
    second_hello,
    invalid_hello,
    too_many_bad_frames,
    signaling_outside_the_room,
    wrong_and_expired_resume_tokens,
    hello_timeout,
    msgpack_garbage,
    text_frame_on_msgpack,
    bad_handshakes,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
async def test_case(case: Case, connect: Connect,
                    make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(config(make_config)) as srv:
        with trio.fail_after(15):
            await case(srv, connect)


async def test_a_text_frame_over_64_kib_of_utf8_is_refused(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(config(make_config)) as srv, \
            in_room(connect, srv, "emoji") as client:
        sdp = "\U0001f600" * 17_000  # 17,000 characters, 68,000 bytes
        frame = json.dumps({"type": "relay-session-description", "peer_id": "nobody",
                            "description": {"type": "offer", "sdp": sdp}, "ref": "r1"},
                           ensure_ascii=False)
        assert len(frame) < 64 * 1024 < len(frame.encode())
        await client.send_raw(frame)
        try:
            reply = await client.recv()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None and exc.reason.code == 1009
        else:
            # Accepted and relayed would be "not-found" (nobody is there): the frame was read.
            assert reply["type"] == "error" and reply["code"] == "too-large", reply


async def test_the_daemon_survives_all_bad_input(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(config(make_config)) as srv:
        stored: list[str] = []
        async with in_room(connect, srv, "alice", room="bystanders") as alice, \
                in_room(connect, srv, "bob", room="bystanders", binary=True) as bob:

            async def chat(text: str) -> None:
                ok = await alice.request({"type": "send-message", "text": text})
                assert ok["type"] == "ok" and ok["seq"] == len(stored) + 1
                stored.append(text)
                posted = await bob.recv_type("message-posted")
                assert posted["message"]["text"] == text

            await chat("before the storm")
            with trio.fail_after(60):
                for case in CASES:
                    await case(srv, connect)
                    # Everyone else is still served, after every single case.
                    await chat(f"after {case.__name__}")
            live = await alice.request({"type": "get-participants"})
            assert {p["meta"]["name"] for p in live["participants"]} == {"alice", "bob"}

        # A fresh pair of clients still chats, and every stored message is still there.
        async with in_room(connect, srv, "carol", room="bystanders") as carol, \
                in_room(connect, srv, "dave", room="bystanders", binary=True) as dave:
            ok = await carol.request({"type": "send-message", "text": "all clear"})
            assert ok["seq"] == len(stored) + 1
            stored.append("all clear")
            posted = await dave.recv_type("message-posted")
            assert posted["message"]["text"] == "all clear"
            history = await dave.request({"type": "get-messages", "limit": 1000})
            assert [m["text"] for m in history["messages"]] == stored
            assert [m["seq"] for m in history["messages"]] == list(range(1, len(stored) + 1))

        status = await trio.run_process(
            ["curl", "--silent", "--max-time", str(WAIT), "--noproxy", "*",
             f"{srv.http}/healthz"], capture_stdout=True)
        assert json.loads(status.stdout)["status"] == "ok"
