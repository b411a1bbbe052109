"""The HTTP API (``/v1/...``): every endpoint against a real daemon with a real HTTP client.

The client is the standard library's ``http.client`` (``tests/http_util.py``), as a
pipeline's would be; WebSocket clients in the same rooms show that an HTTP call does
what the same request on a WebSocket does (a post is broadcast, a kick closes 4009). Each
answer body is decoded with the type the OpenAPI document names for it, and the document
itself is checked against the OpenAPI 3.1 specification.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio_websocket

import daemon
from daemon.net.httpapi import ENDPOINTS
from daemon.net.openapi import document
from protocol import http as api
from protocol.http import HTTP_STATUS
from tests.conftest import (
    WAIT,
    Client,
    ServeProcess,
    Server,
    closing,
    free_port,
    running_server,
)
from tests.http_util import Answer, call, open_events

ROOM = "ops"


@pytest.fixture
async def srv(make_config: Callable[..., daemon.Config]) -> AsyncIterator[Server]:
    """A daemon with one open room, ``ops``."""
    async with running_server(make_config(ping_interval=1.0)) as server:
        made = await call(server, "POST", "/v1/rooms", token=server.admin_token,
                          json_body={"name": ROOM, "topic": "deploys"})
        assert made.status == 201, made.body
        yield server


async def make_token(server: Server, *grants: str, room: str = ROOM, identity: str = "ci",
                     name: str | None = None) -> str:
    body: dict[str, Any] = {"identity": identity, "grants": list(grants)}
    if name is not None:
        body["name"] = name
    answer = await call(server, "POST", f"/v1/rooms/{room}/tokens", token=server.admin_token,
                        json_body=body)
    assert answer.status == 201, answer.body
    token: str = answer.json()["token"]
    return token


@asynccontextmanager
async def ws(server: Server, room: str) -> AsyncIterator[Client]:
    """A real WebSocket client in ``room``."""
    async with trio_websocket.open_websocket_url(
            f"{server.url}/v1/rooms/{room}", subprotocols=["roomctl.v1"],
            connect_timeout=WAIT, disconnect_timeout=WAIT) as conn:
        yield Client(conn, binary=False)


def decoded(answer: Answer, kind: type[Any]) -> Any:
    """The body as ``kind``, the type the OpenAPI document names (unknown fields refused)."""
    return msgspec.json.decode(answer.body, type=kind, strict=True)


def refusal(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer.body
    error = answer.error
    assert error["code"] == code, error
    assert answer.headers["content-type"] == "application/json"
    return error


# --- rooms ---------------------------------------------------------------------------------


async def test_create_a_room_from_json_or_a_form(srv: Server) -> None:
    made = await call(srv, "POST", "/v1/rooms", token=srv.admin_token,
                      form={"name": "standup", "max_participants": "8", "public": "true",
                            "private": "false"})
    assert made.status == 201 and made.headers["location"] == "/v1/rooms/standup"
    view = decoded(made, api.RoomView)
    assert (view.room.name, view.room.private, view.room.meta["max_participants"],
            view.room.meta["public"]) == ("standup", False, 8, True)
    again = await call(srv, "POST", "/v1/rooms", token=srv.admin_token,
                       json_body={"name": "standup"})
    assert "already exists" in refusal(again, 409, "conflict")["message"]
    found = await call(srv, "POST", "/v1/rooms", token=srv.admin_token,
                       json_body={"name": "standup", "if_missing": True})
    assert found.status == 201 and decoded(found, api.RoomView).room.meta["public"] is True


@pytest.mark.parametrize(("body", "status", "wanted"), [
    ({"name": "-bad-"}, 400, "name: 1-64 letters, digits"),
    ({"name": "x", "max_participant": 3}, 400, "unknown field `max_participant`"),
    ({"name": "x", "max_participants": 0}, 400, "max_participants"),
    ({}, 400, "missing required field `name`"),
])
async def test_a_bad_room_body_is_a_bad_request_naming_the_field(
        srv: Server, body: dict[str, Any], status: int, wanted: str) -> None:
    answer = await call(srv, "POST", "/v1/rooms", token=srv.admin_token, json_body=body)
    assert wanted in refusal(answer, status, "bad-request")["message"]


async def test_room_management_needs_the_admin_token(srv: Server) -> None:
    anonymous = await call(srv, "POST", "/v1/rooms", json_body={"name": "x"})
    refusal(anonymous, 401, "unauthorized")
    assert anonymous.headers["www-authenticate"] == "Bearer"
    poster = await make_token(srv, "join", "post")
    forbidden = await call(srv, "GET", f"/v1/rooms/{ROOM}", token=poster)
    assert refusal(forbidden, 403, "forbidden")["grant"] == "admin"
    basic = await call(srv, "GET", "/v1/rooms", headers={"Authorization": "Basic eDp5"})
    assert "Bearer" in refusal(basic, 401, "unauthorized")["message"]
    forged = await call(srv, "GET", "/v1/rooms", token="not.a.token")
    refusal(forged, 401, "unauthorized")


async def test_list_rooms_a_page_at_a_time(srv: Server) -> None:
    for name in ("b", "a", "c"):
        await call(srv, "POST", "/v1/rooms", token=srv.admin_token, json_body={"name": name})
    first = decoded(await call(srv, "GET", "/v1/rooms?limit=2", token=srv.admin_token),
                    api.RoomPage)
    assert ([r.name for r in first.rooms], first.next) == (["a", "b"], "b")
    rest = decoded(await call(srv, "GET", "/v1/rooms?limit=2&after=b", token=srv.admin_token),
                   api.RoomPage)
    assert ([r.name for r in rest.rooms], rest.next) == (["c", "ops"], None)
    bad = await call(srv, "GET", "/v1/rooms?limit=0", token=srv.admin_token)
    assert "limit" in refusal(bad, 400, "bad-request")["message"]
    # Without a token: the lobby's list of public rooms (none here).
    public = decoded(await call(srv, "GET", "/v1/rooms"), api.PublicRoomPage)
    assert public.rooms == []


async def test_show_a_room_and_its_participants(srv: Server) -> None:
    async with ws(srv, ROOM) as ada:
        await ada.hello("ada")
        shown = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}", token=srv.admin_token),
                        api.RoomView)
        assert shown.room.meta["topic"] == "deploys"
        assert [p.meta["name"] for p in shown.participants] == ["ada"]
        # HEAD answers as GET, without the body.
        head = await call(srv, "HEAD", f"/v1/rooms/{ROOM}", token=srv.admin_token)
        assert (head.status, head.body) == (200, b"")
    missing = await call(srv, "GET", "/v1/rooms/nowhere", token=srv.admin_token)
    refusal(missing, 404, "not-found")


async def test_update_a_room_and_its_people_hear_of_the_topic(srv: Server) -> None:
    async with ws(srv, ROOM) as ada:
        await ada.hello("ada")
        changed = await call(srv, "PATCH", f"/v1/rooms/{ROOM}", token=srv.admin_token,
                             json_body={"topic": "release day", "max_participants": 3,
                                        "private": True})
        assert changed.status == 200, changed.body
        view = decoded(changed, api.RoomView)
        assert (view.room.meta["topic"], view.room.meta["max_participants"],
                view.room.private) == ("release day", 3, True)
        heard = await ada.recv_type("topic-changed")
        assert heard["topic"] == "release day"
    # Private now: a hello without a token is refused (ada was let in before).
    async with ws(srv, ROOM) as bob:
        assert (await bob.hello("bob"))["code"] == "unauthorized"
    lifted = await call(srv, "PATCH", f"/v1/rooms/{ROOM}", token=srv.admin_token,
                        json_body={"max_participants": None})
    assert decoded(lifted, api.RoomView).room.meta["max_participants"] is None
    pins = await call(srv, "PATCH", f"/v1/rooms/{ROOM}", token=srv.admin_token,
                      json_body={"meta": {"pins": [1]}})
    assert "'pins' cannot be changed" in refusal(pins, 400, "bad-request")["message"]


async def test_delete_a_room_closes_its_connections(srv: Server) -> None:
    async with ws(srv, ROOM) as ada:
        await ada.hello("ada")
        deleted = await call(srv, "DELETE", f"/v1/rooms/{ROOM}", token=srv.admin_token)
        assert (deleted.status, deleted.body) == (204, b"")
        _, code = await closing(ada)
        assert code == 4010
    gone = await call(srv, "DELETE", f"/v1/rooms/{ROOM}", token=srv.admin_token)
    refusal(gone, 404, "not-found")


async def test_kick_closes_the_participant_s_connection(srv: Server) -> None:
    async with ws(srv, ROOM) as ada:
        await ada.hello("ada")
        kicked = await call(srv, "DELETE", f"/v1/rooms/{ROOM}/participants/{ada.session_id}",
                            token=srv.admin_token)
        assert kicked.status == 204
        _, code = await closing(ada)
        assert code == 4009
    again = await call(srv, "DELETE", f"/v1/rooms/{ROOM}/participants/{ada.session_id}",
                       token=srv.admin_token)
    refusal(again, 404, "not-found")


async def test_create_a_join_token_that_works_on_the_websocket(srv: Server) -> None:
    made = await call(srv, "POST", f"/v1/rooms/{ROOM}/tokens", token=srv.admin_token,
                      form=[("identity", "ada"), ("name", "Ada"), ("grants", "join,post"),
                            ("ttl", "600")])
    assert made.status == 201, made.body
    issued = decoded(made, api.IssuedToken)
    assert (issued.room, issued.identity, sorted(issued.grants)) == (ROOM, "ada",
                                                                     ["join", "post"])
    async with ws(srv, ROOM) as ada:
        welcome = await ada.hello("whoever", token=issued.token)
        assert welcome["participants"][0]["meta"]["name"] == "Ada"
    bad = await call(srv, "POST", f"/v1/rooms/{ROOM}/tokens", token=srv.admin_token,
                     json_body={"identity": "x", "grants": ["root"]})
    refusal(bad, 400, "bad-request")


# --- messages ------------------------------------------------------------------------------


async def test_a_post_answers_with_its_seq_and_time_and_reaches_the_room(
        srv: Server) -> None:
    poster = await make_token(srv, "post")  # post alone: no presence in the room needed
    async with ws(srv, ROOM) as ada:
        await ada.hello("ada")
        posted = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=poster,
                            json_body={"text": "deploy done"})
        assert posted.status == 201, posted.body
        result = decoded(posted, api.PostResult)
        heard = (await ada.recv())["message"]
        assert (heard["seq"], heard["at"], heard["text"]) == (result.seq, result.at,
                                                              "deploy done")
        assert heard["sender_name"] == "ci"  # the token's identity, without a name
        await ada.no_frame()  # the sender was never a participant: no join, no leave


async def test_a_form_post_as_curl_d_sends_it(srv: Server) -> None:
    posted = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages?name=deployer",
                        token=srv.admin_token, form={"text": "deploy done"})
    assert posted.status == 201, posted.body
    history = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}/messages",
                                 token=srv.admin_token), api.MessagePage)
    assert [(m.sender_name, m.text) for m in history.messages] == [("deployer",
                                                                     "deploy done")]


async def test_a_text_body_posts_each_line_in_order(srv: Server) -> None:
    posted = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=srv.admin_token,
                        text="first\n\n  \nsecond\r\nthird\n")
    assert posted.status == 201, posted.body
    result = decoded(posted, api.PostResult)
    assert [(m.line, m.seq) for m in result.messages] == [(1, 1), (4, 2), (5, 3)]
    assert result.seq == 3
    history = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}/messages",
                                 token=srv.admin_token), api.MessagePage)
    assert [m.text for m in history.messages] == ["first", "second", "third"]


async def test_a_retried_post_with_its_key_is_stored_once(srv: Server) -> None:
    poster = await make_token(srv, "post")
    key = {"Idempotency-Key": "job-42"}
    first = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=poster,
                       json_body={"text": "deploy 42 done"}, headers=key)
    retry = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=poster,
                       json_body={"text": "deploy 42 done"}, headers=key)
    assert first.status == retry.status == 201
    assert decoded(first, api.PostResult) == decoded(retry, api.PostResult)
    # A body of lines: each line its own key, derived from the header.
    lines_key = {"Idempotency-Key": "job-43"}
    for _ in range(2):
        lines = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=poster,
                           text="a\nb\n", headers=lines_key)
        assert [m.seq for m in decoded(lines, api.PostResult).messages] == [2, 3]
    history = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}/messages",
                                 token=srv.admin_token), api.MessagePage)
    assert [m.text for m in history.messages] == ["deploy 42 done", "a", "b"]
    long_key = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=poster,
                          json_body={"text": "x"}, headers={"Idempotency-Key": "k" * 121})
    assert "Idempotency-Key" in refusal(long_key, 400, "bad-request")["message"]


@pytest.mark.parametrize(("kwargs", "status", "code", "wanted"), [
    ({"json_body": {"text": "x" * 4001}}, 413, "too-large", "4001 characters"),
    ({"text": "ok\n" + "y" * 4001}, 413, "too-large", "line 2"),
    ({"text": "\n \n"}, 400, "bad-request", "nothing to post"),
    ({"json_body": {"text": ""}}, 400, "bad-request", "length >= 1"),
    ({"json_body": {"txt": "x"}}, 400, "bad-request", "unknown field `txt`"),
    ({"body": b"<p>x</p>", "headers": {"Content-Type": "text/html"}}, 415, "bad-request",
     "not text/html"),
    ({"body": b"\xff\xfe", "headers": {"Content-Type": "text/plain"}}, 400, "bad-request",
     "UTF-8"),
    ({"body": b"{", "headers": {"Content-Type": "application/json"}}, 400, "bad-request",
     "malformed JSON"),
])
async def test_a_bad_post_is_refused_and_stores_nothing(
        srv: Server, kwargs: dict[str, Any], status: int, code: str, wanted: str) -> None:
    answer = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=srv.admin_token,
                        **kwargs)
    assert wanted in refusal(answer, status, code)["message"]
    history = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}/messages",
                                 token=srv.admin_token), api.MessagePage)
    assert history.messages == []


async def test_a_body_over_the_front_s_limit_is_413_in_the_same_shape(srv: Server) -> None:
    answer = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=srv.admin_token,
                        text="z" * (70 * 1024))
    refusal(answer, 413, "too-large")


async def test_a_post_to_a_missing_room_does_not_make_it(srv: Server) -> None:
    answer = await call(srv, "POST", "/v1/rooms/typo/messages", token=srv.admin_token,
                        json_body={"text": "x"})
    refusal(answer, 404, "not-found")
    missing = await call(srv, "GET", "/v1/rooms/typo", token=srv.admin_token)
    refusal(missing, 404, "not-found")


async def test_posting_and_reading_need_their_grants(srv: Server) -> None:
    reader = await make_token(srv, "read")
    poster = await make_token(srv, "post")
    no_post = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=reader,
                         json_body={"text": "x"})
    assert refusal(no_post, 403, "forbidden")["grant"] == "post"
    for path in ("messages", "participants"):
        no_read = await call(srv, "GET", f"/v1/rooms/{ROOM}/{path}", token=poster)
        assert refusal(no_read, 403, "forbidden")["grant"] == "read"
        assert (await call(srv, "GET", f"/v1/rooms/{ROOM}/{path}", token=reader)).status == 200
    elsewhere = await make_token(srv, "post", "read", room="other")
    other_room = await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=elsewhere,
                            json_body={"text": "x"})
    refusal(other_room, 403, "forbidden")


async def test_history_pages_by_seq(srv: Server) -> None:
    await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=srv.admin_token,
               text="\n".join(f"m{n}" for n in range(1, 8)))
    page = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}/messages?after=2&limit=3",
                              token=srv.admin_token), api.MessagePage)
    assert ([m.seq for m in page.messages], page.has_more) == ([3, 4, 5], True)
    last = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}/messages?limit=2",
                              token=srv.admin_token), api.MessagePage)
    assert [m.seq for m in last.messages] == [6, 7]
    before = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}/messages?before=3",
                                token=srv.admin_token), api.MessagePage)
    assert ([m.seq for m in before.messages], before.has_more) == ([1, 2], False)
    bad = await call(srv, "GET", f"/v1/rooms/{ROOM}/messages?after=x", token=srv.admin_token)
    assert "after must be a whole number" in refusal(bad, 400, "bad-request")["message"]


async def test_participants_lists_the_listed_only(srv: Server) -> None:
    reader = await make_token(srv, "read")
    async with ws(srv, ROOM) as ada, ws(srv, ROOM) as lurker:
        await ada.hello("ada")
        await lurker.hello("lurker", hidden=True)
        listed = decoded(await call(srv, "GET", f"/v1/rooms/{ROOM}/participants",
                                    token=reader), api.ParticipantList)
        assert [p.meta["name"] for p in listed.participants] == ["ada"]


async def test_rate_limited_posts_get_429_with_retry_after(
        make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(rate_limit=0.5, rate_burst=2)) as server:
        await call(server, "POST", "/v1/rooms", token=server.admin_token,
                   json_body={"name": ROOM})
        statuses = [(await call(server, "POST", f"/v1/rooms/{ROOM}/messages",
                                json_body={"text": f"n{n}"})) for n in range(3)]
        assert [a.status for a in statuses] == [201, 201, 429]
        error = refusal(statuses[2], 429, "rate-limited")
        assert int(statuses[2].headers["retry-after"]) >= 1 and error["retry_after"] > 0
        # The admin token is never limited.
        admin = await call(server, "POST", f"/v1/rooms/{ROOM}/messages",
                           token=server.admin_token, json_body={"text": "admin"})
        assert admin.status == 201


# --- the event stream ------------------------------------------------------------------------


async def test_the_event_stream_sends_each_message_with_its_seq_as_id(srv: Server) -> None:
    reader = await make_token(srv, "read")
    await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=srv.admin_token, text="old")
    stream = await open_events(srv, ROOM, token=reader)
    try:
        assert stream.status == 200
        assert stream.response.getheader("Content-Type") == "text/event-stream"
        await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=srv.admin_token,
                   text="new\nnewer")
        events = [await stream.next(), await stream.next()]
        assert [(e.id, e.event) for e in events if e] == [("2", "message"), ("3", "message")]
        assert [e.json()["text"] for e in events if e] == ["new", "newer"]
        # Idle, it says it is alive (ping_interval 1 s here).
        with trio.move_on_after(3):
            await stream.next(timeout=3)
        assert "ping" in stream.comments
    finally:
        stream.close()


async def test_the_event_stream_needs_read_and_an_existing_room(srv: Server) -> None:
    poster = await make_token(srv, "post", "join")
    for room, token, status, code in ((ROOM, poster, 403, "forbidden"),
                                      ("nowhere", srv.admin_token, 404, "not-found")):
        stream = await open_events(srv, room, token=token)
        try:
            answer = Answer(stream.status, {}, stream.response.read())
            refusal_body = json.loads(answer.body)["error"]
            assert (answer.status, refusal_body["code"]) == (status, code)
        finally:
            stream.close()
    bad = await open_events(srv, ROOM, token=srv.admin_token, query="?after=-1")
    try:
        assert bad.status == 400
    finally:
        bad.close()


async def test_a_dropped_event_stream_leaves_no_session(srv: Server) -> None:
    stream = await open_events(srv, ROOM, token=srv.admin_token)
    stream.close()
    with trio.fail_after(5):
        while True:
            shown = decoded(await call(srv, "GET", "/healthz"), api.Health)
            if shown.connections == 0:
                break
            await trio.sleep(0.05)


async def test_last_event_id_resumes_across_a_daemon_restart_with_nothing_lost_or_repeated(
        serve_process: Callable[..., ServeProcess], tmp_path: Any) -> None:
    port = str(free_port())
    data_dir = tmp_path / "data"
    sp = serve_process("--port", port, "--log-level", "warning", data_dir=data_dir)
    token = (data_dir / "admin-token").read_text().strip()
    await call(sp, "POST", "/v1/rooms", token=token, json_body={"name": ROOM})
    await call(sp, "POST", f"/v1/rooms/{ROOM}/messages", token=token, text="1\n2\n3")

    stream = await open_events(sp, ROOM, token=token, query="?after=0")
    seen: list[int] = []
    try:
        while len(seen) < 3:
            event = await stream.next()
            assert event is not None and event.id is not None
            seen.append(int(event.id))
        # The daemon stops (gracefully: the stream ends), and messages come while it is away.
        sp.proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(lambda: sp.proc.wait(timeout=10)) == 0
        assert await stream.next() is None
        # It said why, and ended the response whole (its last chunk: curl -N exits 0).
        assert any(c.startswith("closed (1001)") for c in stream.comments), stream.comments
        assert stream.ended_whole, stream.raw_tail
    finally:
        stream.close()
    sp = serve_process("--port", port, "--log-level", "warning", data_dir=data_dir)
    await call(sp, "POST", f"/v1/rooms/{ROOM}/messages", token=token, text="4\n5")

    # What EventSource does on reconnecting: the same URL, Last-Event-ID the last id seen.
    stream = await open_events(sp, ROOM, token=token, last_event_id=seen[-1], query="?after=0")
    try:
        for _ in range(2):
            event = await stream.next()
            assert event is not None and event.id is not None
            seen.append(int(event.id))
        await call(sp, "POST", f"/v1/rooms/{ROOM}/messages", token=token, text="6")
        event = await stream.next()
        assert event is not None and event.id is not None
        seen.append(int(event.id))
        assert event.json()["text"] == "6"
    finally:
        stream.close()
    assert seen == [1, 2, 3, 4, 5, 6]


async def test_a_201_is_on_disk_a_kill_9_right_after_keeps_it(
        serve_process: Callable[..., ServeProcess], tmp_path: Any) -> None:
    data_dir = tmp_path / "data"
    sp = serve_process("--log-level", "warning", data_dir=data_dir)
    token = (data_dir / "admin-token").read_text().strip()
    await call(sp, "POST", "/v1/rooms", token=token, json_body={"name": ROOM})
    posted = await call(sp, "POST", f"/v1/rooms/{ROOM}/messages", token=token,
                        json_body={"text": "kept"})
    assert posted.status == 201
    os.kill(sp.proc.pid, signal.SIGKILL)
    await trio.to_thread.run_sync(lambda: sp.proc.wait(timeout=10))
    sp = serve_process("--log-level", "warning", data_dir=data_dir)
    history = decoded(await call(sp, "GET", f"/v1/rooms/{ROOM}/messages", token=token),
                      api.MessagePage)
    assert [(m.seq, m.text) for m in history.messages] == [(1, "kept")]


# --- who am I, methods, and the OpenAPI document ------------------------------------------------


async def test_whoami_says_what_the_token_is(srv: Server) -> None:
    admin = decoded(await call(srv, "GET", "/v1/whoami", token=srv.admin_token), api.TokenInfo)
    assert admin.kind == "admin" and "read" in admin.grants
    join = decoded(await call(srv, "GET", "/v1/whoami",
                              token=await make_token(srv, "post", identity="ci", name="CI")),
                   api.TokenInfo)
    assert (join.kind, join.room, join.identity, join.name, join.grants) == (
        "join", ROOM, "ci", "CI", ["post"])
    assert join.expires_at is not None and join.expires_at > 0
    assert decoded(await call(srv, "GET", "/v1/whoami"), api.TokenInfo).kind == "none"
    refusal(await call(srv, "GET", "/v1/whoami", token="nope"), 401, "unauthorized")


async def test_a_method_a_path_does_not_take_is_405_with_allow(srv: Server) -> None:
    answer = await call(srv, "PUT", f"/v1/rooms/{ROOM}", token=srv.admin_token)
    refusal(answer, 405, "bad-request")
    assert answer.headers["allow"] == "DELETE, GET, HEAD, PATCH"
    events = await call(srv, "POST", f"/v1/rooms/{ROOM}/events", token=srv.admin_token)
    assert events.status == 405 and events.headers["allow"] == "GET"


async def test_a_bad_room_name_in_a_path_is_400_with_the_rule(srv: Server) -> None:
    for method, path in (("POST", "/v1/rooms/-bad-/messages"), ("GET", "/v1/rooms/a%20b"),
                         ("GET", "/v1/rooms/" + "x" * 65 + "/events")):
        answer = await call(srv, method, path, token=srv.admin_token, text="hi")
        error = refusal(answer, 400, "bad-request")
        assert "room name" in error["message"] and "letters, digits" in error["message"]


async def test_the_openapi_document_is_served_valid_and_made_from_the_code(
        srv: Server) -> None:
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    served = await call(srv, "GET", "/v1/openapi.json")
    assert served.status == 200
    spec = served.json()
    validate(spec)  # the OpenAPI 3.1 specification's own schema
    assert spec == json.loads(json.dumps(document(ENDPOINTS)))
    operations = {(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item}
    assert {(e.method, e.path) for e in ENDPOINTS} <= operations
    # Real answers match the schemas the document gives them.
    schemas = spec["components"]["schemas"]

    def check(answer: Answer, name: str) -> None:
        schema = {**schemas[name], "components": {"schemas": schemas}}
        Draft202012Validator(schema).validate(answer.json())

    await call(srv, "POST", f"/v1/rooms/{ROOM}/messages", token=srv.admin_token, text="a")
    check(await call(srv, "GET", f"/v1/rooms/{ROOM}/messages", token=srv.admin_token),
          "MessagePage")
    check(await call(srv, "GET", f"/v1/rooms/{ROOM}", token=srv.admin_token), "RoomView")
    check(await call(srv, "GET", "/v1/rooms/nowhere", token=srv.admin_token), "ErrorBody")
    check(await call(srv, "GET", "/healthz"), "Health")


def test_every_error_code_has_an_http_status() -> None:
    from protocol.errors import ErrorCode

    assert set(HTTP_STATUS) == set(ErrorCode)
