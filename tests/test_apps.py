"""The app API is general: a second app, written here, runs beside chat.

``PollApp`` is a tiny poll: typed room metadata (question, options, tally), typed
session metadata with a secret (the voter's choice), a participant view that hides the
secret, its own requests (``cast-vote``, ``close-poll``) and event (``tally-changed``),
and handlers that act only through ``Context``. It is tested first against the sans-IO
engine (exact effects), then in a real daemon on a real port with real WebSocket clients.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any
from unittest.mock import ANY

import msgspec
import pytest
import trio
import trio_websocket

import daemon
from daemon.apps.api import App, Context, handles
from daemon.apps.chat import ChatApp
from daemon.core.access import ADMIN as ADMIN_ACCESS
from daemon.core.effects import Effect, Persist, RoomCreated, Send
from daemon.core.engine import Engine
from daemon.core.records import PutRoom, StoredRoom
from protocol import ErrorCode, Event, ProtocolError, Request
from protocol import admin as adm
from protocol.chat import SendMessage
from protocol.messages import (
    Error,
    Hello,
    Ok,
    Participant,
    ParticipantJoined,
    ParticipantUpdated,
    RoomInfo,
    Welcome,
)
from tests.conftest import WAIT, Client, Server, running_server

# --- the second app ----------------------------------------------------------------------------

Choice = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class PollMeta(msgspec.Struct, frozen=True, kw_only=True):
    """A poll room's metadata: stored with the room, so the tally survives restarts."""

    question: str = ""
    options: list[Choice] = []
    tally: dict[str, int] = {}
    closed: bool = False


class Voter(msgspec.Struct, frozen=True, kw_only=True):
    """A session's metadata; ``choice`` is secret and never leaves the daemon."""

    name: str
    choice: str | None = None


class VoterView(msgspec.Struct, frozen=True, kw_only=True):
    """What other participants see of a voter."""

    name: str
    voted: bool = False


class CastVote(Request, tag="cast-vote", frozen=True, kw_only=True):
    """Vote for ``choice`` (again to change the vote); the ``ok`` comes after the commit."""

    choice: Choice


class ClosePoll(Request, tag="close-poll", frozen=True, kw_only=True):
    """End the vote; later votes are a conflict."""


class TallyChanged(Event, tag="tally-changed", frozen=True, kw_only=True):
    tally: dict[str, int]
    closed: bool = False


class PollApp(App[PollMeta, Voter]):
    name = "poll"
    room_meta_type = PollMeta
    events = (TallyChanged,)

    def create_room(self, options: dict[str, Any] | None, *, creator: str | None) -> PollMeta:
        meta = super().create_room(options, creator=creator)
        if len(set(meta.options)) < 2:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "a poll needs two or more options")
        return msgspec.structs.replace(meta, tally={o: meta.tally.get(o, 0) for o in meta.options})

    def admit(self, ctx: Context, hello: Hello) -> Voter:
        return Voter(name=hello.name or "voter")

    def participant_view(self, meta: Voter) -> VoterView:
        return VoterView(name=meta.name, voted=meta.choice is not None)

    @handles(CastVote)
    def vote(self, ctx: Context, request: CastVote) -> None:
        poll: PollMeta = ctx.room_meta
        voter: Voter = ctx.session_meta
        if ctx.session is not None and ctx.session.hidden:
            raise ProtocolError(ErrorCode.FORBIDDEN, "observers do not vote")
        if poll.closed:
            raise ProtocolError(ErrorCode.CONFLICT, "the poll is closed")
        if request.choice not in poll.options:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{request.choice!r} is not an option")
        tally = dict(poll.tally)
        if voter.choice is not None:
            tally[voter.choice] -= 1
        tally[request.choice] += 1
        # The view changes only on a first vote (voted: false -> true); the choice is secret.
        ctx.set_session_meta(msgspec.structs.replace(voter, choice=request.choice),
                             announce=voter.choice is None)
        write = ctx.set_room_meta(msgspec.structs.replace(poll, tally=tally))

        def counted(after: Context) -> None:
            after.ok()
            after.broadcast(TallyChanged(tally=tally))

        ctx.persist(write, then=counted)

    @handles(ClosePoll)
    def close(self, ctx: Context, request: ClosePoll) -> None:
        poll: PollMeta = ctx.room_meta
        write = ctx.set_room_meta(msgspec.structs.replace(poll, closed=True))

        def closed(after: Context) -> None:
            after.ok()
            after.broadcast(TallyChanged(tally=poll.tally, closed=True))

        ctx.persist(write, then=closed)


LUNCH = {"question": "lunch?", "options": ["tea", "soup", "pie"]}
LUNCH_META = PollMeta(question="lunch?", options=["tea", "soup", "pie"],
                      tally={"tea": 0, "soup": 0, "pie": 0})


# --- engine level: exact effects, no sockets ---------------------------------------------------

T0 = 500.0
ADMIN, ALICE, BOB, CAROL = 99, 1, 2, 3


def make_engine(*apps: App[Any, Any]) -> Engine:
    ids = (f"s{n}" for n in itertools.count(1))
    tokens = (f"token-{n}" for n in itertools.count(1))
    engine = Engine(list(apps) or [ChatApp(), PollApp()], grace=10.0, server="test",
                    new_id=lambda: next(ids), new_token=lambda: next(tokens))
    engine.admin_hello(ADMIN, Hello(), T0 - 100, ADMIN_ACCESS)
    return engine


def commit(effect: Effect) -> list[Effect]:
    assert isinstance(effect, Persist) and effect.on_commit is not None
    return list(effect.on_commit(T0 + 50))


def put_poll(meta: PollMeta, room: str = "lunch") -> PutRoom:
    return PutRoom(name=room, app="poll", created_at=T0, meta=msgspec.json.encode(meta))


def voter(session_id: str, name: str, joined_at: float, voted: bool = False) -> Participant:
    return Participant(id=session_id, joined_at=joined_at, meta=VoterView(name=name, voted=voted))


@pytest.fixture
def polling() -> Engine:
    """A poll room "lunch" made by an admin; Alice (s1) and Bob (s2) are in it."""
    engine = make_engine()
    created = engine.admin(ADMIN, adm.CreateRoom(room="lunch", app="poll", meta=LUNCH), T0)
    assert created[1:] == [RoomCreated("lunch", implicit=False)]
    assert isinstance(created[0], Persist)
    assert created[0].writes == (put_poll(LUNCH_META),)
    assert commit(created[0]) == [
        Send((ADMIN,), adm.RoomDetails(room=RoomInfo(name="lunch", app="poll", created_at=T0,
                                                     meta=LUNCH_META))),
    ]
    engine.hello(ALICE, "lunch", Hello(name="alice"), T0 + 1)
    engine.hello(BOB, "lunch", Hello(name="bob"), T0 + 2)
    return engine


def test_the_apps_request_types_join_the_decoder_union() -> None:
    engine = make_engine()
    assert {CastVote, ClosePoll, SendMessage} <= set(engine.request_types())


def test_poll_options_are_validated_by_the_app() -> None:
    engine = make_engine()
    for meta in ({"options": ["only"]}, {"options": ["tea", "tea"]}, {"options": "tea"},
                 {"tally": {"tea": "x"}}):
        assert engine.admin(ADMIN, adm.CreateRoom(room="bad", app="poll", meta=meta, ref="c"),
                            T0) == [
            Send((ADMIN,), Error(ref="c", code=ErrorCode.BAD_REQUEST, message=ANY))
        ], meta
    assert "bad" not in engine.rooms


def test_a_poll_room_welcomes_with_its_typed_views(polling: Engine) -> None:
    effects = polling.hello(CAROL, "lunch", Hello(name="carol", ref="h"), T0 + 3)

    assert effects == [
        Send((CAROL,), Welcome(ref="h", session_id="s3", resume_token="token-3",
                               room=RoomInfo(name="lunch", app="poll", created_at=T0,
                                             participants=3, meta=LUNCH_META),
                               participants=[voter("s1", "alice", T0 + 1),
                                             voter("s2", "bob", T0 + 2),
                                             voter("s3", "carol", T0 + 3)],
                               grace=10.0, server="test")),
        Send((ALICE, BOB), ParticipantJoined(participant=voter("s3", "carol", T0 + 3))),
    ]


def test_a_vote_announces_that_alice_voted_but_not_her_choice(polling: Engine) -> None:
    effects = polling.request(ALICE, CastVote(choice="soup", ref="v"), T0 + 5)

    tally = {"tea": 0, "soup": 1, "pie": 0}
    assert effects[:-1] == [
        Send((ALICE, BOB), ParticipantUpdated(participant=voter("s1", "alice", T0 + 1,
                                                                voted=True))),
    ]
    assert isinstance(effects[-1], Persist)
    assert effects[-1].writes == (put_poll(msgspec.structs.replace(LUNCH_META, tally=tally)),)
    assert commit(effects[-1]) == [
        Send((ALICE,), Ok(ref="v")),
        Send((ALICE, BOB), TallyChanged(tally=tally)),
    ]


def test_changing_a_vote_moves_it_without_a_participant_update(polling: Engine) -> None:
    commit(polling.request(ALICE, CastVote(choice="soup"), T0 + 5)[-1])

    effects = polling.request(ALICE, CastVote(choice="pie", ref="v"), T0 + 6)

    tally = {"tea": 0, "soup": 0, "pie": 1}
    assert len(effects) == 1 and isinstance(effects[0], Persist)
    assert effects[0].writes == (put_poll(msgspec.structs.replace(LUNCH_META, tally=tally)),)
    assert commit(effects[0]) == [
        Send((ALICE,), Ok(ref="v")),
        Send((ALICE, BOB), TallyChanged(tally=tally)),
    ]


def test_poll_rules_answer_with_errors(polling: Engine) -> None:
    def code_of(effects: list[Effect]) -> ErrorCode:
        assert len(effects) == 1 and isinstance(effects[0], Send)
        assert isinstance(effects[0].frame, Error) and effects[0].frame.ref == "x"
        return effects[0].frame.code

    assert code_of(polling.request(ALICE, CastVote(choice="cake", ref="x"), T0 + 5)) == \
        ErrorCode.BAD_REQUEST
    assert code_of(polling.request(ALICE, SendMessage(text="hi", ref="x"), T0 + 5)) == \
        ErrorCode.BAD_REQUEST
    polling.hello(CAROL, "lunch", Hello(name="tail", hidden=True), T0 + 5)
    assert code_of(polling.request(CAROL, CastVote(choice="tea", ref="x"), T0 + 5)) == \
        ErrorCode.FORBIDDEN
    commit(polling.request(BOB, ClosePoll(), T0 + 6)[-1])
    assert code_of(polling.request(ALICE, CastVote(choice="tea", ref="x"), T0 + 7)) == \
        ErrorCode.CONFLICT


def test_chat_rooms_do_not_take_poll_requests(polling: Engine) -> None:
    polling.hello(CAROL, "lobby", Hello(name="carol"), T0 + 5)  # auto-created: chat

    assert polling.request(CAROL, CastVote(choice="tea", ref="x"), T0 + 6) == [
        Send((CAROL,), Error(ref="x", code=ErrorCode.BAD_REQUEST,
                             message="cast-vote is not supported in this room")),
    ]


def test_a_poll_room_is_restored_from_what_it_persisted(polling: Engine) -> None:
    vote = polling.request(ALICE, CastVote(choice="tea"), T0 + 5)[-1]
    assert isinstance(vote, Persist)
    (stored,) = vote.writes

    restarted = make_engine()
    restarted.restore([StoredRoom(name=stored.name, app=stored.app,
                                  created_at=stored.created_at, meta=stored.meta, last_seq=0)], T0)

    assert restarted.rooms["lunch"].meta == msgspec.structs.replace(
        LUNCH_META, tally={"tea": 1, "soup": 0, "pie": 0})
    assert restarted.rooms["lunch"].app.name == "poll"


def test_an_app_that_refuses_auto_creation_answers_an_error() -> None:
    engine = make_engine(PollApp())

    effects = engine.hello(ALICE, "lunch", Hello(name="alice", ref="h"), T0)

    assert effects[0] == Send((ALICE,), Error(ref="h", code=ErrorCode.BAD_REQUEST,
                                              message=effects[0].frame.message))  # type: ignore[union-attr]
    assert engine.rooms == {}


# --- end to end: a real daemon, real clients ---------------------------------------------------


@asynccontextmanager
async def open_client(server: Server, path: str, *, binary: bool = False
                      ) -> AsyncIterator[Client]:
    subprotocols = ["roomctl.v1.msgpack"] if binary else ["roomctl.v1"]
    async with trio_websocket.open_websocket_url(
        server.url + path, subprotocols=subprotocols, connect_timeout=WAIT,
        disconnect_timeout=WAIT,
    ) as ws:
        yield Client(ws, binary)


async def admin_request(server: Server, frame: dict[str, Any]) -> dict[str, Any]:
    async with open_client(server, "/v1/admin") as admin:
        welcome = await admin.request({"type": "hello", "token": server.admin_token})
        assert welcome["type"] == "welcome"
        return await admin.request(frame)


POLL_APPS: Callable[[], list[App[Any, Any]]] = lambda: [ChatApp(), PollApp()]  # noqa: E731


async def test_a_poll_room_in_a_real_daemon(make_config: Callable[..., daemon.Config]) -> None:
    config = make_config(memory=False)
    async with running_server(config, POLL_APPS()) as server:
        created = await admin_request(server, {"type": "create-room", "room": "lunch",
                                               "app": "poll", "meta": LUNCH})
        assert created["type"] == "room"
        assert created["room"]["app"] == "poll"
        assert created["room"]["meta"] == {"question": "lunch?", "options": ["tea", "soup", "pie"],
                                           "tally": {"tea": 0, "soup": 0, "pie": 0},
                                           "closed": False}

        async with open_client(server, "/v1/rooms/lunch") as alice, \
                open_client(server, "/v1/rooms/lunch", binary=True) as bob:
            assert (await alice.hello("alice"))["type"] == "welcome"
            welcome = await bob.hello("bob")
            assert welcome["room"]["app"] == "poll"
            assert [p["meta"] for p in welcome["participants"]] == [
                {"name": "alice", "voted": False}, {"name": "bob", "voted": False}]
            await alice.recv_type("participant-joined")

            # cast-vote was merged into the decoder: it decodes, is handled and committed.
            ok = await alice.request({"type": "cast-vote", "choice": "pie"})
            assert ok["type"] == "ok" and ok.get("seq") is None
            updated = await bob.recv_type("participant-updated")
            assert updated["participant"]["meta"] == {"name": "alice", "voted": True}
            assert "choice" not in json.dumps(updated)
            tally = await bob.recv_type("tally-changed")
            assert tally == {"type": "tally-changed",
                             "tally": {"tea": 0, "soup": 0, "pie": 1}, "closed": False}

            # Validation of the app's own field happens at the decoder.
            bad = await bob.request({"type": "cast-vote", "choice": ""})
            assert bad["type"] == "error" and bad["code"] == "bad-request"
            # Chat's request in a poll room: decoded (chat is installed) but not supported.
            refused = await bob.request({"type": "send-message", "text": "hi"})
            assert refused["type"] == "error" and refused["code"] == "bad-request"
            assert refused["message"] == "send-message is not supported in this room"

        # And the poll's request in a chat room.
        async with open_client(server, "/v1/rooms/lobby") as carol:
            await carol.hello("carol")
            refused = await carol.request({"type": "cast-vote", "choice": "tea"})
            assert refused["type"] == "error" and refused["code"] == "bad-request"
            assert refused["message"] == "cast-vote is not supported in this room"

    # A restart on the same data directory brings the room back with its tally.
    async with running_server(config, POLL_APPS()) as server:
        async with open_client(server, "/v1/rooms/lunch") as dora:
            welcome = await dora.hello("dora")
            assert welcome["room"]["app"] == "poll"
            assert welcome["room"]["meta"]["tally"] == {"tea": 0, "soup": 0, "pie": 1}
            assert [p["meta"]["name"] for p in welcome["participants"]] == ["dora"]
            ok = await dora.request({"type": "cast-vote", "choice": "tea"})
            assert ok["type"] == "ok"
            tally = await dora.recv_type("tally-changed")
            assert tally["tally"] == {"tea": 1, "soup": 0, "pie": 1}


async def test_a_daemon_without_the_app_does_not_decode_its_requests(
        make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(), [ChatApp()]) as server, \
            open_client(server, "/v1/rooms/lobby") as carol:
        await carol.hello("carol")
        refused = await carol.request({"type": "cast-vote", "choice": "tea"})
        assert refused["type"] == "error" and refused["code"] == "bad-request"
        # The union does not know the tag, so the decoder, not the room, refuses it.
        assert refused["message"] != "cast-vote is not supported in this room"
        created = await admin_request(server, {"type": "create-room", "room": "lunch",
                                               "app": "poll", "meta": LUNCH})
        assert created["type"] == "error" and created["code"] == "bad-request"


async def test_an_embedded_daemon_reports_its_bound_address(
        make_config: Callable[..., daemon.Config]) -> None:
    config = make_config()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                functools.partial(daemon.serve, config, apps=POLL_APPS()))
            assert host == "127.0.0.1"
            assert isinstance(port, int) and port > 0
            server = Server(host, port, config.data_dir, config)
            reply = await admin_request(server, {"type": "create-room", "room": "lunch",
                                                 "app": "poll", "meta": LUNCH})
            assert reply["type"] == "room"
            nursery.cancel_scope.cancel()
