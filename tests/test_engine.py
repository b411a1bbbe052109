"""The room engine as a specification: events in, exact effects out. No sockets, no trio.

Every test drives ``daemon.engine.Engine`` with the built-in chat app, deterministic
session ids (``s1``, ``s2``...) and resume tokens (``token-1``...), explicit ``now``
values and small integer connection ids, and compares the whole list of effects it
returns. Deferred effects are checked by calling them as the server would: a
``Persist``'s ``on_commit(now)`` / ``on_failure(exc, now)``, a ``Query``'s
``respond(entries, now)``. The admin endpoint's connection (``ADMIN``) is welcomed with
the admin token when the engine is made.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar
from unittest.mock import ANY

import msgspec
import pytest

from daemon.apps.api import App, Context
from daemon.apps.chat import ChatApp
from daemon.core.access import ADMIN as ADMIN_ACCESS
from daemon.core.access import ANONYMOUS, Access
from daemon.core.effects import (
    AccessRefused,
    CancelTimer,
    Close,
    Effect,
    ParticipantKicked,
    Persist,
    Query,
    RoomCreated,
    RoomRemoved,
    Send,
    StartTimer,
)
from daemon.core.engine import Engine
from daemon.core.records import AppendLog, KeyUse, LogEntry, PutRoom, StoredRoom
from daemon.core.records import DeleteRoom as DeleteRoomRecord
from protocol import CloseCode, ErrorCode, Grant, Request
from protocol import admin as adm
from protocol.chat import (
    ChatMessage,
    ChatParticipantMeta,
    ChatRoomMeta,
    GetMessages,
    MessagePosted,
    Messages,
    Pin,
    PinsChanged,
    SendMessage,
    SetName,
    SetStatus,
    SetTopic,
    TopicChanged,
    Unpin,
)
from protocol.messages import (
    AddPeer,
    Error,
    GetParticipants,
    Hello,
    IceCandidate,
    IceCandidateRelayed,
    Join,
    Leave,
    MediaState,
    Ok,
    Part,
    Participant,
    ParticipantJoined,
    ParticipantLeft,
    Participants,
    ParticipantUpdated,
    RelayIceCandidate,
    RelaySessionDescription,
    RemovePeer,
    RoomInfo,
    SessionDescription,
    SessionDescriptionRelayed,
    SetMediaState,
    Welcome,
)
from protocol.relay import (
    ForwardIceCandidate,
    ForwardSessionDescription,
    IceCandidateForwarded,
    SessionDescriptionForwarded,
)

GRACE = 30.0
ROOM = "lobby"
ADMIN = 99  # the admin endpoint's connection id
T0 = 1000.0  # alice says hello at T0, bob at T0 + 1

# Connection ids of the usual cast.
ALICE, BOB, CAROL, OBSERVER = 1, 2, 3, 4


# --- helpers -----------------------------------------------------------------------------------


def make_engine(*apps: App[Any, Any], **options: Any) -> Engine:
    """An engine whose session ids are s1, s2... and resume tokens token-1, token-2..."""
    ids = (f"s{n}" for n in itertools.count(1))
    tokens = (f"token-{n}" for n in itertools.count(1))
    engine = Engine(list(apps) or [ChatApp()], grace=GRACE, server="roomctl-test",
                    new_id=lambda: next(ids), new_token=lambda: next(tokens),
                    sign_token=fake_signer, **options)
    engine.admin_hello(ADMIN, Hello(), T0 - 100, ADMIN_ACCESS)
    return engine


def fake_signer(*, room: str, identity: str, name: str | None, grants: list[Grant],
                ttl: float, now: float) -> tuple[str, float]:
    """Stands in for daemon.tokens' JWT signer: the engine only passes the claims through."""
    return f"token:{room}:{identity}:{','.join(grants)}", now + ttl


def person(session_id: str, name: str, joined_at: float, *, live: bool = True,
           in_call: bool = False, media: MediaState | None = None,
           messages_sent: int = 0, status: str = "online", status_text: str = ""
           ) -> Participant:
    """The participant view of a chat-room session."""
    return Participant(
        id=session_id, live=live, joined_at=joined_at, in_call=in_call,
        media=media or MediaState(),
        meta=ChatParticipantMeta(name=name, status=status,  # type: ignore[arg-type]
                                 status_text=status_text, messages_sent=messages_sent),
    )


def chat_room(name: str = ROOM, *, participants: int, created_at: float = T0,
              last_seq: int = 0, meta: ChatRoomMeta | None = None) -> RoomInfo:
    return RoomInfo(name=name, app="chat", created_at=created_at, participants=participants,
                    last_seq=last_seq, meta=meta or ChatRoomMeta(creator="alice"))


def error(conn: int, code: ErrorCode, ref: str | None = None, message: Any = ANY,
          grant: Any = ANY, retry_after: Any = ANY) -> Send:
    return Send((conn,), Error(ref=ref, code=code, message=message, grant=grant,
                               retry_after=retry_after))


def only_persist(effects: list[Effect]) -> Persist:
    """Assert ``effects`` is exactly one ``Persist`` (nothing is sent before the commit)."""
    assert len(effects) == 1 and isinstance(effects[0], Persist), effects
    return effects[0]


def commit(persist: Effect, now: float = T0 + 50) -> list[Effect]:
    assert isinstance(persist, Persist) and persist.on_commit is not None
    return list(persist.on_commit(now))


def fail(persist: Effect) -> list[Effect]:
    assert isinstance(persist, Persist) and persist.on_failure is not None
    return list(persist.on_failure(OSError("disk full"), T0 + 50))


def message(seq: int, at: float, sender: str, name: str, text: str) -> ChatMessage:
    return ChatMessage(seq=seq, at=at, sender_id=sender, sender_name=name, text=text)


def log_entry(msg: ChatMessage) -> LogEntry:
    return LogEntry(seq=msg.seq, at=msg.at, body=msgspec.msgpack.encode(msg))


def post(engine: Engine, conn: int, text: str, now: float, ref: str | None = None
         ) -> list[Effect]:
    """Send a message and commit it; return the effects of the commit."""
    return commit(only_persist(engine.request(conn, SendMessage(text=text, ref=ref), now)))


def admin_create(engine: Engine, room: str, *, app: str = "chat",
                 meta: dict[str, Any] | None = None, now: float = T0,
                 private: bool = False) -> list[Effect]:
    effects = engine.admin(ADMIN, adm.CreateRoom(room=room, app=app, meta=meta,
                                                 private=private), now)
    assert effects[1:] == [RoomCreated(room, implicit=False)], effects
    return commit(effects[0])


@pytest.fixture
def engine() -> Engine:
    return make_engine()


@pytest.fixture
def pair(engine: Engine) -> Engine:
    """Alice (conn 1, s1, token-1) and Bob (conn 2, s2, token-2) are in the lobby."""
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)
    engine.hello(BOB, ROOM, Hello(name="bob"), T0 + 1)
    return engine


ALICE_VIEW = person("s1", "alice", T0)
BOB_VIEW = person("s2", "bob", T0 + 1)


# --- hello -------------------------------------------------------------------------------------


def test_first_hello_creates_the_room_persists_it_and_welcomes(engine: Engine) -> None:
    effects = engine.hello(ALICE, ROOM, Hello(name="alice", ref="h1"), T0)

    assert effects == [
        Persist((PutRoom(name=ROOM, app="chat", created_at=T0,
                         meta=msgspec.json.encode(ChatRoomMeta(creator="alice")),
                         implicit=True),)),
        RoomCreated(ROOM, implicit=True),
        Send((ALICE,), Welcome(ref="h1", session_id="s1", resume_token="token-1",
                               resumed=False, room=chat_room(participants=1),
                               participants=[ALICE_VIEW], grace=GRACE,
                               server="roomctl-test")),
    ]


def test_second_hello_lists_both_and_announces_the_newcomer(engine: Engine) -> None:
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)

    effects = engine.hello(BOB, ROOM, Hello(name="bob", ref="h2"), T0 + 1)

    assert effects == [
        Send((BOB,), Welcome(ref="h2", session_id="s2", resume_token="token-2",
                             room=chat_room(participants=2),
                             participants=[ALICE_VIEW, BOB_VIEW], grace=GRACE,
                             server="roomctl-test")),
        Send((ALICE,), ParticipantJoined(participant=BOB_VIEW)),
    ]


def test_hello_without_a_name_makes_a_guest(engine: Engine) -> None:
    effects = engine.hello(ALICE, ROOM, Hello(), T0)
    welcome = effects[-1]
    assert isinstance(welcome, Send) and isinstance(welcome.frame, Welcome)
    assert welcome.frame.participants == [person("s1", "guest", T0)]


def test_requests_before_hello_are_refused(engine: Engine) -> None:
    assert engine.request(ALICE, SendMessage(text="hi", ref="m1"), T0) == [
        error(ALICE, ErrorCode.BAD_REQUEST, "m1", "say hello first")
    ]
    assert engine.rooms == {}


def test_a_second_hello_on_the_same_connection_is_a_conflict(pair: Engine) -> None:
    # Through either entry point: the server hands a decoded hello to request().
    assert pair.hello(ALICE, ROOM, Hello(name="again", ref="h"), T0 + 5) == [
        error(ALICE, ErrorCode.CONFLICT, "h")
    ]
    assert pair.request(ALICE, Hello(name="again", ref="h"), T0 + 5) == [
        error(ALICE, ErrorCode.CONFLICT, "h")
    ]
    assert pair.participants(pair.rooms[ROOM]) == [ALICE_VIEW, BOB_VIEW]


def test_without_auto_create_an_unknown_room_is_refused_and_closed() -> None:
    engine = make_engine(auto_create=False)

    effects = engine.hello(ALICE, "nowhere", Hello(name="alice", ref="h"), T0)

    assert effects == [
        error(ALICE, ErrorCode.NOT_FOUND, "h"),
        Close(ALICE, CloseCode.ROOM_NOT_FOUND, ANY),
    ]
    assert engine.rooms == {} and not engine.welcomed(ALICE)


def test_without_auto_create_an_admin_created_room_is_joinable() -> None:
    engine = make_engine(auto_create=False)
    admin_create(engine, ROOM)

    effects = engine.hello(ALICE, ROOM, Hello(name="alice"), T0 + 1)

    assert [type(e) for e in effects] == [Send]
    assert isinstance(effects[0], Send) and isinstance(effects[0].frame, Welcome)


# --- leaving, the grace period and resuming ----------------------------------------------------


def test_a_dropped_connection_leaves_the_participant_not_live_for_the_grace(pair: Engine) -> None:
    effects = pair.disconnect(ALICE, T0 + 10)

    assert effects == [
        Send((BOB,), ParticipantUpdated(participant=person("s1", "alice", T0, live=False))),
        StartTimer(("grace", "s1"), T0 + 10 + GRACE),
    ]
    assert pair.participants(pair.rooms[ROOM]) == [person("s1", "alice", T0, live=False),
                                                   BOB_VIEW]


def test_grace_expiry_removes_the_participant_as_a_timeout(pair: Engine) -> None:
    pair.disconnect(ALICE, T0 + 10)

    effects = pair.timer_fired(("grace", "s1"), T0 + 10 + GRACE)

    assert effects == [Send((BOB,), ParticipantLeft(participant_id="s1", reason="timeout"))]
    assert pair.participants(pair.rooms[ROOM]) == [BOB_VIEW]


def test_grace_expiry_of_a_peer_in_the_call_tells_its_peers_to_drop_it(pair: Engine) -> None:
    pair.request(ALICE, Join(), T0 + 2)
    pair.request(BOB, Join(), T0 + 3)
    pair.disconnect(ALICE, T0 + 10)

    effects = pair.timer_fired(("grace", "s1"), T0 + 10 + GRACE)

    assert effects == [
        Send((BOB,), RemovePeer(peer_id="s1")),
        Send((BOB,), ParticipantLeft(participant_id="s1", reason="timeout")),
    ]


def test_resume_within_grace_restores_the_same_session_without_churn(pair: Engine) -> None:
    pair.disconnect(ALICE, T0 + 10)

    effects = pair.hello(CAROL, ROOM, Hello(name="alice", resume="token-1", ref="h"), T0 + 20)

    assert effects == [
        CancelTimer(("grace", "s1")),
        Send((CAROL,), Welcome(ref="h", session_id="s1", resume_token="token-1", resumed=True,
                               room=chat_room(participants=2),
                               participants=[ALICE_VIEW, BOB_VIEW], grace=GRACE,
                               server="roomctl-test")),
        Send((BOB,), ParticipantUpdated(participant=ALICE_VIEW)),
    ]
    # The resumed session answers on its new connection; a stale timer is a no-op.
    assert pair.timer_fired(("grace", "s1"), T0 + 10 + GRACE) == []
    assert pair.request(CAROL, SetName(name="alice2", ref="n"), T0 + 21)[-1] == \
        Send((CAROL,), Ok(ref="n"))


def test_resume_with_a_wrong_token_is_not_found_and_makes_no_session(pair: Engine) -> None:
    pair.disconnect(ALICE, T0 + 10)

    effects = pair.hello(CAROL, ROOM, Hello(resume="token-999", ref="h"), T0 + 20)

    assert effects == [error(CAROL, ErrorCode.NOT_FOUND, "h")]
    assert not pair.welcomed(CAROL)
    assert pair.request(CAROL, GetParticipants(ref="p"), T0 + 21) == [
        error(CAROL, ErrorCode.BAD_REQUEST, "p", "say hello first")
    ]


def test_resume_after_the_grace_expired_is_not_found(pair: Engine) -> None:
    pair.disconnect(ALICE, T0 + 10)
    pair.timer_fired(("grace", "s1"), T0 + 10 + GRACE)

    effects = pair.hello(CAROL, ROOM, Hello(resume="token-1", ref="h"), T0 + 11 + GRACE)

    assert effects == [error(CAROL, ErrorCode.NOT_FOUND, "h")]
    assert not pair.welcomed(CAROL)
    assert [p.id for p in pair.participants(pair.rooms[ROOM])] == ["s2"]


def test_resume_token_of_another_room_is_not_found(pair: Engine) -> None:
    pair.disconnect(ALICE, T0 + 10)
    pair.hello(CAROL, "elsewhere", Hello(name="carol"), T0 + 11)

    effects = pair.hello(OBSERVER, "elsewhere", Hello(resume="token-1", ref="h"), T0 + 12)

    assert effects == [error(OBSERVER, ErrorCode.NOT_FOUND, "h")]


def test_resume_while_the_old_connection_is_attached_closes_the_old_one(pair: Engine) -> None:
    effects = pair.hello(CAROL, ROOM, Hello(resume="token-1", ref="h"), T0 + 20)

    assert effects == [
        Close(ALICE, CloseCode.SESSION_RESUMED, ANY),
        Send((CAROL,), Welcome(ref="h", session_id="s1", resume_token="token-1", resumed=True,
                               room=chat_room(participants=2),
                               participants=[ALICE_VIEW, BOB_VIEW], grace=GRACE,
                               server="roomctl-test")),
        Send((BOB,), ParticipantUpdated(participant=ALICE_VIEW)),
    ]
    # The old connection's end is no longer the session's: no grace timer, no update.
    assert pair.disconnect(ALICE, T0 + 21) == []
    assert pair.session_of(CAROL) == (ROOM, "s1")


# --- hidden observers --------------------------------------------------------------------------


def test_a_hidden_observer_is_welcomed_but_never_announced(pair: Engine) -> None:
    effects = pair.hello(OBSERVER, ROOM, Hello(name="tail", hidden=True, ref="h"), T0 + 5)

    assert effects == [
        Send((OBSERVER,), Welcome(ref="h", session_id="s3", resume_token="token-3",
                                  room=chat_room(participants=2),
                                  participants=[ALICE_VIEW, BOB_VIEW], grace=GRACE,
                                  server="roomctl-test")),
    ]
    assert pair.request(ALICE, GetParticipants(ref="p"), T0 + 6) == [
        Send((ALICE,), Participants(ref="p", participants=[ALICE_VIEW, BOB_VIEW]))
    ]


def test_a_hidden_observer_ends_at_once_on_disconnect(pair: Engine) -> None:
    pair.hello(OBSERVER, ROOM, Hello(name="tail", hidden=True), T0 + 5)

    assert pair.disconnect(OBSERVER, T0 + 6) == []  # no left delta, no grace timer
    assert "s3" not in pair.rooms[ROOM].sessions
    assert pair.hello(CAROL, ROOM, Hello(resume="token-3", ref="h"), T0 + 7) == [
        error(CAROL, ErrorCode.NOT_FOUND, "h")
    ]


def test_a_hidden_observer_cannot_join_the_mesh_or_be_relayed_to(pair: Engine) -> None:
    pair.hello(OBSERVER, ROOM, Hello(name="tail", hidden=True), T0 + 5)

    assert pair.request(OBSERVER, Join(ref="j"), T0 + 6) == [
        error(OBSERVER, ErrorCode.FORBIDDEN, "j")
    ]
    assert pair.request(OBSERVER, RelayIceCandidate(peer_id="s1", candidate=IceCandidate(),
                                                    ref="r"), T0 + 6) == [
        error(OBSERVER, ErrorCode.FORBIDDEN, "r")
    ]
    assert pair.request(ALICE, RelayIceCandidate(peer_id="s3", candidate=IceCandidate(),
                                                 ref="r"), T0 + 6) == [
        error(ALICE, ErrorCode.NOT_FOUND, "r")
    ]
    assert not pair.rooms[ROOM].sessions["s3"].in_call


def test_a_hidden_observer_receives_room_broadcasts(pair: Engine) -> None:
    pair.hello(OBSERVER, ROOM, Hello(name="tail", hidden=True), T0 + 5)

    effects = post(pair, ALICE, "hi", T0 + 6)

    assert effects == [
        Send((ALICE, BOB, OBSERVER),
             MessagePosted(message=message(1, T0 + 6, "s1", "alice", "hi"))),
    ]
    # ...and participant deltas of the visible ones.
    assert pair.disconnect(BOB, T0 + 7) == [
        Send((ALICE, OBSERVER), ParticipantUpdated(participant=person("s2", "bob", T0 + 1,
                                                                      live=False))),
        StartTimer(("grace", "s2"), T0 + 7 + GRACE),
    ]


def test_a_hidden_observer_changing_its_name_is_not_announced(pair: Engine) -> None:
    pair.hello(OBSERVER, ROOM, Hello(name="tail", hidden=True), T0 + 5)

    assert pair.request(OBSERVER, SetName(name="tail2", ref="n"), T0 + 6) == [
        Send((OBSERVER,), Ok(ref="n"))
    ]


# --- room limits -------------------------------------------------------------------------------


def test_a_room_with_max_participants_refuses_one_more_but_not_observers(engine: Engine) -> None:
    admin_create(engine, ROOM, meta={"max_participants": 2})
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)
    engine.hello(BOB, ROOM, Hello(name="bob"), T0 + 1)

    assert engine.hello(CAROL, ROOM, Hello(name="carol", ref="h"), T0 + 2) == [
        error(CAROL, ErrorCode.ROOM_FULL, "h")
    ]
    assert not engine.welcomed(CAROL)
    effects = engine.hello(OBSERVER, ROOM, Hello(name="tail", hidden=True), T0 + 3)
    assert isinstance(effects[0], Send) and isinstance(effects[0].frame, Welcome)
    assert engine.rooms[ROOM].visible_count() == 2


def test_a_participant_in_grace_still_holds_its_place(engine: Engine) -> None:
    admin_create(engine, ROOM, meta={"max_participants": 2})
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)
    engine.hello(BOB, ROOM, Hello(name="bob"), T0 + 1)
    engine.disconnect(BOB, T0 + 2)

    assert engine.hello(CAROL, ROOM, Hello(name="carol", ref="h"), T0 + 3) == [
        error(CAROL, ErrorCode.ROOM_FULL, "h")
    ]
    engine.timer_fired(("grace", "s2"), T0 + 2 + GRACE)
    # The refused connection may say hello again; now there is room.
    effects = engine.hello(CAROL, ROOM, Hello(name="carol", ref="h"), T0 + 3 + GRACE)
    assert isinstance(effects[0], Send) and isinstance(effects[0].frame, Welcome)


def test_create_room_above_the_daemons_participant_cap_is_refused_naming_the_cap() -> None:
    engine = make_engine(max_participants=100)

    assert engine.admin(ADMIN, adm.CreateRoom(room=ROOM, meta={"max_participants": 500},
                                              ref="c"), T0) == [
        error(ADMIN, ErrorCode.BAD_REQUEST, "c",
              "max_participants 500 is over this daemon's cap of 100 participants per room")
    ]
    assert engine.rooms == {}
    admin_create(engine, ROOM, meta={"max_participants": 100})  # the cap itself is fine


def test_the_lower_of_the_room_limit_and_the_daemon_cap_applies() -> None:
    engine = make_engine(max_participants=1)
    # A room stored before the cap was lowered keeps its own, higher, limit on disk.
    engine.restore([StoredRoom(name=ROOM, app="chat", created_at=T0, last_seq=0,
                               meta=msgspec.json.encode(ChatRoomMeta(max_participants=5)))], T0)
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)

    assert engine.hello(BOB, ROOM, Hello(name="bob", ref="h"), T0 + 1) == [
        error(BOB, ErrorCode.ROOM_FULL, "h", "the room is full (1 participants)")
    ]


# --- rooms made by a visit, and their removal once empty -----------------------------------------

EMPTY = 120.0  # the empty timeout of these tests


def visited() -> Engine:
    """Alice's visit (conn 1, s1) made the lobby; she is its only participant."""
    engine = make_engine(empty_timeout=EMPTY)
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)
    return engine


def test_a_room_made_by_a_visit_is_removed_after_staying_empty() -> None:
    engine = visited()
    engine.disconnect(ALICE, T0 + 10)

    # The participant in its grace period still holds the room; its end starts the wait.
    assert engine.timer_fired(("grace", "s1"), T0 + 10 + GRACE) == [
        StartTimer(("empty", ROOM), T0 + 10 + GRACE + EMPTY),
    ]
    effects = engine.timer_fired(("empty", ROOM), T0 + 10 + GRACE + EMPTY)

    assert effects == [Persist((DeleteRoomRecord(name=ROOM),)), RoomRemoved(ROOM, "expired")]
    assert ROOM not in engine.rooms


def test_a_visit_before_the_timeout_keeps_the_room() -> None:
    engine = visited()
    engine.request(ALICE, Leave(), T0 + 5)

    effects = engine.hello(BOB, ROOM, Hello(name="bob", ref="h"), T0 + 6)

    assert effects[0] == CancelTimer(("empty", ROOM))
    assert isinstance(effects[1], Send) and isinstance(effects[1].frame, Welcome)
    assert engine.timer_fired(("empty", ROOM), T0 + 5 + EMPTY) == []  # stale: a no-op
    assert ROOM in engine.rooms


def test_leaving_the_room_empty_starts_the_wait_at_once() -> None:
    engine = visited()

    assert engine.request(ALICE, Leave(ref="l"), T0 + 5) == [
        Send((ALICE,), Ok(ref="l")),
        Close(ALICE, CloseCode.NORMAL, ANY),
        StartTimer(("empty", ROOM), T0 + 5 + EMPTY),
    ]


def test_a_hidden_observer_keeps_the_room_alive_while_connected() -> None:
    engine = visited()
    engine.hello(OBSERVER, ROOM, Hello(hidden=True), T0 + 1)
    engine.request(ALICE, Leave(), T0 + 2)  # no timer: the observer is still there

    assert engine.disconnect(OBSERVER, T0 + 3) == [StartTimer(("empty", ROOM), T0 + 3 + EMPTY)]


def test_a_kick_that_empties_the_room_starts_the_wait() -> None:
    engine = visited()

    effects = engine.admin(ADMIN, adm.Kick(room=ROOM, participant_id="s1", ref="k"), T0 + 1)

    assert StartTimer(("empty", ROOM), T0 + 1 + EMPTY) in effects


@pytest.mark.parametrize("use", ["message", "topic"])  # (a pin needs a message first)
def test_a_room_that_was_used_is_kept_when_empty(use: str) -> None:
    engine = visited()
    if use == "message":
        post(engine, ALICE, "hello", T0 + 1)
    else:
        persist = only_persist(engine.request(ALICE, SetTopic(topic="plans"), T0 + 1))
        # The metadata write records that the room is no longer implicit.
        [write] = persist.writes
        assert isinstance(write, PutRoom) and write.implicit is False
        commit(persist)

    assert engine.request(ALICE, Leave(ref="l"), T0 + 3) == [
        Send((ALICE,), Ok(ref="l")), Close(ALICE, CloseCode.NORMAL, ANY),
    ]


def test_a_room_made_with_create_room_is_kept_when_empty() -> None:
    engine = make_engine(empty_timeout=EMPTY)
    admin_create(engine, ROOM)
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0 + 1)

    assert engine.request(ALICE, Leave(ref="l"), T0 + 2) == [
        Send((ALICE,), Ok(ref="l")), Close(ALICE, CloseCode.NORMAL, ANY),
    ]


def test_create_room_if_missing_adopts_a_waiting_room_and_stops_the_wait() -> None:
    engine = visited()
    engine.request(ALICE, Leave(), T0 + 1)

    effects = engine.admin(ADMIN, adm.CreateRoom(room=ROOM, if_missing=True, ref="c"), T0 + 2)

    assert effects[0] == CancelTimer(("empty", ROOM))
    [write] = only_persist(effects[1:]).writes
    assert isinstance(write, PutRoom) and write.implicit is False
    assert engine.timer_fired(("empty", ROOM), T0 + 1 + EMPTY) == []
    assert ROOM in engine.rooms


def test_deleting_a_waiting_room_cancels_its_timer() -> None:
    engine = visited()
    engine.request(ALICE, Leave(), T0 + 1)

    effects = engine.admin(ADMIN, adm.DeleteRoom(room=ROOM, ref="d"), T0 + 2)

    assert effects[0] == CancelTimer(("empty", ROOM))
    assert effects[-1] == RoomRemoved(ROOM, "deleted")


def test_a_room_made_by_a_refused_hello_does_not_stay() -> None:
    engine = make_engine(ChatApp(max_name=4), empty_timeout=EMPTY)

    effects = engine.hello(ALICE, ROOM, Hello(name="alexandra", ref="h"), T0)

    assert effects[1:] == [
        RoomCreated(ROOM, implicit=True),
        error(ALICE, ErrorCode.TOO_LARGE, "h"),
        StartTimer(("empty", ROOM), T0 + EMPTY),
    ]


def test_restored_rooms_made_by_a_visit_and_never_used_get_their_timer() -> None:
    engine = make_engine(empty_timeout=EMPTY)
    meta = msgspec.json.encode(ChatRoomMeta())

    effects = engine.restore([
        StoredRoom(name="unused", app="chat", created_at=T0, meta=meta, last_seq=0,
                   implicit=True),
        StoredRoom(name="chatted", app="chat", created_at=T0, meta=meta, last_seq=4,
                   implicit=True),
        StoredRoom(name="created", app="chat", created_at=T0, meta=meta, last_seq=0),
    ], now=T0 + 500)

    assert effects == [StartTimer(("empty", "unused"), T0 + 500 + EMPTY)]
    assert sorted(engine.rooms) == ["chatted", "created", "unused"]


def test_at_the_room_limit_the_longest_waiting_room_makes_space() -> None:
    engine = make_engine(empty_timeout=EMPTY, max_rooms=2)
    for conn, room, now in ((ALICE, "first", T0), (BOB, "second", T0 + 1)):
        engine.hello(conn, room, Hello(name="visitor"), now)
        engine.request(conn, Leave(), now + 1)

    effects = engine.hello(CAROL, "third", Hello(name="carol"), T0 + 5)

    assert effects[:3] == [
        CancelTimer(("empty", "first")),
        Persist((DeleteRoomRecord(name="first"),)),
        RoomRemoved("first", "expired"),
    ]
    assert sorted(engine.rooms) == ["second", "third"]
    # create-room makes space the same way; with no room waiting, the limit holds.
    effects = engine.admin(ADMIN, adm.CreateRoom(room="fourth"), T0 + 6)
    assert effects[:3] == [
        CancelTimer(("empty", "second")),
        Persist((DeleteRoomRecord(name="second"),)),
        RoomRemoved("second", "expired"),
    ]
    assert sorted(engine.rooms) == ["fourth", "third"]
    assert engine.admin(ADMIN, adm.CreateRoom(room="fifth", ref="c"), T0 + 6) == [
        error(ADMIN, ErrorCode.LIMIT_REACHED, "c")
    ]


def test_an_infinite_empty_timeout_keeps_every_room() -> None:
    engine = make_engine(empty_timeout=float("inf"))
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)

    assert engine.request(ALICE, Leave(ref="l"), T0 + 1) == [
        Send((ALICE,), Ok(ref="l")), Close(ALICE, CloseCode.NORMAL, ANY),
    ]


# --- the WebRTC mesh ---------------------------------------------------------------------------


def test_the_first_to_join_gets_no_peers(pair: Engine) -> None:
    assert pair.request(ALICE, Join(ref="j"), T0 + 2) == [
        Send((ALICE, BOB), ParticipantUpdated(participant=person("s1", "alice", T0,
                                                                 in_call=True))),
        Send((ALICE,), Ok(ref="j")),
    ]


def test_a_newcomer_to_the_call_offers_to_each_peer_already_in_it(pair: Engine) -> None:
    pair.request(ALICE, Join(), T0 + 2)

    bob = person("s2", "bob", T0 + 1, in_call=True)
    # Alice, in the call, learns of Bob's new view from her add-peer alone: one frame for
    # the newcomer, not add-peer and participant-updated. Bob gets his own update.
    assert pair.request(BOB, Join(ref="j"), T0 + 3) == [
        Send((ALICE,), AddPeer(peer_id="s2", should_create_offer=False, participant=bob)),
        Send((BOB,), AddPeer(peer_id="s1", should_create_offer=True)),
        Send((BOB,), ParticipantUpdated(participant=bob)),
        Send((BOB,), Ok(ref="j")),
    ]
    # Joining again changes nothing; without a ref there is not even an ok.
    assert pair.request(BOB, Join(ref="again"), T0 + 4) == [Send((BOB,), Ok(ref="again"))]
    assert pair.request(BOB, Join(), T0 + 4) == []


def test_a_join_sends_the_peers_one_frame_for_the_newcomer(pair: Engine) -> None:
    # Three in the call, then a fourth joins: its add-peer is the same frame for all three
    # peers (encoded once), and participant-updated goes only to those who get no add-peer
    # for it (here the joiner alone).
    for conn, name in ((CAROL, "carol"), (OBSERVER, "dave")):
        pair.hello(conn, ROOM, Hello(name=name), T0 + 2)
    for conn in (ALICE, BOB, CAROL):
        pair.request(conn, Join(), T0 + 3)

    effects = pair.request(OBSERVER, Join(), T0 + 4)

    sends = [e for e in effects if isinstance(e, Send)]
    to_peers = [e for e in sends if isinstance(e.frame, AddPeer) and e.frame.participant]
    assert [sorted(e.to) for e in to_peers] == [sorted((ALICE, BOB, CAROL))]
    assert all(isinstance(e.frame, AddPeer) and e.frame.should_create_offer
               for e in sends if e.to == (OBSERVER,) and isinstance(e.frame, AddPeer))
    updates = [e for e in sends if isinstance(e.frame, ParticipantUpdated)]
    assert [e.to for e in updates] == [(OBSERVER,)]
    assert sum(len(e.to) for e in sends) == 3 + 3 + 1  # before: 3 + 3 + 4 frames


def test_part_drops_both_ends_of_each_edge(pair: Engine) -> None:
    pair.request(ALICE, Join(), T0 + 2)
    pair.request(BOB, Join(), T0 + 3)

    assert pair.request(BOB, Part(ref="p"), T0 + 4) == [
        Send((ALICE,), RemovePeer(peer_id="s2")),
        Send((BOB,), RemovePeer(peer_id="s1")),
        Send((ALICE, BOB), ParticipantUpdated(participant=person("s2", "bob", T0 + 1))),
        Send((BOB,), Ok(ref="p")),
    ]
    assert pair.request(BOB, Part(ref="p2"), T0 + 5) == [Send((BOB,), Ok(ref="p2"))]


def test_a_peer_in_grace_is_not_offered_to_newcomers_until_it_resumes(pair: Engine) -> None:
    pair.request(ALICE, Join(), T0 + 2)
    pair.request(BOB, Join(), T0 + 3)
    pair.disconnect(ALICE, T0 + 4)
    pair.hello(CAROL, ROOM, Hello(name="carol"), T0 + 5)

    # Carol (s3) joins: only Bob is live in the call.
    joined = pair.request(CAROL, Join(), T0 + 6)
    carol = person("s3", "carol", T0 + 5, in_call=True)
    assert [e for e in joined if isinstance(e, Send) and isinstance(e.frame, AddPeer)] == [
        Send((BOB,), AddPeer(peer_id="s3", should_create_offer=False, participant=carol)),
        Send((CAROL,), AddPeer(peer_id="s2", should_create_offer=True)),
    ]
    # Alice resumes: she keeps her edge to Bob and offers to Carol, whom she never met.
    resumed = pair.hello(OBSERVER, ROOM, Hello(resume="token-1"), T0 + 7)
    assert [e for e in resumed if isinstance(e, Send) and isinstance(e.frame, AddPeer)] == [
        Send((CAROL,), AddPeer(peer_id="s1", should_create_offer=False)),
        Send((OBSERVER,), AddPeer(peer_id="s3", should_create_offer=True)),
    ]


def test_a_resumed_peer_learns_of_edges_dropped_while_it_was_away(pair: Engine) -> None:
    pair.request(ALICE, Join(), T0 + 2)
    pair.request(BOB, Join(), T0 + 3)
    pair.disconnect(ALICE, T0 + 4)
    pair.request(BOB, Part(), T0 + 5)  # Alice is away: nothing can reach her

    resumed = pair.hello(CAROL, ROOM, Hello(resume="token-1"), T0 + 6)

    assert Send((CAROL,), RemovePeer(peer_id="s2")) in resumed


def test_relay_delivers_to_the_target_with_the_sender_as_peer_id(pair: Engine) -> None:
    candidate = IceCandidate(candidate="candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
                             sdp_mid="0", sdp_m_line_index=0)
    offer = SessionDescription(type="offer", sdp="v=0\r\n")

    assert pair.request(ALICE, RelayIceCandidate(peer_id="s2", candidate=candidate, ref="i"),
                        T0 + 2) == [
        Send((BOB,), IceCandidateRelayed(peer_id="s1", candidate=candidate)),
        Send((ALICE,), Ok(ref="i")),
    ]
    assert pair.request(BOB, RelaySessionDescription(peer_id="s1", description=offer),
                        T0 + 3) == [
        Send((ALICE,), SessionDescriptionRelayed(peer_id="s2", description=offer)),
    ]


def test_a_forwarded_relay_passes_the_very_payload_on(pair: Engine) -> None:
    # What the daemon decodes (protocol.relay): the payload is the sender's bytes.
    candidate = msgspec.Raw(b'{"candidate":"c","x-new":1}')
    description = msgspec.Raw(b'{"type":"offer","sdp":"v=0"}')

    effects = pair.request(ALICE, ForwardIceCandidate(peer_id="s2", candidate=candidate),
                           T0 + 2)
    assert effects == [Send((BOB,), IceCandidateForwarded(peer_id="s1", candidate=candidate))]
    assert isinstance(effects[0], Send) and isinstance(effects[0].frame, IceCandidateForwarded)
    assert effects[0].frame.candidate is candidate
    assert pair.request(BOB, ForwardSessionDescription(peer_id="s1", description=description,
                                                       ref="d"), T0 + 3) == [
        Send((ALICE,), SessionDescriptionForwarded(peer_id="s2", description=description)),
        Send((BOB,), Ok(ref="d")),
    ]


@pytest.mark.parametrize("target", ["s1", "s99", ""])
def test_relay_to_self_or_an_unknown_peer_is_not_found(pair: Engine, target: str) -> None:
    assert pair.request(ALICE, RelayIceCandidate(peer_id=target, candidate=IceCandidate(),
                                                 ref="r"), T0 + 2) == [
        error(ALICE, ErrorCode.NOT_FOUND, "r")
    ]


def test_relay_is_confined_to_the_room(pair: Engine) -> None:
    pair.hello(CAROL, "elsewhere", Hello(name="carol"), T0 + 2)  # s3 in another room

    effects = pair.request(ALICE, RelaySessionDescription(
        peer_id="s3", description=SessionDescription(type="offer", sdp="x"), ref="r"), T0 + 3)

    assert effects == [error(ALICE, ErrorCode.NOT_FOUND, "r")]
    assert not any(isinstance(e, Send) and CAROL in e.to for e in effects)


def test_relay_to_a_peer_in_grace_says_it_is_reconnecting(pair: Engine) -> None:
    pair.disconnect(BOB, T0 + 2)

    effects = pair.request(ALICE, RelayIceCandidate(peer_id="s2", candidate=IceCandidate(),
                                                    ref="r"), T0 + 3)

    assert effects == [error(ALICE, ErrorCode.NOT_FOUND, "r")]
    assert isinstance(effects[0], Send) and isinstance(effects[0].frame, Error)
    assert "reconnecting" in effects[0].frame.message


def test_media_state_changes_are_broadcast_once(pair: Engine) -> None:
    request = SetMediaState(audio_muted=False, video_muted=True, ref="m")
    unmuted = person("s1", "alice", T0, media=MediaState(audio_muted=False, video_muted=True))

    assert pair.request(ALICE, request, T0 + 2) == [
        Send((ALICE, BOB), ParticipantUpdated(participant=unmuted)),
        Send((ALICE,), Ok(ref="m")),
    ]
    assert pair.request(ALICE, request, T0 + 3) == [Send((ALICE,), Ok(ref="m"))]


# --- the chat app ------------------------------------------------------------------------------


def test_send_message_is_acknowledged_and_broadcast_only_after_commit(pair: Engine) -> None:
    first = pair.request(ALICE, SendMessage(text="hello", ref="m1"), T0 + 5)
    second = pair.request(BOB, SendMessage(text="hi alice", ref="m2"), T0 + 6)

    hello = message(1, T0 + 5, "s1", "alice", "hello")
    hi = message(2, T0 + 6, "s2", "bob", "hi alice")
    assert only_persist(first).writes == (
        AppendLog(room=ROOM, seq=1, at=T0 + 5, body=msgspec.msgpack.encode(hello)),
    )
    assert only_persist(second).writes == (
        AppendLog(room=ROOM, seq=2, at=T0 + 6, body=msgspec.msgpack.encode(hi)),
    )
    assert pair.rooms[ROOM].last_seq == 0  # nothing is committed yet

    assert commit(first[0]) == [
        Send((ALICE,), Ok(ref="m1", seq=1, at=T0 + 5)),
        Send((ALICE, BOB), MessagePosted(message=hello)),
    ]
    assert pair.rooms[ROOM].last_seq == 1
    assert commit(second[0]) == [
        Send((BOB,), Ok(ref="m2", seq=2, at=T0 + 6)),
        Send((ALICE, BOB), MessagePosted(message=hi)),
    ]
    assert pair.rooms[ROOM].last_seq == 2


def test_a_post_with_a_used_key_is_answered_with_the_first_seq_and_stores_nothing(
        pair: Engine) -> None:
    first = pair.request(ALICE, SendMessage(text="deploy", key="ci-42", ref="m1"), T0 + 5)
    hello = message(1, T0 + 5, "s1", "alice", "deploy")
    assert only_persist(first).writes == (
        AppendLog(room=ROOM, seq=1, at=T0 + 5, body=msgspec.msgpack.encode(hello),
                  key="ci-42"),
    )
    commit(first[0])

    # The retry (a lost ok, a reconnect) and any later post with the key: the first seq.
    retry = pair.request(ALICE, SendMessage(text="deploy", key="ci-42", ref="m2"), T0 + 6)
    # The first post's seq and time, not the retry's.
    assert retry == [Send((ALICE,), Ok(ref="m2", seq=1, at=T0 + 5))]
    other = pair.request(BOB, SendMessage(text="deploy", key="ci-42", ref="b"), T0 + 7)
    assert other == [Send((BOB,), Ok(ref="b", seq=1, at=T0 + 5))]
    # A new key is a new message; the key of another room means nothing here.
    assert only_persist(pair.request(ALICE, SendMessage(text="x", key="ci-43"), T0 + 8))


def test_a_retry_while_the_first_post_is_on_its_way_waits_for_its_commit(
        pair: Engine) -> None:
    first = pair.request(ALICE, SendMessage(text="deploy", key="k", ref="m1"), T0 + 5)
    retry = pair.request(ALICE, SendMessage(text="deploy", key="k", ref="m2"), T0 + 6)
    assert only_persist(retry).writes == ()  # nothing to store: it just waits its turn

    commit(first[0])
    assert commit(retry[0]) == [Send((ALICE,), Ok(ref="m2", seq=1, at=T0 + 5))]

    failing = pair.request(ALICE, SendMessage(text="lost", key="k2", ref="m3"), T0 + 7)
    waiting = pair.request(ALICE, SendMessage(text="lost", key="k2", ref="m4"), T0 + 8)
    fail(failing[0])
    assert commit(waiting[0]) == [error(ALICE, ErrorCode.UNAVAILABLE, "m4")]
    # The key is free again: the next try stores the message.
    assert only_persist(pair.request(ALICE, SendMessage(text="lost", key="k2"), T0 + 9))


def test_keys_come_back_with_the_room_and_expire_after_the_window() -> None:
    engine = make_engine(key_window=100.0)
    engine.restore([StoredRoom(name=ROOM, app="chat", created_at=T0, meta=b"{}", last_seq=7,
                               keys=[KeyUse("old", 3, T0), KeyUse("new", 7, T0 + 90)])], T0)
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0 + 100)

    assert engine.request(ALICE, SendMessage(text="x", key="new", ref="a"), T0 + 101) == [
        Send((ALICE,), Ok(ref="a", seq=7, at=T0 + 90))]
    # Committing a later key drops those older than the window before it.
    commit(only_persist(engine.request(ALICE, SendMessage(text="y", key="later"), T0 + 150)))
    assert list(engine.rooms[ROOM].keys) == ["new", "later"]


def test_send_message_without_ref_gets_no_ok(pair: Engine) -> None:
    assert post(pair, ALICE, "quiet", T0 + 5) == [
        Send((ALICE, BOB), MessagePosted(message=message(1, T0 + 5, "s1", "alice", "quiet"))),
    ]


def test_a_failed_commit_answers_internal_and_broadcasts_nothing(pair: Engine) -> None:
    effects = pair.request(ALICE, SendMessage(text="lost", ref="m1"), T0 + 5)

    assert fail(only_persist(effects)) == [error(ALICE, ErrorCode.INTERNAL, "m1")]
    assert pair.rooms[ROOM].last_seq == 0


def test_a_message_that_failed_to_commit_is_not_counted(pair: Engine) -> None:
    fail(only_persist(pair.request(ALICE, SendMessage(text="lost"), T0 + 5)))

    assert pair.request(BOB, GetParticipants(ref="p"), T0 + 6) == [
        Send((BOB,), Participants(ref="p", participants=[ALICE_VIEW, BOB_VIEW])),
    ]


def test_a_set_topic_that_failed_to_commit_changes_nothing(pair: Engine) -> None:
    effects = pair.request(BOB, SetTopic(topic="never saved", ref="t"), T0 + 5)
    assert fail(only_persist(effects)) == [error(BOB, ErrorCode.INTERNAL, "t")]

    welcome = pair.hello(CAROL, ROOM, Hello(name="carol"), T0 + 6)[0]

    assert isinstance(welcome, Send) and isinstance(welcome.frame, Welcome)
    assert welcome.frame.room == chat_room(participants=3)


def test_messages_sent_is_counted_without_a_participant_update(pair: Engine) -> None:
    post(pair, ALICE, "one", T0 + 5)
    post(pair, ALICE, "two", T0 + 6)

    assert pair.request(BOB, GetParticipants(ref="p"), T0 + 7) == [
        Send((BOB,), Participants(ref="p", participants=[
            person("s1", "alice", T0, messages_sent=2), BOB_VIEW])),
    ]


def test_set_name_and_set_status_broadcast_participant_updated(pair: Engine) -> None:
    assert pair.request(ALICE, SetName(name="Alice L.", ref="n"), T0 + 5) == [
        Send((ALICE, BOB), ParticipantUpdated(participant=person("s1", "Alice L.", T0))),
        Send((ALICE,), Ok(ref="n")),
    ]
    assert pair.request(ALICE, SetStatus(status="away", text="lunch", ref="s"), T0 + 6) == [
        Send((ALICE, BOB), ParticipantUpdated(participant=person(
            "s1", "Alice L.", T0, status="away", status_text="lunch"))),
        Send((ALICE,), Ok(ref="s")),
    ]
    # The new name is what later messages carry.
    assert post(pair, ALICE, "back", T0 + 7) == [
        Send((ALICE, BOB), MessagePosted(message=message(1, T0 + 7, "s1", "Alice L.", "back"))),
    ]


def test_set_topic_is_stored_then_acknowledged_and_broadcast(pair: Engine) -> None:
    effects = pair.request(BOB, SetTopic(topic="release plans", ref="t"), T0 + 5)

    persist = only_persist(effects)
    assert persist.writes == (
        PutRoom(name=ROOM, app="chat", created_at=T0,
                meta=msgspec.json.encode(ChatRoomMeta(topic="release plans", creator="alice"))),
    )
    assert commit(persist) == [
        Send((BOB,), Ok(ref="t")),
        Send((ALICE, BOB), TopicChanged(topic="release plans", by="s2")),
    ]


def test_pin_needs_a_committed_message(pair: Engine) -> None:
    assert pair.request(ALICE, Pin(seq=1, ref="p"), T0 + 5) == [
        error(ALICE, ErrorCode.NOT_FOUND, "p")
    ]
    pending = pair.request(ALICE, SendMessage(text="pin me"), T0 + 6)
    # Allocated but not yet on disk: still not found.
    assert pair.request(ALICE, Pin(seq=1, ref="p"), T0 + 7) == [
        error(ALICE, ErrorCode.NOT_FOUND, "p")
    ]
    commit(pending[0])

    persist = only_persist(pair.request(ALICE, Pin(seq=1, ref="p"), T0 + 8))

    assert persist.writes == (  # a pin makes the room one to keep (no longer implicit)
        PutRoom(name=ROOM, app="chat", created_at=T0,
                meta=msgspec.json.encode(ChatRoomMeta(pins=[1], creator="alice"))),
    )
    assert commit(persist) == [
        Send((ALICE,), Ok(ref="p")),
        Send((ALICE, BOB), PinsChanged(pins=[1], by="s1")),
    ]
    # Pinning it again is a no-op success.
    assert pair.request(ALICE, Pin(seq=1, ref="again"), T0 + 9) == [
        Send((ALICE,), Ok(ref="again"))
    ]
    assert pair.request(ALICE, Pin(seq=2, ref="p2"), T0 + 9) == [
        error(ALICE, ErrorCode.NOT_FOUND, "p2")
    ]


def test_unpin(pair: Engine) -> None:
    post(pair, ALICE, "one", T0 + 5)
    post(pair, ALICE, "two", T0 + 6)
    commit(pair.request(ALICE, Pin(seq=2), T0 + 7)[0])
    commit(pair.request(ALICE, Pin(seq=1), T0 + 8)[0])

    assert pair.request(BOB, Unpin(seq=3, ref="u"), T0 + 9) == [
        error(BOB, ErrorCode.NOT_FOUND, "u")
    ]
    persist = only_persist(pair.request(BOB, Unpin(seq=1, ref="u"), T0 + 10))
    assert persist.writes == (
        PutRoom(name=ROOM, app="chat", created_at=T0,
                meta=msgspec.json.encode(ChatRoomMeta(pins=[2], creator="alice"))),
    )
    assert commit(persist) == [
        Send((BOB,), Ok(ref="u")),
        Send((ALICE, BOB), PinsChanged(pins=[2], by="s2")),
    ]
    # Unpinning a message that is not pinned is a no-op success, as pinning a pinned one is.
    assert pair.request(BOB, Unpin(seq=1, ref="u2"), T0 + 11) == [Send((BOB,), Ok(ref="u2"))]
    assert pair.request(BOB, Unpin(seq=3, ref="u3"), T0 + 11) == [
        error(BOB, ErrorCode.NOT_FOUND, "u3")
    ]


HISTORY = [message(n, T0 + n, "s1", "alice", f"m{n}") for n in range(1, 6)]


def query_of(effects: list[Effect]) -> Query:
    assert len(effects) == 1 and isinstance(effects[0], Query), effects
    return effects[0]


def test_get_messages_forward_reads_one_extra_to_learn_has_more(pair: Engine) -> None:
    query = query_of(pair.request(BOB, GetMessages(after=0, limit=2, ref="g"), T0 + 10))

    assert (query.room, query.after, query.before, query.limit) == (ROOM, 0, None, 3)
    # The store returns the first limit+1 after the cursor, ascending.
    assert list(query.respond([log_entry(m) for m in HISTORY[0:3]], T0 + 50)) == [
        Send((BOB,), Messages(ref="g", messages=HISTORY[0:2], has_more=True)),
    ]
    assert list(query.respond([log_entry(m) for m in HISTORY[3:5]], T0 + 50)) == [
        Send((BOB,), Messages(ref="g", messages=HISTORY[3:5], has_more=False)),
    ]


def test_get_messages_backward_keeps_the_newest_of_the_page(pair: Engine) -> None:
    query = query_of(pair.request(BOB, GetMessages(limit=2, ref="g"), T0 + 10))

    assert (query.room, query.after, query.before, query.limit) == (ROOM, None, None, 3)
    # The store returns the last limit+1 (before the cursor), ascending.
    assert list(query.respond([log_entry(m) for m in HISTORY[2:5]], T0 + 50)) == [
        Send((BOB,), Messages(ref="g", messages=HISTORY[3:5], has_more=True)),
    ]

    older = query_of(pair.request(BOB, GetMessages(before=4, limit=3, ref="o"), T0 + 11))
    assert (older.after, older.before, older.limit) == (None, 4, 4)
    assert list(older.respond([log_entry(m) for m in HISTORY[0:3]], T0 + 50)) == [
        Send((BOB,), Messages(ref="o", messages=HISTORY[0:3], has_more=False)),
    ]
    assert list(older.respond([], T0 + 50)) == [Send((BOB,), Messages(ref="o", messages=[]))]


def test_get_messages_answers_internal_when_the_store_cannot_read(pair: Engine) -> None:
    query = query_of(pair.request(BOB, GetMessages(limit=2, ref="g"), T0 + 10))

    assert query.on_failure is not None
    assert list(query.on_failure(OSError("disk gone"), T0 + 50)) == [
        error(BOB, ErrorCode.INTERNAL, "g")]


# --- a room of another app ---------------------------------------------------------------------


class QuietMeta(msgspec.Struct, frozen=True, kw_only=True):
    pass


class QuietApp(App[QuietMeta, None]):
    """An app with no requests of its own: only the core protocol works in its rooms."""

    name = "quiet"
    room_meta_type = QuietMeta
    requests: ClassVar[tuple[type[Request], ...]] = ()

    def admit(self, ctx: Context, hello: Hello) -> None:
        return None


def test_an_app_request_the_rooms_app_does_not_support_is_a_bad_request() -> None:
    engine = make_engine(ChatApp(), QuietApp())
    admin_create(engine, "library", app="quiet")
    engine.hello(ALICE, "library", Hello(name="alice"), T0 + 1)

    assert engine.request(ALICE, SendMessage(text="psst", ref="m"), T0 + 2) == [
        error(ALICE, ErrorCode.BAD_REQUEST, "m", "send-message is not supported in this room")
    ]
    # Core requests still work there.
    assert engine.request(ALICE, Join(ref="j"), T0 + 3)[-1] == Send((ALICE,), Ok(ref="j"))
    # Auto-created rooms get the first app.
    engine.hello(BOB, "chatter", Hello(name="bob"), T0 + 4)
    assert engine.rooms["chatter"].app.name == "chat"


def test_a_stored_room_of_an_app_not_installed_is_not_overwritten(engine: Engine) -> None:
    engine.restore([StoredRoom(name="poll-1", app="poll", created_at=T0,
                               meta=b'{"question":"tea?"}', last_seq=3)], T0)

    effects = engine.hello(ALICE, "poll-1", Hello(name="alice", ref="h"), T0 + 1)

    assert not any(isinstance(e, Persist) for e in effects)
    assert effects[0] == error(ALICE, ErrorCode.NOT_FOUND, "h")


def test_restore_loads_rooms_with_their_committed_seq(engine: Engine) -> None:
    meta = ChatRoomMeta(topic="kept", pins=[2], creator="zoe")
    engine.restore([StoredRoom(name=ROOM, app="chat", created_at=T0 - 50,
                               meta=msgspec.json.encode(meta), last_seq=7)], T0)

    effects = engine.hello(ALICE, ROOM, Hello(name="alice"), T0)

    assert len(effects) == 1  # nothing to persist: the room exists
    assert isinstance(effects[0], Send) and isinstance(effects[0].frame, Welcome)
    assert effects[0].frame.room == chat_room(participants=1, created_at=T0 - 50, last_seq=7,
                                              meta=meta)
    persist = only_persist(engine.request(ALICE, SendMessage(text="eight"), T0 + 1))
    assert [w.seq for w in persist.writes] == [8]


# --- administration ----------------------------------------------------------------------------


def test_create_room_is_answered_after_commit(engine: Engine) -> None:
    effects = engine.admin(ADMIN, adm.CreateRoom(room="ops", meta={"topic": "on call"},
                                                 ref="c"), T0)

    assert effects[1:] == [RoomCreated("ops", implicit=False)]
    persist = only_persist(effects[:1])
    meta = ChatRoomMeta(topic="on call")
    assert persist.writes == (
        PutRoom(name="ops", app="chat", created_at=T0, meta=msgspec.json.encode(meta)),
    )
    assert commit(persist) == [
        Send((ADMIN,), adm.RoomDetails(ref="c", room=RoomInfo(name="ops", app="chat",
                                                              created_at=T0, meta=meta))),
    ]


def test_create_room_that_exists_is_a_conflict_unless_if_missing(pair: Engine) -> None:
    assert pair.admin(ADMIN, adm.CreateRoom(room=ROOM, ref="c"), T0 + 5) == [
        error(ADMIN, ErrorCode.CONFLICT, "c")
    ]
    details = Send((ADMIN,), adm.RoomDetails(ref="c", room=chat_room(participants=2),
                                             participants=[ALICE_VIEW, BOB_VIEW]))
    # The lobby was made by Alice's visit: if_missing adopts it, to be kept from now on.
    adopted = only_persist(pair.admin(ADMIN, adm.CreateRoom(room=ROOM, if_missing=True,
                                                            ref="c"), T0 + 5))
    assert adopted.writes == (PutRoom(name=ROOM, app="chat", created_at=T0,
                                      meta=msgspec.json.encode(ChatRoomMeta(creator="alice"))),)
    assert commit(adopted) == [details]
    # A room to keep already is answered at once, unchanged.
    assert pair.admin(ADMIN, adm.CreateRoom(room=ROOM, if_missing=True, ref="c"), T0 + 6) == [
        details
    ]


@pytest.mark.parametrize("request_", [
    adm.CreateRoom(room="x", app="nope", ref="c"),
    adm.CreateRoom(room="x", meta={"max_participants": 0}, ref="c"),
    adm.CreateRoom(room="x", meta={"topic": 5}, ref="c"),
])
def test_create_room_with_bad_options_is_a_bad_request(engine: Engine, request_: Request
                                                       ) -> None:
    assert engine.admin(ADMIN, request_, T0) == [error(ADMIN, ErrorCode.BAD_REQUEST, "c")]
    assert engine.rooms == {}


def test_a_create_room_that_failed_to_commit_leaves_no_room(engine: Engine) -> None:
    effects = engine.admin(ADMIN, adm.CreateRoom(room="ops", ref="c"), T0)

    assert fail(effects[0]) == [error(ADMIN, ErrorCode.INTERNAL, "c")]
    assert engine.admin(ADMIN, adm.GetRoom(room="ops", ref="g"), T0 + 1) == [
        error(ADMIN, ErrorCode.NOT_FOUND, "g")
    ]


def test_list_rooms_and_get_room(pair: Engine) -> None:
    pair.hello(CAROL, "annex", Hello(name="carol"), T0 + 2)

    assert pair.admin(ADMIN, adm.ListRooms(ref="l"), T0 + 3) == [
        Send((ADMIN,), adm.RoomList(ref="l", rooms=[
            chat_room("annex", participants=1, created_at=T0 + 2,
                      meta=ChatRoomMeta(creator="carol")),
            chat_room(participants=2),
        ])),
    ]
    assert pair.admin(ADMIN, adm.GetRoom(room=ROOM, ref="g"), T0 + 3) == [
        Send((ADMIN,), adm.RoomDetails(ref="g", room=chat_room(participants=2),
                                       participants=[ALICE_VIEW, BOB_VIEW])),
    ]
    assert pair.admin(ADMIN, adm.GetRoom(room="nowhere", ref="g"), T0 + 3) == [
        error(ADMIN, ErrorCode.NOT_FOUND, "g")
    ]


def test_list_rooms_pages_by_name(engine: Engine) -> None:
    for name in ("c", "a", "d", "b"):
        admin_create(engine, name)

    def page(**options: Any) -> tuple[list[str], str | None]:
        [reply] = engine.admin(ADMIN, adm.ListRooms(ref="l", **options), T0 + 1)
        assert isinstance(reply, Send) and isinstance(reply.frame, adm.RoomList)
        return [room.name for room in reply.frame.rooms], reply.frame.next

    assert page(limit=3) == (["a", "b", "c"], "c")
    assert page(after="c", limit=3) == (["d"], None)
    assert page(after="b") == (["c", "d"], None)
    assert page(limit=4) == (["a", "b", "c", "d"], None)


def test_update_room_is_stored_then_answered_and_the_topic_announced(pair: Engine) -> None:
    effects = pair.admin(ADMIN, adm.UpdateRoom(room=ROOM, meta={"topic": "deploys",
                                                                "max_participants": 5},
                                               private=True, ref="u"), T0 + 3)

    meta = ChatRoomMeta(creator="alice", topic="deploys", max_participants=5)
    assert only_persist(effects).writes == (
        PutRoom(name=ROOM, app="chat", created_at=T0, meta=msgspec.json.encode(meta),
                private=True),)
    room = msgspec.structs.replace(chat_room(participants=2, meta=meta), private=True)
    assert commit(effects[0]) == [
        Send((ALICE, BOB), TopicChanged(topic="deploys")),
        Send((ADMIN,), adm.RoomDetails(ref="u", room=room, participants=[ALICE_VIEW, BOB_VIEW])),
    ]
    # Who is in stays; the next hello without a token is refused.
    assert pair.hello(CAROL, ROOM, Hello(ref="h"), T0 + 4, ANONYMOUS)[0] == error(
        CAROL, ErrorCode.UNAUTHORIZED, "h")
    # Unchanged fields stay, a null limit lifts the limit, and no topic change is no event.
    again = pair.admin(ADMIN, adm.UpdateRoom(room=ROOM, meta={"max_participants": None},
                                             ref="v"), T0 + 5)
    [details] = commit(only_persist(again))
    assert isinstance(details, Send) and isinstance(details.frame, adm.RoomDetails)
    assert details.frame.room.meta == ChatRoomMeta(creator="alice", topic="deploys")
    assert details.frame.room.private is True


@pytest.mark.parametrize(("meta", "wanted"), [
    ({"pins": [1]}, "'pins' cannot be changed"),
    ({"topic": 5}, "Expected `str`"),
    ({"max_participants": 500}, "over this daemon's cap of 100"),
])
def test_an_invalid_update_is_a_bad_request_and_changes_nothing(
        meta: dict[str, Any], wanted: str) -> None:
    engine = make_engine(max_participants=100)
    admin_create(engine, ROOM, meta={"topic": "kept"})

    [refusal] = engine.admin(ADMIN, adm.UpdateRoom(room=ROOM, meta=meta, ref="u"), T0 + 1)

    assert refusal == error(ADMIN, ErrorCode.BAD_REQUEST, "u")
    assert isinstance(refusal, Send) and isinstance(refusal.frame, Error)
    assert wanted in refusal.frame.message
    assert engine.rooms[ROOM].meta == ChatRoomMeta(topic="kept")


def test_an_update_that_failed_to_commit_is_undone(pair: Engine) -> None:
    effects = pair.admin(ADMIN, adm.UpdateRoom(room=ROOM, meta={"topic": "lost"},
                                               private=True, ref="u"), T0 + 3)

    assert fail(only_persist(effects)) == [error(ADMIN, ErrorCode.INTERNAL, "u")]
    assert pair.rooms[ROOM].meta == ChatRoomMeta(creator="alice")
    assert pair.rooms[ROOM].private is False


def test_a_room_admin_token_updates_its_room_only(engine: Engine) -> None:
    admin_create(engine, ROOM)
    admin_create(engine, "other")
    engine.admin_hello(7, Hello(), T0, token_access(ROOM, "admin"))

    assert engine.admin(7, adm.UpdateRoom(room="other", meta={"topic": "x"}, ref="u"),
                        T0) == [error(7, ErrorCode.FORBIDDEN, "u")]
    assert isinstance(engine.admin(7, adm.UpdateRoom(room=ROOM, meta={"topic": "x"}),
                                   T0)[0], Persist)
    [listed] = engine.admin(7, adm.ListRooms(ref="l"), T0)
    assert isinstance(listed, Send) and isinstance(listed.frame, adm.RoomList)
    assert [room.name for room in listed.frame.rooms] == [ROOM]


def test_delete_room_closes_its_sessions_and_deletes_it(pair: Engine) -> None:
    pair.disconnect(BOB, T0 + 2)  # Bob is in grace: his timer is cancelled

    effects = pair.admin(ADMIN, adm.DeleteRoom(room=ROOM, ref="d"), T0 + 3)

    assert effects[:2] + effects[3:] == [
        Close(ALICE, CloseCode.ROOM_DELETED, ANY),
        CancelTimer(("grace", "s2")),
        RoomRemoved(ROOM, "deleted"),
    ]
    persist = effects[2]
    assert isinstance(persist, Persist)
    assert persist.writes == (DeleteRoomRecord(name=ROOM),)
    assert commit(persist) == [Send((ADMIN,), Ok(ref="d"))]
    assert ROOM not in pair.rooms
    assert pair.disconnect(ALICE, T0 + 4) == []
    # Old resume tokens died with the room; the name is free again.
    assert pair.hello(CAROL, ROOM, Hello(resume="token-2", ref="h"), T0 + 5) == [
        error(CAROL, ErrorCode.NOT_FOUND, "h"),
        Close(CAROL, CloseCode.ROOM_NOT_FOUND, ANY),
    ]
    assert pair.admin(ADMIN, adm.DeleteRoom(room="nowhere", ref="d"), T0 + 6) == [
        error(ADMIN, ErrorCode.NOT_FOUND, "d")
    ]


def test_kick_closes_the_connection_and_announces_a_kicked_leave(pair: Engine) -> None:
    pair.request(ALICE, Join(), T0 + 2)
    pair.request(BOB, Join(), T0 + 3)

    effects = pair.admin(ADMIN, adm.Kick(room=ROOM, participant_id="s2", ref="k"), T0 + 4)

    assert effects == [
        ParticipantKicked(ROOM, "s2"),
        Send((ALICE,), RemovePeer(peer_id="s2")),
        Send((BOB,), RemovePeer(peer_id="s1")),  # harmless: Bob's connection is closing
        Send((ALICE,), ParticipantLeft(participant_id="s2", reason="kicked")),
        Close(BOB, CloseCode.KICKED, ANY),
        Send((ADMIN,), Ok(ref="k")),
    ]
    assert pair.disconnect(BOB, T0 + 5) == []
    assert pair.participants(pair.rooms[ROOM]) == [person("s1", "alice", T0, in_call=True)]


def test_kick_of_a_participant_in_grace_cancels_its_timer(pair: Engine) -> None:
    pair.disconnect(BOB, T0 + 2)

    assert pair.admin(ADMIN, adm.Kick(room=ROOM, participant_id="s2", ref="k"), T0 + 3) == [
        ParticipantKicked(ROOM, "s2"),
        CancelTimer(("grace", "s2")),
        Send((ALICE,), ParticipantLeft(participant_id="s2", reason="kicked")),
        Send((ADMIN,), Ok(ref="k")),
    ]


def test_kick_of_an_unknown_or_hidden_session_is_not_found(pair: Engine) -> None:
    pair.hello(OBSERVER, ROOM, Hello(hidden=True), T0 + 2)

    for target in ("s3", "s99"):
        assert pair.admin(ADMIN, adm.Kick(room=ROOM, participant_id=target, ref="k"),
                          T0 + 3) == [error(ADMIN, ErrorCode.NOT_FOUND, "k")]
    assert pair.admin(ADMIN, adm.Kick(room="nowhere", participant_id="s1", ref="k"),
                      T0 + 3) == [error(ADMIN, ErrorCode.NOT_FOUND, "k")]


def test_a_room_request_on_the_admin_endpoint_is_a_bad_request(engine: Engine) -> None:
    assert engine.admin(ADMIN, Join(ref="j"), T0) == [error(ADMIN, ErrorCode.BAD_REQUEST, "j")]


def test_leave_removes_the_participant_at_once_and_closes_normally(pair: Engine) -> None:
    effects = pair.request(BOB, Leave(ref="l"), T0 + 5)

    assert effects == [
        Send((BOB,), Ok(ref="l")),
        Send((ALICE,), ParticipantLeft(participant_id="s2", reason="left")),
        Close(BOB, CloseCode.NORMAL, ANY),
    ]
    assert "s2" not in pair.rooms[ROOM].sessions
    assert pair.disconnect(BOB, T0 + 6) == []  # no grace timer, no second announcement
    resumed = pair.hello(CAROL, ROOM, Hello(resume="token-2", ref="h"), T0 + 7)
    assert resumed == [error(CAROL, ErrorCode.NOT_FOUND, "h")]


def test_a_hello_for_another_protocol_version_is_refused(engine: Engine) -> None:
    effects = engine.hello(ALICE, ROOM, Hello(name="alice", protocol=2, ref="h"), T0)

    assert effects == [error(ALICE, ErrorCode.BAD_REQUEST, "h")]
    assert ROOM not in engine.rooms


# --- access: private rooms, join tokens and grants (daemon.auth.Access) -------------------------



def token_access(room: str = ROOM, *grants: str, name: str | None = None) -> Access:
    return Access(grants=frozenset(grants or ("join", "post", "media")), room=room,
                  identity="id-" + (name or "x"), name=name)


def test_hello_without_token_to_a_private_room_is_unauthorized_and_closed() -> None:
    engine = make_engine()
    admin_create(engine, ROOM, private=True)

    effects = engine.hello(ALICE, ROOM, Hello(name="alice", ref="h"), T0 + 1, ANONYMOUS)

    assert effects == [error(ALICE, ErrorCode.UNAUTHORIZED, "h"),
                       Close(ALICE, CloseCode.UNAUTHORIZED, ANY),
                       AccessRefused(ROOM, ALICE, ErrorCode.UNAUTHORIZED,
                                     f"room {ROOM!r} needs a join token")]
    assert not engine.welcomed(ALICE)


def test_a_token_for_another_room_is_forbidden_and_closed(engine: Engine) -> None:
    effects = engine.hello(ALICE, ROOM, Hello(ref="h"), T0, token_access("elsewhere"))

    assert effects == [error(ALICE, ErrorCode.FORBIDDEN, "h"),
                       Close(ALICE, CloseCode.FORBIDDEN, ANY),
                       AccessRefused(ROOM, ALICE, ErrorCode.FORBIDDEN, ANY)]
    assert engine.rooms == {}  # refused before the room was created


def welcome_of(effects: list[Effect]) -> Welcome:
    """The welcome among ``effects`` (the last of them), asserting there is one."""
    last = effects[-1]
    assert isinstance(last, Send) and isinstance(last.frame, Welcome), effects
    return last.frame


def test_a_hidden_observer_needs_read_or_join_and_hidden(engine: Engine) -> None:
    refused = engine.hello(OBSERVER, ROOM, Hello(ref="h", hidden=True), T0,
                           token_access(ROOM, "join", "post", "media"))
    assert refused == [error(OBSERVER, ErrorCode.FORBIDDEN, "h", grant=Grant.READ),
                       Close(OBSERVER, CloseCode.FORBIDDEN, ANY),
                       AccessRefused(ROOM, OBSERVER, ErrorCode.FORBIDDEN,
                                     "the token does not grant read")]
    assert engine.rooms == {}
    # read alone is enough, and so is join with hidden (the rule before read existed).
    for grants, conn in ((("read",), 5), (("join", "hidden"), 6)):
        watcher = welcome_of(engine.hello(conn, ROOM, Hello(hidden=True), T0,
                                          token_access(ROOM, *grants)))
        assert watcher.participants == [] and watcher.room == chat_room(participants=0,
                                                                        meta=ChatRoomMeta())


def test_a_reader_sees_the_room_but_may_not_post_or_enter_the_call(pair: Engine) -> None:
    pair.hello(OBSERVER, ROOM, Hello(hidden=True), T0 + 2, token_access(ROOM, "read"))

    [query] = pair.request(OBSERVER, GetMessages(ref="g"), T0 + 3)
    assert isinstance(query, Query)
    assert pair.request(OBSERVER, GetParticipants(ref="p"), T0 + 3) == [
        Send((OBSERVER,), Participants(ref="p", participants=[ALICE_VIEW, BOB_VIEW]))]
    assert pair.request(OBSERVER, SendMessage(text="hi", ref="m"), T0 + 3) == [
        error(OBSERVER, ErrorCode.FORBIDDEN, "m", grant=Grant.POST)]
    # What the room says reaches it.
    assert post(pair, ALICE, "hello", T0 + 4) == [
        Send((ALICE, BOB, OBSERVER),
             MessagePosted(message=message(1, T0 + 4, "s1", "alice", "hello")))]


def test_join_includes_read(engine: Engine) -> None:
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0, token_access(ROOM, "join"))

    [query] = engine.request(ALICE, GetMessages(ref="g"), T0 + 1)
    assert isinstance(query, Query)
    assert engine.rooms[ROOM].sessions["s1"].grants == {Grant.JOIN, Grant.READ}


def test_a_sender_posts_with_post_alone_and_hears_only_its_answers(pair: Engine) -> None:
    effects = pair.hello(5, ROOM, Hello(name="ci", hidden=True, subscribe=False, ref="h"),
                         T0 + 2, token_access(ROOM, "post", name="CI"))

    # A welcome that tells it nothing of the room: no read grant.
    assert effects == [Send((5,), Welcome(ref="h", session_id="s3", resume_token="token-3",
                                          room=None, participants=[], grace=GRACE,
                                          server="roomctl-test"))]
    sent = pair.request(5, SendMessage(text="deploy done", key="job-7", ref="m"), T0 + 3)
    posted = message(1, T0 + 3, "s3", "CI", "deploy done")
    assert commit(only_persist(sent)) == [
        Send((5,), Ok(ref="m", seq=1, at=T0 + 3)),
        Send((ALICE, BOB), MessagePosted(message=posted)),  # not to the sender
    ]
    for request in (GetMessages(ref="r"), GetParticipants(ref="r")):
        assert pair.request(5, request, T0 + 4) == [
            error(5, ErrorCode.FORBIDDEN, "r", grant=Grant.READ)]
    assert pair.participants(pair.rooms[ROOM]) == [ALICE_VIEW, BOB_VIEW]
    assert pair.disconnect(5, T0 + 5) == []  # it ends with its connection, unannounced
    assert "s3" not in pair.rooms[ROOM].sessions


def test_a_sender_needs_a_token_for_the_room_where_one_is_needed() -> None:
    engine = make_engine()
    admin_create(engine, ROOM, private=True)
    sender = Hello(hidden=True, subscribe=False, ref="h")

    assert engine.hello(5, ROOM, sender, T0, ANONYMOUS)[0] == error(
        5, ErrorCode.UNAUTHORIZED, "h")
    assert engine.hello(6, ROOM, sender, T0, token_access("elsewhere", "post"))[0] == error(
        6, ErrorCode.FORBIDDEN, "h")
    # Any token for the room lets it in; each request then needs its own grant.
    welcome_of(engine.hello(7, ROOM, sender, T0, token_access(ROOM, "media")))
    assert engine.request(7, SendMessage(text="x", ref="m"), T0) == [
        error(7, ErrorCode.FORBIDDEN, "m", grant=Grant.POST)]


def test_only_a_hidden_session_may_leave_out_the_room_s_events(engine: Engine) -> None:
    assert engine.hello(ALICE, ROOM, Hello(name="alice", subscribe=False, ref="h"), T0) == [
        error(ALICE, ErrorCode.BAD_REQUEST, "h",
              "subscribe: false is for hidden sessions only (add hidden: true)")]
    assert engine.rooms == {} and not engine.welcomed(ALICE)


def test_the_token_name_wins_and_its_identity_is_shown(engine: Engine) -> None:
    effects = engine.hello(ALICE, ROOM, Hello(name="mallory"), T0,
                           token_access(ROOM, "join", name="Alice"))

    welcome = effects[-1]
    assert isinstance(welcome, Send) and isinstance(welcome.frame, Welcome)
    [me] = welcome.frame.participants
    assert me.identity == "id-Alice"
    assert me.meta == ChatParticipantMeta(name="Alice")


def test_requests_need_their_grant_and_a_refusal_changes_nothing(engine: Engine) -> None:
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0, token_access(ROOM, "join"))

    for request in (SendMessage(text="hi", ref="m"), SetTopic(topic="t", ref="m"),
                    Join(ref="m"), SetMediaState(audio_muted=False, video_muted=False, ref="m")):
        assert engine.request(ALICE, request, T0 + 1) == [error(ALICE, ErrorCode.FORBIDDEN, "m")]
    # Requests that need no grant still work.
    effects = engine.request(ALICE, GetParticipants(ref="p"), T0 + 1)
    assert [type(e) for e in effects] == [Send]
    assert isinstance(effects[0], Send) and isinstance(effects[0].frame, Participants)


def test_a_resume_keeps_the_grants_without_a_token(engine: Engine) -> None:
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0, token_access(ROOM, "join"))
    engine.disconnect(ALICE, T0 + 1)

    engine.hello(5, ROOM, Hello(resume="token-1"), T0 + 2, ANONYMOUS)

    assert engine.request(5, SendMessage(text="hi", ref="m"), T0 + 3) == [
        error(5, ErrorCode.FORBIDDEN, "m")]


def test_require_tokens_makes_auto_created_and_admin_created_rooms_private() -> None:
    engine = make_engine(require_tokens=True)
    assert engine.hello(ALICE, ROOM, Hello(ref="h"), T0, ANONYMOUS)[0] == error(
        ALICE, ErrorCode.UNAUTHORIZED, "h")
    effects = engine.hello(ALICE, ROOM, Hello(ref="h"), T0, token_access())
    assert isinstance(effects[0], Persist)
    assert engine.rooms[ROOM].private is True  # stays private if the flag is dropped later
    assert engine.room_info(engine.rooms[ROOM]).private is True


def test_max_rooms_counts_the_rooms_other_nodes_hold() -> None:
    engine = make_engine(max_rooms=2)
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)
    # The cluster's listing names this node's room too: it is counted once.
    engine.rooms_elsewhere = frozenset({ROOM})
    engine.admin(ADMIN, adm.CreateRoom(room="second", ref="c"), T0)
    assert set(engine.rooms) == {ROOM, "second"}
    # Two rooms here and one on another node: a limit of 3 is reached.
    engine.max_rooms = 3
    engine.rooms_elsewhere = frozenset({ROOM, "second", "on-b"})
    assert engine.admin(ADMIN, adm.CreateRoom(room="third", ref="c"), T0) == [
        error(ADMIN, ErrorCode.LIMIT_REACHED, "c")]


def test_room_limits() -> None:
    engine = make_engine(max_rooms=1, max_participants=1)
    engine.hello(ALICE, ROOM, Hello(name="alice"), T0)

    assert engine.hello(BOB, ROOM, Hello(name="bob", ref="h"), T0) == [
        error(BOB, ErrorCode.ROOM_FULL, "h")]
    assert engine.hello(CAROL, "second", Hello(ref="h"), T0) == [
        error(CAROL, ErrorCode.LIMIT_REACHED, "h"), Close(CAROL, CloseCode.ROOM_NOT_FOUND, ANY)]
    assert engine.admin(ADMIN, adm.CreateRoom(room="third", ref="c"), T0) == [
        error(ADMIN, ErrorCode.LIMIT_REACHED, "c")]
    # A hidden observer does not count.
    watched = engine.hello(OBSERVER, ROOM, Hello(hidden=True), T0)
    assert isinstance(watched[-1], Send) and isinstance(watched[-1].frame, Welcome)
