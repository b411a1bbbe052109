"""Node-to-node links over a real Redis: in order, coalesced, and broken loudly, never
silently, when something may have been lost."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from daemon.cluster.links import AnyMessage, Deliver, Frames, Links, Open
from daemon.cluster.redis import client
from tests.redis_util import RedisServer, running_redis


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Any:
    with running_redis(tmp_path / "redis") as server:
        yield server


class Node:
    def __init__(self) -> None:
        self.received: list[tuple[str, AnyMessage]] = []
        self.broken: list[str] = []
        self.subscribed: list[bool] = []
        self.changed = trio.Event()

    def on_message(self, sender: str, message: AnyMessage) -> None:
        self.received.append((sender, message))
        self.changed.set()
        self.changed = trio.Event()

    def on_broken(self, node: str) -> None:
        self.broken.append(node)

    def on_subscribed(self, first: bool) -> None:
        self.subscribed.append(first)

    async def until(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.received) < count:
                await self.changed.wait()


@asynccontextmanager
async def linked(server: RedisServer, *names: str) -> AsyncIterator[dict[str, tuple[Links, Node]]]:
    nodes: dict[str, tuple[Links, Node]] = {}
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client(server.url)) for _ in names]
        async with trio.open_nursery() as nursery:
            for name, redis in zip(names, clients, strict=True):
                node = Node()
                links = Links(redis, name, on_message=node.on_message, on_broken=node.on_broken,
                              on_subscribed=node.on_subscribed)
                await nursery.start(links.run)
                nodes[name] = (links, node)
            yield nodes
            nursery.cancel_scope.cancel()


async def test_messages_arrive_in_order_and_one_broadcast_travels_once(
        redis_server: RedisServer) -> None:
    async with linked(redis_server, "a", "b") as nodes:
        a, _ = nodes["a"]
        _, b = nodes["b"]
        a.send("b", Open(cid=1, kind="room", room="ops", format="roomctl.v1", peer="x"))
        for n in range(500):
            a.send("b", Frames(cid=1, frames=[f"frame {n}"]))
        payload = b"\x81\x05hello"
        for cid in (7, 8, 9):
            a.send("b", Deliver(cids=[cid], data=payload))
        await b.until(502)
        assert [m.frames[0] for _, m in b.received[1:501]] == \
            [f"frame {n}" for n in range(500)]  # type: ignore[union-attr]
        sender, broadcast = b.received[501]
        assert sender == "a" and broadcast == Deliver(cids=[7, 8, 9], data=payload)
        assert b.broken == []


async def test_a_lost_subscription_is_reported_once_it_is_back(
        redis_server: RedisServer) -> None:
    async with linked(redis_server, "a", "b") as nodes:
        a, _ = nodes["a"]
        b_links, b = nodes["b"]
        a.send("b", Frames(cid=1, frames=["before"]))
        await b.until(1)
        redis_server.stop()
        await trio.sleep(0.5)
        redis_server.start()
        with trio.fail_after(10):
            while not b_links.connected:
                await trio.sleep(0.05)
        # What anyone published while b was away is unknowable: b is told, to reset all.
        assert b.subscribed == [True, False]
        a.send("b", Frames(cid=1, frames=["after"]))
        await b.until(2)
        assert b.received[-1][1] == Frames(cid=1, frames=["after"])


async def test_a_skipped_batch_is_a_broken_link(redis_server: RedisServer) -> None:
    async with linked(redis_server, "a", "b") as nodes:
        a, _ = nodes["a"]
        _, b = nodes["b"]
        a.send("b", Frames(cid=1, frames=["one"]))
        await b.until(1)
        a._outboxes["b"].next_seq += 3  # as if three batches were lost on the way
        a.send("b", Frames(cid=1, frames=["two"]))
        await b.until(2)
        assert b.broken == ["a"]
