"""A client that pipelines many requests but reads as it goes is not a slow consumer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

import daemon
from tests.conftest import running_server


async def test_a_pipelining_client_that_reads_gets_every_answer(
        connect: Any, make_config: Callable[..., daemon.Config]) -> None:
    # A small backlog, so that one committed batch produces more frames for the poster
    # than the backlog holds (a batch carries every message queued meanwhile): they leave in one
    # write and must not count as a backlog. 64 rather than 16: the client shares the test's
    # trio loop with the daemon, and on a loaded machine it can fall a few writes behind.
    count = 3000
    async with running_server(make_config(outbound_queue=64, rate_limit=0)) as srv, \
            connect("pipe", target=srv) as poster:
        await poster.hello("pipeline")
        oks: list[int] = []
        posted: list[int] = []

        async def send_all() -> None:
            for i in range(count):
                await poster.send_raw(json.dumps(
                    {"type": "send-message", "text": f"line {i}", "ref": f"p{i}"}))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                while len(oks) < count or len(posted) < count:
                    frame = await poster.recv(timeout=30)
                    if frame["type"] == "ok":
                        oks.append(frame["seq"])
                    elif frame["type"] == "message-posted":
                        posted.append(frame["message"]["seq"])
                    else:
                        raise AssertionError(frame)
        assert oks == list(range(1, count + 1))
        assert posted == list(range(1, count + 1))
