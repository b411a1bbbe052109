"""Clients that drop and resume while their room chats lose nothing, by sequence number.

The recipe the protocol page gives: remember the last seq seen; after a resume, ask
get-messages after it (paging with has_more), then carry on with live message-posted
frames, dropping seqs already seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import trio

import daemon
from tests.conftest import Client, running_server

ROOMS = 3
CLIENTS_PER_ROOM = 6
POSTS_PER_CLIENT = 15


async def test_dropping_and_resuming_clients_see_every_message_once_in_order(
        connect: Any, make_config: Callable[..., daemon.Config]) -> None:
    rng = random.Random(7)
    seen: dict[tuple[int, int], list[int]] = {}
    tokens: dict[tuple[int, int], str] = {}
    posted_seqs: dict[int, set[int]] = {r: set() for r in range(ROOMS)}

    async with running_server(make_config(grace=30)) as srv:

        async def member(room: int, index: int) -> None:
            name = f"room{room}"
            mine: list[int] = []
            seen[(room, index)] = mine
            token: str | None = None

            def note(seq: int) -> None:
                if not mine or seq > mine[-1]:
                    mine.append(seq)

            async def catch_up(client: Client) -> None:
                while True:
                    page = await client.request(
                        {"type": "get-messages", "after": mine[-1] if mine else 0, "limit": 7})
                    for m in page["messages"]:
                        note(m["seq"])
                    if not page["has_more"]:
                        return

            posts_left = POSTS_PER_CLIENT
            while posts_left:
                async with connect(name, target=srv) as client:
                    if token is None:
                        await client.hello(f"m{index}")
                    else:
                        welcome = await client.hello(f"m{index}", resume=token)
                        assert welcome["type"] == "welcome" and welcome["resumed"], welcome
                    token = client.resume_token
                    await catch_up(client)
                    # Post a few, reading everything that arrives meanwhile, then drop.
                    burst = min(posts_left, rng.randint(1, 5))
                    for _ in range(burst):
                        ok = await client.request({"type": "send-message", "text": f"{index}"})
                        assert ok["type"] == "ok"
                        posted_seqs[room].add(ok["seq"])
                        posts_left -= 1
                        while client.pending:
                            frame = client.pending.popleft()
                            if frame["type"] == "message-posted":
                                note(frame["message"]["seq"])
                    with trio.move_on_after(rng.uniform(0.0, 0.05)):
                        while True:
                            frame = await client.recv()
                            if frame["type"] == "message-posted":
                                note(frame["message"]["seq"])
                    # Leave the block: a normal close, which keeps the session for the grace.
            assert token is not None
            tokens[(room, index)] = token

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for room in range(ROOMS):
                    for index in range(CLIENTS_PER_ROOM):
                        nursery.start_soon(member, room, index)

        total = CLIENTS_PER_ROOM * POSTS_PER_CLIENT
        for room in range(ROOMS):
            assert posted_seqs[room] == set(range(1, total + 1))
        # Everyone has finished posting: each client resumes once more, catches up from its
        # last seq, and must then hold every message of its room exactly once, in order.
        for (room, index), mine in seen.items():
            async with connect(f"room{room}", target=srv) as client:
                welcome = await client.hello(f"m{index}", resume=tokens[(room, index)])
                assert welcome["resumed"], welcome
                after = mine[-1] if mine else 0
                page = await client.request({"type": "get-messages", "after": after,
                                             "limit": 1000})
                assert not page["has_more"]
                assert all(m["seq"] > after for m in page["messages"])
                mine += [m["seq"] for m in page["messages"]]
            assert mine == list(range(1, total + 1)), (room, index)
