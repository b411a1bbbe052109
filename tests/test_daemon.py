"""The daemon end to end: a real server on a real port, real trio-websocket clients.

Each test states one behaviour a client relies on. Nothing is mocked; every wait is
bounded by ``trio.fail_after`` (directly or through the ``Client`` helpers).
"""

from __future__ import annotations

import itertools
import json
import logging
import pathlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio_websocket

import daemon
from daemon.logs import JsonFormatter
from tests.conftest import WAIT, Client, Server, closing, running_server

Connect = Callable[..., Any]


# --- helpers --------------------------------------------------------------------------------


async def close_code(ws: trio_websocket.WebSocketConnection, timeout: float = WAIT) -> int:
    """Read (and drop) frames until the connection closes; return its close code."""
    with trio.fail_after(timeout):
        while True:
            try:
                await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None
                return exc.reason.code


_exchange_refs = itertools.count(1)


async def exchange(client: Client, frame: dict[str, Any]) -> list[dict[str, Any]]:
    """Send ``frame`` with a ref; return every frame up to and including its reply.

    Unlike ``Client.request`` this keeps the events that arrive before the reply.
    """
    ref = f"x{next(_exchange_refs)}"
    await client.send({**frame, "ref": ref})
    return await frames_until(client, lambda f: f.get("ref") == ref)


async def frames_until(client: Client, stop: Callable[[dict[str, Any]], bool],
                       timeout: float = WAIT) -> list[dict[str, Any]]:
    """Return every frame received up to and including the first for which ``stop`` holds."""
    seen: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while True:
            frame = await client.recv(timeout=timeout)
            seen.append(frame)
            if stop(frame):
                return seen


async def drain(client: Client, within: float = 0.3) -> list[dict[str, Any]]:
    """Return every frame that arrives within ``within`` seconds."""
    seen: list[dict[str, Any]] = []
    with trio.move_on_after(within):
        while True:
            seen.append(await client.recv())
    return seen


def names(participants: list[dict[str, Any]]) -> dict[str, str]:
    return {p["id"]: p["meta"]["name"] for p in participants}


@asynccontextmanager
async def admin(connect: Connect, srv: Server) -> AsyncIterator[Client]:
    """Open the admin endpoint of ``srv`` and say hello with its token."""
    async with connect(path="/v1/admin", target=srv) as client:
        welcome = await client.hello(None, token=srv.admin_token)
        assert welcome["type"] == "welcome"
        yield client


async def curl(url: str) -> tuple[int, str, str]:
    """GET ``url`` with the real curl; return (status, content type, body)."""
    result = await trio.run_process(
        ["curl", "--silent", "--max-time", str(WAIT), "--noproxy", "*",
         "--write-out", "\n%{http_code} %{content_type}", url],
        capture_stdout=True, check=False,
    )
    body, _, tail = result.stdout.decode().rpartition("\n")
    status, _, content_type = tail.partition(" ")
    return int(status), content_type, body


@dataclass
class Embedded:
    """A daemon running in its own nursery; ``scope.cancel()`` shuts it down."""

    server: Server
    scope: trio.CancelScope
    stopped: trio.Event  # set once daemon.serve has returned


@asynccontextmanager
async def embedded(config: daemon.Config) -> AsyncIterator[Embedded]:
    """Run a daemon for the block (as an application embedding it would)."""
    async with trio.open_nursery() as outer:
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def run(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
            try:
                with scope:
                    async with trio.open_nursery() as nursery:
                        address = await nursery.start(daemon.serve, config, None)
                        task_status.started(address)
            finally:
                stopped.set()

        host, port = await outer.start(run)
        yield Embedded(Server(host, port, config.data_dir, config), scope, stopped)
        scope.cancel()


# --- chat and participants ------------------------------------------------------------------


async def test_two_clients_chat_and_see_participant_deltas(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(grace=0.5)) as srv:
        async with connect("deltas", target=srv) as alice:
            welcome = await alice.hello("alice")
            assert welcome["resumed"] is False
            assert names(welcome["participants"]) == {alice.session_id: "alice"}
            assert welcome["grace"] == 0.5

            async with connect("deltas", target=srv) as bob:
                welcome = await bob.hello("bob")
                assert names(welcome["participants"]) == {alice.session_id: "alice",
                                                          bob.session_id: "bob"}
                # A delta, not a whole list: exactly one participant-joined for bob.
                joined = await alice.recv()
                assert joined["type"] == "participant-joined"
                assert joined["participant"]["id"] == bob.session_id
                assert joined["participant"]["meta"]["name"] == "bob"
                assert joined["participant"]["live"] is True

                assert (await bob.request({"type": "set-status", "status": "away",
                                           "text": "lunch"}))["type"] == "ok"
                updated = await alice.recv_type("participant-updated")
                assert updated["participant"]["id"] == bob.session_id
                assert updated["participant"]["meta"]["status"] == "away"
                assert updated["participant"]["meta"]["status_text"] == "lunch"

                assert (await bob.request({"type": "set-name", "name": "robert"}))["type"] == "ok"
                updated = await alice.recv_type("participant-updated")
                assert updated["participant"]["meta"]["name"] == "robert"

                ok = await bob.request({"type": "set-media-state", "audio_muted": False,
                                        "video_muted": True})
                assert ok["type"] == "ok"
                updated = await alice.recv_type("participant-updated")
                assert updated["participant"]["media"] == {"audio_muted": False,
                                                           "video_muted": True}

                # Each message reaches both, sender included, with its seq and sender.
                for sender, text, seq, name in ((alice, "hi bob", 1, "alice"),
                                                (bob, "hi alice", 2, "robert")):
                    ok = await sender.request({"type": "send-message", "text": text})
                    assert ok["type"] == "ok" and ok["seq"] == seq
                    for client in (alice, bob):
                        message = (await client.recv_type("message-posted"))["message"]
                        assert (message["seq"], message["text"], message["sender_id"],
                                message["sender_name"]) == (seq, text, sender.session_id, name)
                bob_id = bob.session_id

            # Bob's connection dropped: first not live, then gone once the grace expires.
            seen = await frames_until(alice, lambda f: f["type"] == "participant-left",
                                      timeout=3.0)
            assert seen[0]["type"] == "participant-updated"
            assert seen[0]["participant"]["id"] == bob_id
            assert seen[0]["participant"]["live"] is False
            assert seen[-1] == {"type": "participant-left", "participant_id": bob_id,
                                "reason": "timeout"}
            listed = await alice.request({"type": "get-participants"})
            assert names(listed["participants"]) == {alice.session_id: "alice"}


async def test_a_late_joiner_pages_through_history(connect: Connect) -> None:
    async with connect("history") as alice:
        await alice.hello("alice")
        for n in range(1, 6):
            ok = await alice.request({"type": "send-message", "text": f"message {n}"})
            assert ok["seq"] == n

        async with connect("history") as carol:
            welcome = await carol.hello("carol")
            assert welcome["room"]["last_seq"] == 5

            async def page(**query: Any) -> tuple[list[int], bool]:
                reply = await carol.request({"type": "get-messages", **query})
                assert reply["type"] == "messages"
                for m in reply["messages"]:
                    assert m["text"] == f"message {m['seq']}"
                    assert m["sender_id"] == alice.session_id
                return [m["seq"] for m in reply["messages"]], reply["has_more"]

            assert await page() == ([1, 2, 3, 4, 5], False)
            # Forward from a cursor, in pages of two.
            assert await page(after=0, limit=2) == ([1, 2], True)
            assert await page(after=2, limit=2) == ([3, 4], True)
            assert await page(after=4, limit=2) == ([5], False)
            assert await page(after=5, limit=2) == ([], False)
            # Backward: the newest page first, then before its oldest.
            assert await page(limit=2) == ([4, 5], True)
            assert await page(before=4, limit=2) == ([2, 3], True)
            assert await page(before=2, limit=2) == ([1], False)
            # A window.
            assert await page(after=1, before=5) == ([2, 3, 4], False)


# --- reconnecting ---------------------------------------------------------------------------


async def test_resume_within_grace_keeps_the_session(connect: Connect) -> None:
    async with connect("resume") as alice:
        await alice.hello("alice")
        async with connect("resume") as bob:
            await bob.hello("bob")
            await alice.recv_type("participant-joined")
            ok = await bob.request({"type": "send-message", "text": "before the drop"})
            assert ok["seq"] == 1
        bob_id, token = bob.session_id, bob.resume_token

        async with connect("resume") as bob_again:
            welcome = await bob_again.hello("bob", resume=token)
            assert welcome["type"] == "welcome"
            assert welcome["resumed"] is True
            assert welcome["session_id"] == bob_id
            assert welcome["resume_token"] == token
            assert names(welcome["participants"])[bob_id] == "bob"

            seen = await frames_until(
                alice, lambda f: f["type"] == "participant-updated"
                and f["participant"]["live"] is True)
            seen += await drain(alice)
            kinds = [f["type"] for f in seen]
            assert "participant-left" not in kinds and "participant-joined" not in kinds
            lives = [f["participant"]["live"] for f in seen
                     if f["type"] == "participant-updated"]
            assert lives == [False, True]

            # The resumed session keeps its identity for what it does next.
            ok = await bob_again.request({"type": "send-message", "text": "after the drop"})
            assert ok["seq"] == 2
            posted = await alice.recv_type("message-posted")
            assert posted["message"]["sender_id"] == bob_id


async def test_resuming_a_live_session_closes_the_old_connection(connect: Connect) -> None:
    async with connect("takeover") as first, connect("takeover") as second:
        await first.hello("bob")
        welcome = await second.hello("bob", resume=first.resume_token)
        assert welcome["resumed"] is True and welcome["session_id"] == first.session_id
        assert await close_code(first.ws) == 4012


async def test_resume_after_the_grace_expired_is_not_found(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(grace=0.3)) as srv:
        async with connect("expiry", target=srv) as alice:
            await alice.hello("alice")
            async with connect("expiry", target=srv) as bob:
                await bob.hello("bob")
            await alice.recv_type("participant-left", timeout=3.0)

            async with connect("expiry", target=srv) as bob_again:
                error = await bob_again.hello("bob", resume=bob.resume_token)
                assert error["type"] == "error"
                assert error["code"] == "not-found"
                # The connection stays usable: a fresh hello starts a new session.
                welcome = await bob_again.hello("bob")
                assert welcome["type"] == "welcome"
                assert welcome["session_id"] != bob.session_id


# --- the WebRTC signaling relay -------------------------------------------------------------


async def test_signaling_relay_between_two_peers(connect: Connect) -> None:
    async with connect("call") as alice, connect("call") as bob, connect("call") as carol:
        await alice.hello("alice")
        await bob.hello("bob")
        await carol.hello("carol")

        alone = await exchange(alice, {"type": "join"})
        assert alone[-1]["type"] == "ok"
        assert "add-peer" not in [f["type"] for f in alone]
        joined = await exchange(bob, {"type": "join"})
        assert joined[-1]["type"] == "ok"
        # The newcomer offers; the one already in the call answers.
        assert [f for f in joined if f["type"] == "add-peer"] == [
            {"type": "add-peer", "peer_id": alice.session_id, "should_create_offer": True,
             "participant": None}]
        # Alice, in the call, gets Bob's new view with her add-peer, and no separate
        # participant-updated; Carol, outside the call, gets that update.
        alice_got = await drain(alice)
        assert [f["type"] for f in alice_got] == ["add-peer"]
        assert alice_got[0]["peer_id"] == bob.session_id
        assert alice_got[0]["should_create_offer"] is False
        assert alice_got[0]["participant"]["id"] == bob.session_id
        assert alice_got[0]["participant"]["in_call"] is True
        updates = [f for f in await drain(carol) if f["type"] == "participant-updated"]
        assert updates[-1]["participant"] == alice_got[0]["participant"]

        offer = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}
        ok = await bob.request({"type": "relay-session-description",
                                "peer_id": alice.session_id, "description": offer})
        assert ok["type"] == "ok"
        relayed = await alice.recv_type("session-description")
        assert relayed == {"type": "session-description", "peer_id": bob.session_id,
                           "description": offer}

        answer = {"type": "answer", "sdp": "v=0\r\n"}
        await alice.request({"type": "relay-session-description", "peer_id": bob.session_id,
                             "description": answer})
        relayed = await bob.recv_type("session-description")
        assert relayed["peer_id"] == alice.session_id
        assert relayed["description"] == answer

        candidate = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
                     "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}
        ok = await alice.request({"type": "relay-ice-candidate", "peer_id": bob.session_id,
                                  "candidate": candidate})
        assert ok["type"] == "ok"
        relayed = await bob.recv_type("ice-candidate")
        assert relayed == {"type": "ice-candidate", "peer_id": alice.session_id,
                           "candidate": candidate}
        # Passed on as sent: missing fields are not filled in.
        await bob.request({"type": "relay-ice-candidate", "peer_id": alice.session_id,
                           "candidate": {"candidate": ""}})
        relayed = await alice.recv_type("ice-candidate")
        assert relayed["peer_id"] == bob.session_id and relayed["candidate"] == {"candidate": ""}

        parted = await exchange(bob, {"type": "part"})
        assert parted[-1]["type"] == "ok"
        assert [f for f in parted if f["type"] == "remove-peer"] == [
            {"type": "remove-peer", "peer_id": alice.session_id}]
        assert await alice.recv_type("remove-peer") == {"type": "remove-peer",
                                                        "peer_id": bob.session_id}

        # Carol, not in the call, saw no signaling at all.
        carol_saw = {f["type"] for f in await drain(carol)}
        assert carol_saw <= {"participant-updated"}


def relay_frame(peer_id: str | None, candidate: str) -> str:
    return f'{{"type":"relay-ice-candidate","peer_id":"{peer_id}","candidate":{candidate}}}'


async def test_relayed_payloads_are_passed_on_as_sent_and_converted_between_formats(
        connect: Connect) -> None:
    # Fields the daemon does not know are kept (a browser's newer RTCIceCandidateInit
    # members, say), missing optional ones stay missing, and the bytes are not rebuilt:
    # odd spacing survives JSON to JSON. Between JSON and MessagePack the payload is
    # converted, keeping every field.
    async with connect("raw") as alice, connect("raw") as bob, \
            connect("raw", binary=True) as carol:
        for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            await client.hello(name)
        for client in (alice, bob, carol):
            await exchange(client, {"type": "join"})
        await drain(alice)
        await drain(bob)
        await drain(carol)

        candidate = ('{"candidate" :  "candidate:1 1 udp 1 127.0.0.1 9 typ host",'
                     ' "sdpMid":"0", "x-future": {"nested": [1, 2.5, null]}}')
        await alice.send_raw(relay_frame(bob.session_id, candidate))
        with trio.fail_after(WAIT):
            raw = await bob.ws.get_message()
        assert isinstance(raw, str)
        assert raw == f'{{"type":"ice-candidate","peer_id":"{alice.session_id}",' \
                      f'"candidate":{candidate}}}'

        await alice.send_raw(relay_frame(carol.session_id, candidate))
        relayed = await carol.recv_type("ice-candidate")
        assert relayed["candidate"] == json.loads(candidate)  # a MessagePack map now

        description = {"type": "offer", "sdp": "v=0\r\n", "x-extra": b"\x00\xff".hex()}
        await carol.send({"type": "relay-session-description", "peer_id": alice.session_id,
                          "description": description})
        relayed = await alice.recv_type("session-description")
        assert relayed == {"type": "session-description", "peer_id": carol.session_id,
                           "description": description}


async def test_relayed_payloads_are_still_checked(connect: Connect) -> None:
    async with connect("checked") as alice, connect("checked", binary=True) as bob:
        await alice.hello("alice")
        await bob.hello("bob")
        await exchange(alice, {"type": "join"})
        await exchange(bob, {"type": "join"})
        for client, peer in ((alice, bob), (bob, alice)):
            for bad in [
                {"type": "relay-session-description", "description": {"type": "bogus"}},
                {"type": "relay-session-description", "description": "v=0"},
                {"type": "relay-session-description",
                 "description": {"type": "offer", "sdp": "x" * (48 * 1024 + 1)}},
                {"type": "relay-ice-candidate", "candidate": {"candidate": "c" * 1025}},
                {"type": "relay-ice-candidate", "candidate": {"sdpMLineIndex": "zero"}},
                {"type": "relay-ice-candidate", "candidate": [1, 2]},
            ]:
                reply = await client.request({**bad, "peer_id": peer.session_id})
                assert (reply["type"], reply["code"]) == ("error", "bad-request"), (bad, reply)
        error = await alice.request({"type": "relay-ice-candidate", "peer_id": bob.session_id,
                                     "candidate": {"sdpMLineIndex": "zero"}})
        assert "$.candidate.sdpMLineIndex" in error["message"]
        assert {f["type"] for f in await drain(bob)} <= {"participant-updated", "add-peer"}


async def test_msgpack_and_json_clients_share_a_room(connect: Connect) -> None:
    async with connect("mixed") as alice, connect("mixed", binary=True) as bob:
        assert alice.ws.subprotocol == "roomctl.v1"
        assert bob.ws.subprotocol == "roomctl.v1.msgpack"
        await alice.hello("alice")
        welcome = await bob.hello("bøb")
        assert welcome["type"] == "welcome"
        await alice.recv_type("participant-joined")

        for sender, text, seq in ((alice, "from JSON ✓", 1), (bob, "from MessagePack ✓", 2)):
            ok = await sender.request({"type": "send-message", "text": text})
            assert ok["seq"] == seq
            for client in (alice, bob):
                message = (await client.recv_type("message-posted"))["message"]
                assert (message["seq"], message["text"]) == (seq, text)
        # Each side gets its own frame kind: text for JSON, binary for MessagePack.
        await bob.request({"type": "set-status", "status": "busy"})
        with trio.fail_after(WAIT):
            raw_json = await alice.ws.get_message()
        assert isinstance(raw_json, str) and json.loads(raw_json)["type"] == "participant-updated"
        await alice.request({"type": "set-status", "status": "busy"})
        with trio.fail_after(WAIT):
            raw_msgpack = await bob.ws.get_message()
        assert isinstance(raw_msgpack, bytes)


# --- a slow consumer ------------------------------------------------------------------------


@asynccontextmanager
async def non_reading_client(srv: Server, room: str) -> AsyncIterator[
        trio_websocket.WebSocketConnection]:
    """A raw trio-websocket client whose socket has a tiny receive buffer.

    Once the test stops calling ``get_message``, trio-websocket stops reading the socket
    (its message queue holds one message) and the small buffer fills quickly, so the
    daemon's writes block and its outbound queue for this client fills up.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with trio.fail_after(WAIT):
        await sock.connect((srv.host, srv.port))
    stream = trio.SocketStream(sock)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, srv.host, f"/v1/rooms/{room}", subprotocols=["roomctl.v1"],
                message_queue_size=1, receive_buffer_size=4096)
        try:
            yield ws
        finally:
            with trio.move_on_after(WAIT) as cleanup:
                cleanup.shield = True
                await ws.aclose()
            nursery.cancel_scope.cancel()


@dataclass
class SlowConsumerOutcome:
    sent: list[str]
    received: list[dict[str, Any]]  # everything the normal reader got
    slow_close_code: int  # as the slow client saw it once it read again
    metrics: dict[str, str]


async def slow_consumer_scenario(connect: Connect, srv: Server) -> SlowConsumerOutcome:
    """A sender posts 4000-character messages while one client reads and another doesn't.

    Posting stops a few messages after the normal reader sees the daemon drop the slow
    client (participant-updated, live=false); then the slow client reads until closed.
    """
    async with connect("slow", target=srv) as sender, connect("slow", target=srv) as reader, \
            non_reading_client(srv, "slow") as slow:
        await sender.hello("sender")
        await reader.hello("reader")
        with trio.fail_after(WAIT):
            await slow.send_message(json.dumps({"type": "hello", "name": "slow", "ref": "h"}))
            slow_id = json.loads(await slow.get_message())["session_id"]
        # From here on the slow client reads nothing.

        received: list[dict[str, Any]] = []
        slow_gone = trio.Event()

        async def read_everything() -> None:
            while True:
                frame = await reader.recv(timeout=10.0)
                received.append(frame)
                if (frame["type"] == "participant-updated"
                        and frame["participant"]["id"] == slow_id
                        and not frame["participant"]["live"]):
                    slow_gone.set()

        sent: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_everything)
            with trio.fail_after(20.0):
                extra = 5  # keep posting a little after the slow one is gone
                while extra:
                    text = f"{len(sent):05d}:" + "x" * 3994
                    ok = await sender.request({"type": "send-message", "text": text})
                    assert ok["type"] == "ok", ok
                    sent.append(text)
                    assert len(sent) < 5000, "the slow consumer was never disconnected"
                    if slow_gone.is_set():
                        extra -= 1
                while sum(f["type"] == "message-posted" for f in received) < len(sent):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

        # The slow client still holds what its buffers took, then the close.
        code = await close_code(slow, timeout=10.0)
        # The sender and reader were never disconnected.
        listed = await reader.request({"type": "get-participants"})
        live = {p["id"]: p["live"] for p in listed["participants"]}
        assert live[reader.session_id] and live[sender.session_id]
        _, _, body = await curl(f"{srv.http}/metrics")
        metrics = dict(line.split(" ", 1) for line in body.splitlines())
    return SlowConsumerOutcome(sent, received, code, metrics)


async def test_a_slow_consumer_is_dropped_while_the_room_goes_on(
        connect: Connect, make_config: Callable[..., daemon.Config],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="daemon")
    async with running_server(make_config(outbound_queue=8)) as srv:
        outcome = await slow_consumer_scenario(connect, srv)
    posted = [f["message"] for f in outcome.received if f["type"] == "message-posted"]
    # The normal reader got every message, in order, none lost or repeated.
    assert [m["seq"] for m in posted] == list(range(1, len(outcome.sent) + 1))
    assert [m["text"] for m in posted] == outcome.sent
    # The daemon counted it as a slow consumer (the 4011 path), and only that one.
    assert float(outcome.metrics["roomctl_slow_consumer_closes_total"]) == 1
    # ...and said so once in its log, naming the room.
    [line] = [r for r in caplog.records if getattr(r, "event", "") == "closed-slow-consumer"]
    assert line.room == "slow" and "too slow reading" in line.getMessage()
    # As --log-format json writes it: the event with its room, session, connection, peer.
    fields = json.loads(JsonFormatter().format(line))
    assert (fields["level"], fields["event"], fields["room"]) == \
        ("info", "closed-slow-consumer", "slow")
    assert fields["session"] and fields["connection"] and fields["peer"].startswith("127.0.0.1:")


async def test_a_slow_consumer_sees_close_code_4011(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(outbound_queue=8)) as srv:
        outcome = await slow_consumer_scenario(connect, srv)
    assert outcome.slow_close_code == 4011


# --- plain HTTP on the same port ------------------------------------------------------------


async def test_http_endpoints_answer_while_clients_chat(server: Server, connect: Connect) -> None:
    async with connect("http") as alice, connect("http") as bob:
        await alice.hello("alice")
        await bob.hello("bob")
        await alice.request({"type": "send-message", "text": "before curl"})

        status, content_type, body = await curl(f"{server.http}/healthz")
        assert status == 200
        assert content_type.startswith("application/json")
        health = json.loads(body)
        assert health["status"] == "ok"
        assert health["connections"] == 2
        assert health["rooms"] == 1

        status, content_type, body = await curl(f"{server.http}/metrics")
        assert status == 200
        assert content_type.startswith("text/plain")
        metrics = dict(line.split(" ", 1) for line in body.splitlines())
        assert float(metrics['roomctl_connections{kind="room"}']) == 2
        assert float(metrics["roomctl_rooms"]) == 1

        status, _, _ = await curl(f"{server.http}/nowhere")
        assert status == 404
        # A room's path without an upgrade is the HTTP API's: without a token, refused.
        status, _, body = await curl(f"{server.http}/v1/rooms/x")
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
        status, _, _ = await curl(f"{server.http}/v1/admin")
        assert status == 426

        # The WebSocket clients never noticed.
        ok = await bob.request({"type": "send-message", "text": "after curl"})
        assert ok["seq"] == 2
        texts = [(await alice.recv_type("message-posted"))["message"]["text"] for _ in range(2)]
        assert texts == ["before curl", "after curl"]


# --- the admin endpoint ---------------------------------------------------------------------


async def test_admin_with_a_wrong_token_is_closed_with_4001(
        server: Server, connect: Connect) -> None:
    for hello in ({"type": "hello", "token": "not-the-token"}, {"type": "hello", "name": "x"}):
        async with connect(path="/v1/admin") as intruder:
            await intruder.send({**hello, "ref": "h1"})
            frames, code = await closing(intruder)
            assert code == 4001
            assert all(f["type"] == "error" for f in frames)
    # The daemon still serves the right token.
    async with admin(connect, server) as root:
        assert (await root.request({"type": "list-rooms"}))["type"] == "rooms"


ERROR_BEFORE_CLOSE_BUG = (
    "BUG: a frame queued just before Connection.close() is lost: _writer has already taken "
    "it off the queue when conn.cancel_scope is cancelled, send_message raises Cancelled at "
    "its first checkpoint, and _finish only flushes what is still queued "
    "(daemon/server.py _writer)"
)


async def test_admin_with_a_wrong_token_gets_an_unauthorized_error_before_the_close(
        server: Server, connect: Connect) -> None:
    async with connect(path="/v1/admin") as intruder:
        await intruder.send({"type": "hello", "token": "not-the-token", "ref": "h1"})
        frames, code = await closing(intruder)
        assert code == 4001
        assert [(f["type"], f["code"], f["ref"]) for f in frames] == [
            ("error", "unauthorized", "h1")]


async def test_admin_manages_rooms(server: Server, connect: Connect) -> None:
    async with admin(connect, server) as root:
        created = await root.request({"type": "create-room", "room": "ops",
                                      "meta": {"topic": "incidents", "max_participants": 3}})
        assert created["type"] == "room"
        assert created["room"]["name"] == "ops"
        assert created["room"]["app"] == "chat"
        assert created["room"]["meta"]["topic"] == "incidents"
        assert created["room"]["meta"]["max_participants"] == 3

        again = await root.request({"type": "create-room", "room": "ops"})
        assert again["type"] == "error" and again["code"] == "conflict"
        again = await root.request({"type": "create-room", "room": "ops", "if_missing": True})
        assert again["type"] == "room" and again["room"]["meta"]["topic"] == "incidents"
        bad = await root.request({"type": "create-room", "room": "x", "app": "nope"})
        assert bad["type"] == "error" and bad["code"] == "bad-request"

        async with connect("ops") as alice:
            welcome = await alice.hello("alice")
            assert welcome["room"]["meta"]["topic"] == "incidents"

            listed = await root.request({"type": "list-rooms"})
            assert listed["type"] == "rooms"
            assert [(r["name"], r["participants"]) for r in listed["rooms"]] == [("ops", 1)]

            details = await root.request({"type": "get-room", "room": "ops"})
            assert details["type"] == "room"
            assert names(details["participants"]) == {alice.session_id: "alice"}

            missing = await root.request({"type": "get-room", "room": "nope"})
            assert missing["type"] == "error" and missing["code"] == "not-found"

            deleted = await root.request({"type": "delete-room", "room": "ops"})
            assert deleted["type"] == "ok"
            assert await close_code(alice.ws) == 4010

        listed = await root.request({"type": "list-rooms"})
        assert listed["rooms"] == []
        missing = await root.request({"type": "delete-room", "room": "ops"})
        assert missing["code"] == "not-found"


async def test_admin_kicks_a_participant(server: Server, connect: Connect) -> None:
    async with connect("kick") as alice, connect("kick") as mallory:
        await alice.hello("alice")
        await mallory.hello("mallory")
        async with admin(connect, server) as root:
            ok = await root.request({"type": "kick", "room": "kick",
                                     "participant_id": mallory.session_id})
            assert ok["type"] == "ok"
            assert await close_code(mallory.ws) == 4009
            left = await alice.recv_type("participant-left")
            assert left == {"type": "participant-left", "participant_id": mallory.session_id,
                            "reason": "kicked"}
            # Kicked means gone at once: no grace, no resume.
            again = await root.request({"type": "kick", "room": "kick",
                                        "participant_id": mallory.session_id})
            assert again["code"] == "not-found"
        async with connect("kick") as mallory_again:
            error = await mallory_again.hello("mallory", resume=mallory.resume_token)
            assert error["code"] == "not-found"


async def test_without_auto_create_unknown_rooms_are_refused(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(auto_create=False)) as srv:
        async with connect("later", target=srv) as early:
            await early.send({"type": "hello", "name": "early", "ref": "h1"})
            frames, code = await closing(early)
            assert code == 4004
            assert all(f["type"] == "error" for f in frames)

        async with admin(connect, srv) as root:
            listed = await root.request({"type": "list-rooms"})
            assert listed["rooms"] == []  # the refused hello created nothing
            created = await root.request({"type": "create-room", "room": "later"})
            assert created["type"] == "room"

        async with connect("later", target=srv) as on_time:
            welcome = await on_time.hello("on time")
            assert welcome["type"] == "welcome"
            assert welcome["room"]["name"] == "later"


async def test_without_auto_create_the_refusal_is_a_not_found_error_then_4004(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(auto_create=False)) as srv, \
            connect("ghost", target=srv) as early:
        await early.send({"type": "hello", "name": "early", "ref": "h1"})
        frames, code = await closing(early)
        assert code == 4004
        assert [(f["type"], f["code"], f["ref"]) for f in frames] == [
            ("error", "not-found", "h1")]


# --- shutdown and restart -------------------------------------------------------------------


async def test_graceful_shutdown_closes_clients_with_1001(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with embedded(make_config()) as running, \
            connect("bye", target=running.server) as alice, \
            connect("bye", target=running.server, binary=True) as bob:
        await alice.hello("alice")
        await bob.hello("bob")
        running.scope.cancel()
        assert await close_code(alice.ws) == 1001
        assert await close_code(bob.ws) == 1001
        with trio.fail_after(WAIT):
            await running.stopped.wait()
    with pytest.raises(OSError):
        # Nothing listens on the port any more.
        await trio.open_tcp_stream(running.server.host, running.server.port)


async def test_graceful_shutdown_is_prompt_when_clients_answer_the_close(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    async with embedded(make_config()) as running, \
            connect("bye", target=running.server) as alice:
        await alice.hello("alice")
        started = trio.current_time()
        running.scope.cancel()
        # The client reads at once, so trio-websocket answers the close immediately.
        assert await close_code(alice.ws) == 1001
        with trio.fail_after(WAIT):
            await running.stopped.wait()
        assert trio.current_time() - started < 1.0


async def test_history_topic_and_pins_survive_a_restart(
        connect: Connect, make_config: Callable[..., daemon.Config]) -> None:
    config = make_config(memory=False)
    texts = ["first", "second ✓", "third"]
    async with running_server(config) as srv:
        async with connect("durable", target=srv) as alice:
            await alice.hello("alice")
            for n, text in enumerate(texts, start=1):
                assert (await alice.request({"type": "send-message", "text": text}))["seq"] == n
            assert (await alice.request({"type": "set-topic", "topic": "kept"}))["type"] == "ok"
            assert (await alice.request({"type": "pin", "seq": 2}))["type"] == "ok"
            assert (await alice.request({"type": "pin", "seq": 3}))["type"] == "ok"
            assert (await alice.request({"type": "unpin", "seq": 3}))["type"] == "ok"
    assert (config.data_dir / "roomctl.db").exists()

    async with running_server(config) as srv:
        async with connect("durable", target=srv) as bob:
            welcome = await bob.hello("bob")
            room = welcome["room"]
            assert room["last_seq"] == 3
            assert room["meta"]["topic"] == "kept"
            assert room["meta"]["pins"] == [2]
            assert room["meta"]["creator"] == "alice"

            history = await bob.request({"type": "get-messages"})
            assert [(m["seq"], m["text"], m["sender_name"]) for m in history["messages"]] == [
                (1, "first", "alice"), (2, "second ✓", "alice"), (3, "third", "alice")]

            ok = await bob.request({"type": "send-message", "text": "fourth"})
            assert ok["seq"] == 4


# --- embedding ------------------------------------------------------------------------------


async def test_config_takes_str_paths_as_an_embedding_program_would_give_them(
        connect: Connect, tmp_path: pathlib.Path) -> None:
    # A str used to pass the constructor and fail deep inside serve().
    data_dir = str(tmp_path / "from-a-string")
    config = daemon.Config(port=0, data_dir=data_dir, tls_cert=None)
    assert config.data_dir == pathlib.Path(data_dir)
    tls = daemon.Config(tls_cert="cert.pem", tls_key="key.pem")
    assert (tls.tls_cert, tls.tls_key) == (pathlib.Path("cert.pem"), pathlib.Path("key.pem"))

    async with embedded(config) as running:
        async with connect("kept", target=running.server) as alice:
            await alice.hello("alice")
            assert (await alice.request({"type": "send-message", "text": "on disk"}))["seq"] == 1
    assert (pathlib.Path(data_dir) / "roomctl.db").exists()


def test_config_refuses_a_negative_empty_timeout() -> None:
    with pytest.raises(ValueError, match="empty_timeout"):
        daemon.Config(empty_timeout=-1)
