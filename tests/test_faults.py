"""A bug in one connection's handling closes that connection (1011) and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import trio_websocket

import daemon
from daemon.apps.api import Context, handles
from daemon.apps.chat import ChatApp
from protocol import Request
from tests.conftest import running_server


class Explode(Request, tag="explode", frozen=True, kw_only=True):
    """A request whose handler has a bug."""


class FragileChat(ChatApp):
    """The chat app plus one request that raises: a stand-in for a bug in an app."""

    name = "fragile"

    @handles(Explode)
    def explode(self, ctx: Context, request: Explode) -> None:
        raise RuntimeError("a bug in an app handler")


async def test_a_handler_crash_closes_only_that_connection_with_1011(
        make_config: Callable[..., daemon.Config], connect: Any) -> None:
    async with running_server(make_config(), [FragileChat()]) as srv:
        async with connect("r", target=srv) as alice, connect("r", target=srv) as bob:
            await alice.hello("alice")
            await bob.hello("bob")
            await bob.send({"type": "explode"})
            try:
                while True:
                    await bob.recv()
            except trio_websocket.ConnectionClosed as closed:
                assert closed.reason.code == 1011
            left = await alice.recv_type("participant-updated")
            assert left["participant"]["live"] is False
            # Alice, the room and the daemon carry on.
            assert (await alice.request({"type": "send-message", "text": "still here"}))["seq"] == 1
            async with connect("r", target=srv) as carol:
                await carol.hello("carol")
                page = await carol.request({"type": "get-messages"})
                assert [m["text"] for m in page["messages"]] == ["still here"]


def test_fragile_chat_really_adds_a_request_type() -> None:
    # The test above relies on `explode` reaching the handler, not failing to decode.
    assert msgspec.json.decode(b'{"type":"explode"}', type=Explode) == Explode()
