"""Writes commit in the order the engine made them, those made by commit callbacks too.

A ``Persist`` made inside a commit callback used to be started with ``start_soon``; trio
does not keep the order of tasks started in one batch (it shuffles them on purpose), so
two such writes could commit in either order. Here an app's commit callback issues two
writes of the same room row, "first" then "second", many times over, against a real
daemon and a real SQLite file: the row must always end as "second".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

import daemon
from daemon.apps.api import App, Context, handles
from daemon.store import Store
from protocol import Request
from protocol.messages import Hello
from tests.conftest import running_server

ROUNDS = 40


class Step(msgspec.Struct, frozen=True, kw_only=True):
    round: int = 0
    label: str = ""


class Bump(Request, tag="bump", frozen=True, kw_only=True):
    round: int


class TwoWrites(App[Step, None]):
    """On each ``bump``: one write, and from its commit callback two more, in order."""

    name = "two-writes"
    room_meta_type = Step

    def admit(self, ctx: Context, hello: Hello) -> None:
        return None

    @handles(Bump)
    def bump(self, ctx: Context, request: Bump) -> None:
        def committed(after: Context) -> None:
            after.persist(after.set_room_meta(Step(round=request.round, label="first")))
            after.persist(after.set_room_meta(Step(round=request.round, label="second")),
                          then=lambda done: done.ok())

        ctx.persist(ctx.set_room_meta(Step(round=request.round, label="start")),
                    then=committed)


async def test_persists_from_one_callback_commit_in_the_order_they_were_made(
        make_config: Callable[..., daemon.Config], connect: Any) -> None:
    config = make_config(memory=False)
    async with running_server(config, [TwoWrites()]) as server:
        async with connect("ordered", target=server) as client:
            assert (await client.hello())["type"] == "welcome"
            for round_ in range(1, ROUNDS + 1):
                reply = await client.request({"type": "bump", "round": round_})
                assert reply["type"] == "ok"
                stored = _stored_step(config, "ordered")
                assert stored == Step(round=round_, label="second"), round_


def _stored_step(config: daemon.Config, room: str) -> Step:
    assert config.db_path is not None
    store = Store.open(config.db_path)
    try:
        (found,) = [r for r in store.load_rooms() if r.name == room]
    finally:
        store.close()
    return msgspec.json.decode(found.meta, type=Step)

