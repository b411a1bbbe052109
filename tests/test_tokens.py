"""Join tokens and private rooms: who may join, post, take part in the call and administer.

The matrix runs every kind of token (valid, expired, forged, for another room, missing the
grant) against every kind of operation (join, post, media, admin) on a real daemon with real
WebSocket clients, and checks the exact error code and close code. CLI tests check that
``roomctl token create`` makes working tokens and that a refused token exits 4.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

import daemon
from daemon.tokens import JOIN_SECRET_FILE, Authority, ensure_join_secret
from tests.conftest import WAIT, Client, ServeProcess, Server, closing, running_server
from tests.test_cli import one_error_line, roomctl

ROOM = "vault"
OTHER = "elsewhere"
ALL = ["join", "post", "media", "hidden", "admin"]


@pytest.fixture
async def private_server(make_config: Callable[..., daemon.Config]) -> AsyncIterator[Server]:
    async with running_server(make_config()) as srv:
        async with admin(srv) as client:
            for name, private in ((ROOM, True), (OTHER, True), ("lobby", False)):
                reply = await client.request({"type": "create-room", "room": name,
                                              "private": private})
                assert reply["type"] == "room" and reply["room"]["private"] is private
        yield srv


@asynccontextmanager
async def ws(srv: Server, path: str) -> AsyncIterator[Client]:
    async with trio_websocket.open_websocket_url(
        srv.url + path, subprotocols=["roomctl.v1"], connect_timeout=WAIT,
        disconnect_timeout=WAIT,
    ) as conn:
        yield Client(conn, binary=False)


@asynccontextmanager
async def admin(srv: Server, token: str | None = None) -> AsyncIterator[Client]:
    async with ws(srv, "/v1/admin") as client:
        welcome = await client.hello(name=None, token=token or srv.admin_token)
        assert welcome["type"] == "welcome", welcome
        yield client


def authority(srv: Server) -> Authority:
    return Authority(ensure_join_secret(srv.data_dir), admin_token=lambda: srv.admin_token)


def make_token(srv: Server, kind: str, grants: list[str], room: str = ROOM) -> str:
    """A token of ``kind``: valid, expired, forged, wrong-room or missing-grant."""
    if kind == "forged":
        forger = Authority(b"\x01" * 32, admin_token=lambda: "x")
        return forger.issue(room=room, identity="mallory", name=None, grants=grants, ttl=600,
                            now=time.time())[0]
    if kind == "expired":
        return authority(srv).issue(room=room, identity="late", name=None, grants=grants,
                                    ttl=60, now=time.time() - 3600)[0]
    if kind == "wrong-room":
        room = OTHER
    return authority(srv).issue(room=room, identity="alice", name="Alice", grants=grants,
                                ttl=600, now=time.time())[0]


async def refused_hello(client: Client, **hello: Any) -> tuple[str, int]:
    """Say hello, expect an error and a close; return the error code and close code."""
    reply = await client.hello(**hello)
    assert reply["type"] == "error", reply
    _, code = await closing(client)
    return reply["code"], code


# Operations: how each is attempted with a token, and the grant it needs.
async def op_join(srv: Server, token: str) -> str:
    async with ws(srv, f"/v1/rooms/{ROOM}") as client:
        reply = await client.hello(token=token)
        if reply["type"] == "welcome":
            return "ok"
        _, code = await closing(client)
        return f"{reply['code']}/{code}"


async def _in_room_then(srv: Server, token: str, frame: dict[str, Any]) -> str:
    async with ws(srv, f"/v1/rooms/{ROOM}") as client:
        reply = await client.hello(token=token)
        if reply["type"] != "welcome":
            _, code = await closing(client)
            return f"{reply['code']}/{code}"
        answer = await client.request(frame)
        if answer["type"] == "ok":
            return "ok"
        # A refused request leaves the connection open: it still answers.
        assert (await client.request({"type": "get-participants"}))["type"] == "participants"
        return str(answer["code"])


async def op_post(srv: Server, token: str) -> str:
    return await _in_room_then(srv, token, {"type": "send-message", "text": "hello"})


async def op_media(srv: Server, token: str) -> str:
    return await _in_room_then(srv, token, {"type": "join"})


async def op_admin(srv: Server, token: str) -> str:
    async with ws(srv, "/v1/admin") as client:
        reply = await client.hello(name=None, token=token)
        if reply["type"] != "welcome":
            _, code = await closing(client)
            return f"{reply['code']}/{code}"
        answer = await client.request({"type": "get-room", "room": ROOM})
        return "ok" if answer["type"] == "room" else str(answer["code"])


OPERATIONS = {"join": op_join, "post": op_post, "media": op_media, "admin": op_admin}

# token kind -> operation -> outcome ("ok", an error code, or "error code/close code").
EXPECTED = {
    "valid": {"join": "ok", "post": "ok", "media": "ok", "admin": "ok"},
    "expired": {op: "unauthorized/4001" for op in OPERATIONS},
    "forged": {op: "unauthorized/4001" for op in OPERATIONS},
    "wrong-room": {"join": "forbidden/4003", "post": "forbidden/4003",
                   "media": "forbidden/4003", "admin": "forbidden"},
    "missing-grant": {"join": "forbidden/4003", "post": "forbidden", "media": "forbidden",
                      "admin": "forbidden/4003"},
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("kind", sorted(EXPECTED))
async def test_token_matrix(private_server: Server, kind: str, operation: str) -> None:
    # Each operation is named after the grant it needs; "missing-grant" lacks just that one.
    grants = [g for g in ALL if g != operation] if kind == "missing-grant" else ALL
    token = make_token(private_server, kind, grants)
    with trio.fail_after(2 * WAIT):
        outcome = await OPERATIONS[operation](private_server, token)
    assert outcome == EXPECTED[kind][operation]


async def test_a_private_room_refuses_a_hello_without_a_token(private_server: Server) -> None:
    async with ws(private_server, f"/v1/rooms/{ROOM}") as client:
        assert await refused_hello(client) == ("unauthorized", 4001)
    async with ws(private_server, "/v1/rooms/lobby") as client:  # an open room does not care
        assert (await client.hello())["type"] == "welcome"


async def test_the_admin_token_opens_every_room(private_server: Server) -> None:
    async with ws(private_server, f"/v1/rooms/{ROOM}") as client:
        assert (await client.hello(token=private_server.admin_token, hidden=True))["type"] \
            == "welcome"
        assert (await client.request({"type": "send-message", "text": "as admin"}))["type"] \
            == "ok"


async def test_a_bad_token_is_refused_even_in_an_open_room(private_server: Server) -> None:
    forged = make_token(private_server, "forged", ALL, room="lobby")
    async with ws(private_server, "/v1/rooms/lobby") as client:
        assert await refused_hello(client, token=forged) == ("unauthorized", 4001)


async def test_watching_unseen_needs_read(private_server: Server) -> None:
    token = make_token(private_server, "valid", ["join", "post"])
    async with ws(private_server, f"/v1/rooms/{ROOM}") as client:
        reply = await client.hello(token=token, hidden=True)
        assert (reply["code"], reply["grant"]) == ("forbidden", "read")
    reader = make_token(private_server, "valid", ["read"])
    async with ws(private_server, f"/v1/rooms/{ROOM}") as client:
        assert (await client.hello(token=reader, hidden=True))["type"] == "welcome"


async def test_a_forbidden_request_names_the_grant_it_lacked(private_server: Server) -> None:
    token = make_token(private_server, "valid", ["join", "media"])
    async with ws(private_server, f"/v1/rooms/{ROOM}") as client:
        welcome = await client.hello(token=token)
        assert welcome["limits"]["max_text"] == 4000 and welcome["limits"]["rate"] == 20.0
        reply = await client.request({"type": "send-message", "text": "hi"})
        assert (reply["code"], reply["grant"], reply["retry_after"]) == ("forbidden", "post", None)


async def test_the_token_name_and_identity_show_in_the_participant_list(
        private_server: Server) -> None:
    token = make_token(private_server, "valid", ["join"])
    async with ws(private_server, f"/v1/rooms/{ROOM}") as client:
        welcome = await client.hello(name="someone else", token=token)
        [me] = welcome["participants"]
        assert me["meta"]["name"] == "Alice" and me["identity"] == "alice"


async def test_an_admin_grant_manages_only_its_room(private_server: Server) -> None:
    token = make_token(private_server, "valid", ["join", "admin"])
    async with admin(private_server, token) as client:
        rooms = await client.request({"type": "list-rooms"})
        assert [r["name"] for r in rooms["rooms"]] == [ROOM]
        other = await client.request({"type": "get-room", "room": OTHER})
        assert other["code"] == "forbidden"
        for frame in ({"type": "create-room", "room": "new"},
                      {"type": "create-token", "room": ROOM, "identity": "x"}):
            assert (await client.request(frame))["code"] == "forbidden"
        assert (await client.request({"type": "delete-room", "room": ROOM}))["type"] == "ok"


async def test_create_token_over_the_admin_endpoint(private_server: Server) -> None:
    async with admin(private_server) as client:
        issued = await client.request({"type": "create-token", "room": ROOM, "identity": "bob",
                                       "grants": ["join", "media"], "ttl": 120})
    assert issued["type"] == "token" and issued["grants"] == ["join", "media"]
    assert 100 < issued["expires_at"] - time.time() <= 122
    assert await op_join(private_server, issued["token"]) == "ok"
    assert await op_post(private_server, issued["token"]) == "forbidden"


async def test_tokens_outlive_a_restart_and_the_secret_is_private(
        make_config: Callable[..., daemon.Config]) -> None:
    config = make_config(memory=False)
    async with running_server(config) as srv:
        async with admin(srv) as client:
            await client.request({"type": "create-room", "room": ROOM, "private": True})
            token = (await client.request({"type": "create-token", "room": ROOM,
                                           "identity": "carol"}))["token"]
    secret = config.data_dir / JOIN_SECRET_FILE
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    async with running_server(config) as srv:
        assert await op_join(srv, token) == "ok"  # the room is still private, the token valid
        async with ws(srv, f"/v1/rooms/{ROOM}") as client:
            assert await refused_hello(client) == ("unauthorized", 4001)


async def test_require_tokens_makes_every_room_private(
        make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(require_tokens=True)) as srv:
        async with ws(srv, "/v1/rooms/anything") as client:
            assert await refused_hello(client) == ("unauthorized", 4001)
        async with admin(srv) as client:
            created = await client.request({"type": "create-room", "room": "open-ish"})
            assert created["room"]["private"] is True


async def test_daemon_wide_room_and_participant_limits(
        make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(max_rooms=2, max_participants=2)) as srv:
        async with admin(srv) as client:
            for name in ("one", "two"):
                assert (await client.request({"type": "create-room", "room": name}))["type"] \
                    == "room"
            third = await client.request({"type": "create-room", "room": "three"})
            assert third["code"] == "limit-reached"
            # A room may not ask for more participants than the daemon's cap.
            over = await client.request({"type": "create-room", "room": "four",
                                         "meta": {"max_participants": 3}})
            assert (over["type"], over["code"]) == ("error", "bad-request")
            assert "cap of 2 participants per room" in over["message"]
        async with ws(srv, "/v1/rooms/three") as client:  # nor by joining it
            assert await refused_hello(client) == ("limit-reached", 4004)
        async with ws(srv, "/v1/rooms/one") as a, ws(srv, "/v1/rooms/one") as b, \
                ws(srv, "/v1/rooms/one") as c, ws(srv, "/v1/rooms/one") as observer:
            assert (await a.hello(name="a"))["type"] == "welcome"
            assert (await b.hello(name="b"))["type"] == "welcome"
            full = await c.hello(name="c")
            assert full["code"] == "room-full"
            assert (await observer.hello(hidden=True))["type"] == "welcome"


# --- the CLI -----------------------------------------------------------------------------


@pytest.fixture
def daemon_process(serve_process: Callable[..., ServeProcess]) -> ServeProcess:
    return serve_process("--log-level", "warning")


async def test_roomctl_token_create_and_use(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    assert (await roomctl(sp, "room", "create", ROOM, "--private")).rc == 0
    shown = (await roomctl(sp, "room", "show", ROOM, "--json")).json()
    assert shown["access"] == "private"
    made = await roomctl(sp, "token", "create", "--room", ROOM, "--identity", "ci-bot",
                         "--grant", "join", "--grant", "post", "--grant", "hidden",
                         "--ttl", "10m", "--json")
    assert made.rc == 0, made.err
    issued = made.json()
    assert issued["grants"] == ["hidden", "join", "post"] and issued["identity"] == "ci-bot"
    token = issued["token"]
    # The join token works on its own, with no admin token anywhere.
    no_admin = {"ROOMCTL_DATA_DIR": "/nonexistent", "ROOMCTL_TOKEN": token}
    posted = await roomctl(sp, "post", ROOM, "from the bot", "--json", env=no_admin)
    assert posted.rc == 0, posted.err
    tail = await roomctl(sp, "tail", ROOM, "--no-follow", "--json", env=no_admin)
    assert [m["text"] for m in tail.json_lines()] == ["from the bot"]
    # Without --name, the post is signed with the token's identity, as over HTTP; the
    # admin token has none: "roomctl".
    assert [m["sender"] for m in tail.json_lines()] == ["ci-bot"]
    assert (await roomctl(sp, "post", ROOM, "from the admin")).rc == 0
    tail = await roomctl(sp, "tail", ROOM, "--no-follow", "--json", env=no_admin)
    assert [m["sender"] for m in tail.json_lines()] == ["ci-bot", "roomctl"]
    plain = await roomctl(sp, "token", "create", "-r", ROOM, "-i", "x")
    assert plain.rc == 0 and plain.out.count(".") == 2 and plain.out.endswith("\n")


async def test_refused_tokens_exit_4_with_one_line(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", ROOM, "--private")
    nothing = {"ROOMCTL_DATA_DIR": "/nonexistent"}
    no_token = await roomctl(sp, "post", ROOM, "x", env=nothing)
    assert no_token.rc == 4 and "needs a join token" in one_error_line(no_token)
    forged = await roomctl(sp, "tail", ROOM, "--token", "a.b.c", env=nothing)
    assert forged.rc == 4 and "unauthorized" in one_error_line(forged)
    no_hidden = (await roomctl(sp, "token", "create", "-r", ROOM, "-i", "y")).out.strip()
    lurker = await roomctl(sp, "who", ROOM, "--token", no_hidden, env=nothing)
    assert lurker.rc == 4 and "read grant" in one_error_line(lurker)
    listing = await roomctl(sp, "room", "list", "--token", no_hidden, env=nothing)
    assert listing.rc == 4 and "forbidden" in one_error_line(listing)
    bad_grant = await roomctl(sp, "token", "create", "-r", ROOM, "-i", "z", "-g", "root")
    assert bad_grant.rc == 2


async def test_token_create_signs_locally_while_the_local_daemon_is_down(
        serve_process: Callable[..., ServeProcess], tmp_path: Any) -> None:
    # A daemon of this machine, stopped: token create signs with its data directory's
    # join-secret, says so, exits 0; the daemon takes the token once it runs again.
    data_dir = tmp_path / "data"
    first = serve_process("--log-level", "warning", data_dir=data_dir)
    assert (await roomctl(first, "room", "create", ROOM)).rc == 0
    first.proc.terminate()
    assert await trio.to_thread.run_sync(lambda: first.proc.wait(timeout=15)) == 0
    made = await roomctl(first, "token", "create", "--room", ROOM, "--identity", "ci",
                         "--grant", "post")
    assert made.rc == 0, made.err
    token = made.out.strip()
    assert token.count(".") == 2
    [note] = made.err.splitlines()
    assert "signed" in note and str(data_dir) in note, note
    again = serve_process("--log-level", "warning", "--port", str(first.port),
                          data_dir=data_dir)
    posted = await roomctl(again, "post", ROOM, "signed offline", "--json",
                           env={"ROOMCTL_DATA_DIR": "/nonexistent", "ROOMCTL_TOKEN": token})
    assert posted.rc == 0, posted.err
