"""What the daemon's log says at info level: one line per event, floods held back, no token.

A real daemon on a real port, real WebSocket clients; the log records are caught with
pytest's ``caplog`` from the ``roomctl`` logger tree, as ``roomctl serve`` would print
them. Each record carries its context in ``extra`` (``event``, ``room``, ``peer``...),
which is what these tests look at, besides the message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio_websocket

import daemon
from tests.conftest import WAIT, Client, Server, closing, running_server


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="daemon")
    return caplog


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


@asynccontextmanager
async def connect(srv: Server, room: str, path: str | None = None) -> AsyncIterator[Client]:
    async with trio_websocket.open_websocket_url(
            srv.url + (path or f"/v1/rooms/{room}"), subprotocols=["roomctl.v1"],
            connect_timeout=WAIT, disconnect_timeout=WAIT) as ws:
        yield Client(ws, binary=False)


async def test_rooms_kicks_and_tokens_get_one_line_each_and_no_token_is_logged(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(make_config()) as srv:
        async with connect(srv, "ops", path="/v1/admin") as admin:
            await admin.hello(None, token=srv.admin_token)
            assert (await admin.request({"type": "create-room", "room": "ops"}))["type"] == "room"
            issued = await admin.request({"type": "create-token", "room": "ops",
                                          "identity": "ci-bot", "grants": ["join", "post"]})
            async with connect(srv, "ops") as alice, \
                    connect(srv, "drop-in") as visitor:
                await alice.hello("alice")
                await visitor.hello("visitor")
                kicked = await admin.request({"type": "kick", "room": "ops",
                                              "participant_id": alice.session_id})
                assert kicked["type"] == "ok"
            assert (await admin.request({"type": "delete-room", "room": "ops"}))["type"] == "ok"

    created = events(caplog, "room-created")
    assert [(r.room, r.implicit) for r in created] == [("ops", False), ("drop-in", True)]
    [kick] = events(caplog, "kicked")
    assert (kick.room, kick.session) == ("ops", alice.session_id)
    [token_line] = events(caplog, "token-issued")
    assert (token_line.room, token_line.identity, token_line.grants) == \
        ("ops", "ci-bot", "join,post")
    [deleted] = events(caplog, "room-deleted")
    assert deleted.room == "ops"
    [stopped] = events(caplog, "stopped")
    assert stopped.getMessage().startswith("stopped after ")
    # The token itself is in no line and in no record's fields.
    token = issued["token"]
    for record in caplog.records:
        assert token not in record.getMessage()
        assert all(token not in str(value) for value in vars(record).values())
        assert srv.admin_token not in record.getMessage()


async def test_refused_tokens_are_logged_but_a_flood_costs_a_few_lines(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    flood = 60
    async with running_server(make_config(max_connections_per_address=0)) as srv:
        for n in range(flood):
            async with connect(srv, "lobby") as client:
                reply = await client.hello("mallory", token=f"forged-{n}")
                assert reply["code"] == "unauthorized"
                _, code = await closing(client)
                assert code == 4001

    lines = events(caplog, "token-refused")
    # A burst of 10, perhaps one more as the bucket refills while the flood goes on.
    assert 10 <= len(lines) <= 12
    assert all(r.peer.startswith("127.0.0.1:") for r in lines)
    assert lines[0].getMessage().endswith("not a valid token")
    assert not any("forged-" in r.getMessage() for r in caplog.records)
    # What was held back is counted, in the lines that passed after it and at the stop.
    reported = sum(r.suppressed for r in lines) + sum(
        r.suppressed for r in events(caplog, "suppressed"))
    assert len(lines) + reported == flood


async def test_a_hello_refused_by_a_private_room_is_logged(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(make_config(require_tokens=True)) as srv:
        async with connect(srv, "vault") as stranger:
            assert (await stranger.hello("stranger"))["code"] == "unauthorized"

    [refused] = events(caplog, "hello-refused")
    assert (refused.room, refused.code) == ("vault", "unauthorized")
    assert "needs a join token" in refused.getMessage()


async def test_a_rate_limit_close_is_logged_with_its_room_and_peer(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(rate_limit=1.0, rate_burst=1, max_rate_limited=3)
    async with running_server(config) as srv:
        async with connect(srv, "busy") as greedy:
            await greedy.hello("greedy")
            with trio.fail_after(WAIT):
                for _ in range(20):
                    try:
                        await greedy.send({"type": "get-participants"})
                    except trio_websocket.ConnectionClosed:
                        break
                _, code = await closing(greedy)
            assert code == 1008

    [closed] = events(caplog, "closed-rate-limit")
    assert closed.room == "busy" and closed.session == greedy.session_id
    assert closed.peer.startswith("127.0.0.1:")
    assert "rate limit" in closed.getMessage()


async def test_a_room_removed_after_the_empty_timeout_is_logged(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(make_config(empty_timeout=0.0, grace=0.0)) as srv:
        async with connect(srv, "passing-by") as visitor:
            await visitor.hello("visitor")
        with trio.fail_after(WAIT):
            while not events(caplog, "room-expired"):
                await trio.sleep(0.02)

    [expired] = events(caplog, "room-expired")
    assert expired.room == "passing-by"
