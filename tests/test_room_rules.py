"""Room rules as a sysadmin meets them through ``roomctl`` and the lobby's JSON list.

A real ``roomctl serve`` subprocess and the real CLI (issue 13, items 10 and 15): the
participant cap at ``room create``, ``room pin``/``room unpin`` both idempotent, and
private rooms never listed for people who showed no token.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import pytest
import trio_websocket

from tests.conftest import Client, ServeProcess
from tests.test_cli import one_error_line, roomctl


def lobby(sp: ServeProcess) -> list[str]:
    """The room names ``GET /v1/rooms`` lists (what the lobby page shows)."""
    with urllib.request.urlopen(sp.http + "/v1/rooms", timeout=10) as response:
        return [room["name"] for room in json.load(response)["rooms"]]


@pytest.fixture
def sp(serve_process: Callable[..., ServeProcess]) -> ServeProcess:
    return serve_process("--log-level", "warning")


async def test_room_create_over_the_participant_cap_is_refused_naming_the_cap(
        sp: ServeProcess) -> None:
    over = await roomctl(sp, "room", "create", "big", "--max-participants", "500")
    assert over.rc == 1
    assert "cap of 100 participants per room" in one_error_line(over)
    assert (await roomctl(sp, "room", "show", "big")).rc == 3  # nothing was made
    at_cap = await roomctl(sp, "room", "create", "big", "--max-participants", "100")
    assert at_cap.rc == 0, at_cap.err


async def test_pin_and_unpin_are_both_idempotent_and_an_unknown_seq_is_not_found(
        sp: ServeProcess) -> None:
    assert (await roomctl(sp, "room", "create", "ops")).rc == 0
    assert (await roomctl(sp, "post", "ops", "deploy at noon")).rc == 0
    for command in ("pin", "pin", "unpin", "unpin"):
        done = await roomctl(sp, "room", command, "ops", "1")
        assert (done.rc, done.err) == (0, ""), command
    for command in ("pin", "unpin"):
        missing = await roomctl(sp, "room", command, "ops", "2")
        assert missing.rc == 3 and "no message 2" in one_error_line(missing), command


@pytest.mark.parametrize("flags", [[], ["--require-tokens"]])
async def test_a_private_room_is_never_listed_in_the_lobby_even_if_public(
        serve_process: Callable[..., ServeProcess], flags: list[str]) -> None:
    # The CLI may refuse --public with --private; create-room takes both, so the
    # daemon's own rule is tested here, on the admin endpoint.
    sp = serve_process("--log-level", "warning", *flags)
    async with trio_websocket.open_websocket_url(sp.url + "/v1/admin",
                                                 subprotocols=["roomctl.v1"]) as ws:
        admin = Client(ws, binary=False)
        token = (sp.data_dir / "admin-token").read_text().strip()
        assert (await admin.hello(None, token=token))["type"] == "welcome"
        for room, private in (("both", True), ("open-and-public", False)):
            made = await admin.request({"type": "create-room", "room": room, "private": private,
                                        "meta": {"public": True}})
            assert made["room"]["meta"]["public"] is True
    # Under --require-tokens every room is private, so the lobby lists nothing at all.
    assert lobby(sp) == ([] if flags else ["open-and-public"])
