"""Rooms made by visiting a name go away once empty; rooms someone made or used stay.

Issue 13 item 16: before, every hello to a new name made a durable room, so anyone who
could open the page could fill ``--max-rooms`` for good. These tests run the real daemon
on a real port (and a real SQLite file across a restart), with short empty timeouts;
the rules themselves, with exact effects and an injected clock, are in test_engine.py.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

import daemon
from tests.conftest import WAIT, Client, Server, running_server


@asynccontextmanager
async def connect(srv: Server, room: str | None = None) -> AsyncIterator[Client]:
    path = f"/v1/rooms/{room}" if room else "/v1/admin"
    async with trio_websocket.open_websocket_url(
            srv.url + path, subprotocols=["roomctl.v1"], connect_timeout=WAIT,
            disconnect_timeout=WAIT) as ws:
        client = Client(ws, binary=False)
        if room is None:
            assert (await client.hello(None, token=srv.admin_token))["type"] == "welcome"
        yield client


async def rooms(srv: Server) -> list[dict[str, Any]]:
    async with connect(srv) as admin:
        reply = await admin.request({"type": "list-rooms"})
    listed: list[dict[str, Any]] = reply["rooms"]
    return listed


async def room_names(srv: Server) -> list[str]:
    return [room["name"] for room in await rooms(srv)]


async def wait_for_rooms(srv: Server, expected: list[str]) -> None:
    """Poll the room list until it is ``expected`` (bounded by WAIT)."""
    names: list[str] = []
    with trio.move_on_after(WAIT):
        while (names := await room_names(srv)) != expected:
            await trio.sleep(0.05)
    assert names == expected


async def visit(srv: Server, room: str, **hello: Any) -> None:
    """Open the room (making it, if new), say hello, and leave at once."""
    async with connect(srv, room) as client:
        reply = await client.hello("visitor", **hello)
        assert reply["type"] == "welcome", reply
        assert (await client.request({"type": "leave"}))["type"] == "ok"


async def test_a_visited_room_goes_once_empty_and_used_or_created_rooms_stay(
        make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(empty_timeout=0.3, grace=0.0)) as srv:
        async with connect(srv) as admin:
            assert (await admin.request({"type": "create-room", "room": "made"}))["type"] == "room"
        await visit(srv, "made")  # visiting a created room does not make it implicit
        async with connect(srv, "chatted") as alice:
            await alice.hello("alice")
            assert (await alice.request({"type": "send-message", "text": "hi"}))["type"] == "ok"
        async with connect(srv, "topical") as bob:
            await bob.hello("bob")
            assert (await bob.request({"type": "set-topic", "topic": "plans"}))["type"] == "ok"
        async with connect(srv, "watched") as watcher:
            await watcher.hello(None, hidden=True)  # a hidden observer keeps it alive...
            await visit(srv, "passing-by")
            await wait_for_rooms(srv, ["chatted", "made", "topical", "watched"])
            await trio.sleep(0.5)
            assert "watched" in await room_names(srv)
        # ...until it goes; then the room follows.
        await wait_for_rooms(srv, ["chatted", "made", "topical"])


async def test_a_waiting_room_stays_if_someone_comes_back_in_time(
        make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(empty_timeout=0.6, grace=0.0)) as srv:
        await visit(srv, "standup")
        [first] = await rooms(srv)
        async with connect(srv, "standup") as again:
            await again.hello("again")
            await trio.sleep(1.0)  # past the timeout, but the room is not empty
            assert await rooms(srv) == [{**first, "participants": 1}]  # the same room
        await wait_for_rooms(srv, [])


async def test_a_flood_of_visits_never_locks_out_room_creation(
        make_config: Callable[..., daemon.Config]) -> None:
    # What the issue measured: visitors trying names filled --max-rooms for good. Now a
    # visit at the limit pushes out the room that has waited longest, every visit is
    # welcomed, an administrator can still create a room, and the visits leave nothing.
    visits, limit = 150, 20
    config = make_config(empty_timeout=3600, grace=0.0, max_rooms=limit,
                         max_connections_per_address=0, rate_limit=0)
    async with running_server(config) as srv:
        for n in range(visits):
            await visit(srv, f"guess-{n}")  # each one welcomed, none limit-reached
        # The newest visits' rooms are the ones still waiting.
        assert sorted(await room_names(srv)) == sorted(
            f"guess-{n}" for n in range(visits - limit, visits))
        async with connect(srv) as admin:
            made = await admin.request({"type": "create-room", "room": "needed"})
            assert made["type"] == "room", made
        assert "needed" in await room_names(srv)


async def test_waiting_rooms_found_at_start_up_get_their_timer(
        make_config: Callable[..., daemon.Config], tmp_path: pathlib.Path) -> None:
    data = tmp_path / "kept"
    # The first run stops long before the timeout: the rooms are on disk, still waiting.
    async with running_server(make_config(data_dir=data, memory=False, grace=0.0,
                                          empty_timeout=3600)) as srv:
        await visit(srv, "passing-by")
        async with connect(srv, "chatted") as alice:
            await alice.hello("alice")
            assert (await alice.request({"type": "send-message", "text": "hi"}))["type"] == "ok"
        assert await room_names(srv) == ["chatted", "passing-by"]
    async with running_server(make_config(data_dir=data, memory=False,
                                          empty_timeout=0.3)) as srv:
        await wait_for_rooms(srv, ["chatted"])
    # ...and the removal reached the database.
    async with running_server(make_config(data_dir=data, memory=False)) as srv:
        assert await room_names(srv) == ["chatted"]
