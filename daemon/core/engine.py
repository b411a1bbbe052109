"""The room engine: rooms, sessions, participants and the WebRTC relay, with no I/O.

Theory of operation
-------------------
Inputs are calls: a connection said ``hello`` (``hello`` for a room, ``admin_hello`` on the
admin endpoint), a decoded request arrived (``request``, ``admin``), a connection dropped
(``disconnect``), a timer fired (``timer_fired``). Each takes ``now`` and returns a list of effects
(``daemon.core.effects``) that the server applies in order: send frames, close connections,
persist records, query the log, start or cancel timers. Nothing here awaits, so each
call is atomic under trio's scheduler without locks, and every rule is testable
without sockets or clocks.

Rooms are made by ``create-room`` (admin) and kept until deleted, or *implicitly* by
the first hello to an unknown name (``auto_create``). An implicit room that was never
used (no message, topic or pin) is removed once it has had no session at all, hidden
observers and participants inside their grace period included, for ``empty_timeout``
seconds (LiveKit's ``empty_timeout``): a visitor trying names cannot fill the daemon
with rooms for good. At the ``max_rooms`` limit, the room that has waited longest for
that removal goes first to make space.

A session belongs to one room and has one lifecycle (``daemon.core.state``): *live*
while its connection is up; *away* when the connection drops, for ``grace`` seconds, in
which a ``hello`` carrying its resume token reattaches the same session (no leave/join
churn, and its mesh edges, its WebRTC peer connections, are kept); *ended* for good.
Every way out (leave, grace expiry, kick, room deletion) goes through ``_end``. Hidden
sessions (observers) never appear as participants, never enter the mesh, and end on
disconnect.

Every request type has one route (``daemon.core.routes``): the grant it needs and its
handler, an ``@handles`` method of the engine (core requests) or of the room's app
(through a ``Context``), so the table of who may do what is the code itself.

Access: the server checks a hello's token (``daemon.tokens``) and passes the ``Access`` it
proves; the engine decides with it, on both endpoints. An open room admits anyone (with
``OPEN_ROOM_GRANTS``); a private room, or every room under ``require_tokens``, needs the
admin token or a join token for that room with the ``join`` grant. A session keeps its
grants: each request needs one (``media`` for the call, the app's choice for its own
requests, ``post`` for the chat app's writes), or it is answered ``forbidden``. The admin
endpoint admits the admin token, and a join token with the ``admin`` grant for its one
room; ``create-token`` signs with the signer the server injects (``sign_token``), so no
key reaches the engine.

The engine has no logger: what the daemon's log should say comes back as facts among
the effects (``RoomCreated``, ``RoomRemoved``, ``ParticipantKicked``, ``AccessRefused``,
``TokenIssued``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import msgspec

from daemon.core.access import ALL_GRANTS, ANONYMOUS, Access
from daemon.core.app import App, Context
from daemon.core.effects import (
    AccessRefused,
    CancelTimer,
    Close,
    ConnId,
    Effect,
    ParticipantKicked,
    Persist,
    RoomCreated,
    RoomRemoved,
    Send,
    StartTimer,
    TimerKey,
    TokenIssued,
)
from daemon.core.records import DeleteRoom as DeleteRoomRecord
from daemon.core.records import DropSession, PutRoom, StoredRoom, StoredSession, Write
from daemon.core.routes import Route, handles, routes_of
from daemon.core.state import NO_EDGES, Room, Session, SessionState
from protocol import PROTOCOL_VERSION, CloseCode, ErrorCode, Event, Grant, ProtocolError, Request
from protocol import admin as adm
from protocol.limits import IDEMPOTENCY_WINDOW
from protocol.messages import (
    AddPeer,
    ConnectionLimits,
    Error,
    GetParticipants,
    Hello,
    IceCandidateRelayed,
    Join,
    Leave,
    LeaveReason,
    MediaState,
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

__all__ = ["DEFAULT_EMPTY_TIMEOUT", "DEFAULT_GRACE", "Engine", "Room", "Session",
           "SessionState", "TokenSigner"]

DEFAULT_GRACE = 60.0
# Seconds an implicitly created room that never held anything stays once empty
# (LiveKit's empty_timeout default, too).
DEFAULT_EMPTY_TIMEOUT = 300.0


class TokenSigner(Protocol):
    """Signs a join token: returns it and its expiry (Unix seconds). ``daemon.tokens``."""

    def __call__(self, *, room: str, identity: str, name: str | None, grants: list[Grant],
                 ttl: float, now: float) -> tuple[str, float]: ...


def grace_timer(session_id: str) -> TimerKey:
    return ("grace", session_id)


def empty_timer(room_name: str) -> TimerKey:
    return ("empty", room_name)


def _tag(request: Request) -> str:
    return str(type(request).__struct_config__.tag)


def _refusal(conn: ConnId, ref: str | None, exc: ProtocolError) -> Send:
    return Send((conn,), Error(ref=ref, code=exc.code, message=exc.message,
                               grant=getattr(exc, "grant", None)))


class MissingGrant(ProtocolError):
    """``forbidden``: the session's (or connection's) token lacks ``grant``."""

    def __init__(self, grant: Grant, message: str) -> None:
        super().__init__(ErrorCode.FORBIDDEN, message)
        self.grant = grant



def page_of_names(names: Iterable[str], after: str | None, limit: int | None
                  ) -> tuple[list[str], str | None]:
    """Return a page of ``list-rooms``: the first ``limit`` names (all without it) that
    sort after ``after``, and the ``after`` of the next page (None on the last)."""
    chosen = sorted(name for name in names if after is None or name > after)
    if limit is not None and len(chosen) > limit:
        return chosen[:limit], chosen[limit - 1]
    return chosen, None

class Engine:
    """All room state of one daemon. See the module docstring for how it is driven."""

    def __init__(
        self,
        apps: Sequence[App[Any, Any]],
        *,
        grace: float = DEFAULT_GRACE,
        auto_create: bool = True,
        default_app: str | None = None,
        server: str = "roomctl",
        new_id: Callable[[], str] | None = None,
        new_token: Callable[[], str] | None = None,
        require_tokens: bool = False,
        max_rooms: int | None = None,
        max_participants: int | None = None,
        empty_timeout: float = DEFAULT_EMPTY_TIMEOUT,
        limits: ConnectionLimits | None = None,
        sign_token: TokenSigner | None = None,
        key_window: float = IDEMPOTENCY_WINDOW,
    ) -> None:
        if not apps:
            raise ValueError("the engine needs at least one app")
        self.apps: dict[str, App[Any, Any]] = {}
        for app in apps:
            if app.name in self.apps:
                raise ValueError(f"two apps are named {app.name!r}")
            self.apps[app.name] = app
        self.default_app = self.apps[default_app or apps[0].name]
        self.grace = grace
        self.auto_create = auto_create
        self.require_tokens = require_tokens  # every room is private
        self.max_rooms = max_rooms
        # With several nodes (daemon.cluster keeps it current): the cluster's stored rooms,
        # so that max_rooms holds for the cluster, not for each node's loaded rooms.
        self.rooms_elsewhere: frozenset[str] = frozenset()
        self.max_participants = max_participants  # per room, hidden observers not counted
        self.empty_timeout = empty_timeout  # math.inf: implicit rooms are kept too
        self.limits = limits  # what a welcome tells a connection it may do
        self.key_window = key_window  # seconds an idempotency key is remembered
        self.server = server
        self._sign_token = sign_token
        self._new_id = new_id or (lambda: secrets.token_hex(6))
        self._new_token = new_token or (lambda: secrets.token_urlsafe(24))
        self.rooms: dict[str, Room] = {}
        self._conns: dict[ConnId, Session] = {}  # the room endpoint's welcomed connections
        self._admins: dict[ConnId, Access] = {}  # the admin endpoint's welcomed connections
        self._by_token: dict[str, Session] = {}
        self._sessions: dict[str, Session] = {}  # every session of every room, by id
        # Stored rooms whose app is not installed: kept off limits so they are not overwritten.
        self.foreign_rooms: set[str] = set()
        # Expirable rooms left empty, with their removal deadlines, longest-waiting first.
        self._idle: dict[str, float] = {}
        # Several nodes: sessions whose stored record is out of date (None: ended), for
        # session_writes(). Off for one node, which keeps no session across a restart.
        self.track_sessions = False
        self._changed: dict[tuple[str, str], Session | None] = {}

    # --- start-up ------------------------------------------------------------------------

    def restore(self, stored: Iterable[StoredRoom], now: float) -> list[Effect]:
        """Load rooms from the store at start-up. Rooms of unknown apps are skipped.

        Returns the effects to apply with them: the removal timers of implicit rooms that
        are still unused (nobody is in a room at start-up), counted from ``now``.
        """
        effects: list[Effect] = []
        for rec in stored:
            app = self.apps.get(rec.app)
            if app is None:
                self.foreign_rooms.add(rec.name)
                continue
            room = self.rooms[rec.name] = Room(
                name=rec.name,
                app=app,
                created_at=rec.created_at,
                meta=app.decode_room_meta(rec.meta),
                private=rec.private,
                last_seq=rec.last_seq,
                next_seq=rec.last_seq,
                implicit=rec.implicit,
                keys={use.key: (use.seq, use.at) for use in rec.keys},
            )
            effects += self._vacated(room, now)
        return effects

    def adopt(self, record: StoredRoom, sessions: Iterable[StoredSession],
              now: float) -> list[Effect]:
        """Take over a room another node owned (several nodes): load it and its sessions.

        Every session comes back away, with a full grace period from ``now`` to resume
        on any node; its mesh edges are kept, so a resumed peer keeps its calls. Returns
        the grace timers (or the room's removal timer when it has no session).
        """
        app = self.apps.get(record.app)
        if app is None:
            self.foreign_rooms.add(record.name)
            return []
        room = self.rooms[record.name] = Room(
            name=record.name, app=app, created_at=record.created_at,
            meta=app.decode_room_meta(record.meta), private=record.private,
            last_seq=record.last_seq, next_seq=record.last_seq, implicit=record.implicit,
            keys={use.key: (use.seq, use.at) for use in record.keys})
        effects: list[Effect] = []
        for stored in sessions:
            session = Session(
                id=stored.id, room=room, resume_token=stored.resume_token,
                hidden=stored.hidden, joined_at=stored.joined_at,
                meta=app.decode_session_meta(stored.meta), state=SessionState.AWAY,
                in_call=stored.in_call,
                media=MediaState(audio_muted=stored.audio_muted,
                                 video_muted=stored.video_muted),
                grants=frozenset(Grant(g) for g in stored.grants), identity=stored.identity,
                peers=set(stored.peers) or None)
            if session.hidden:
                continue  # an observer ends with its connection: nothing to resume
            room.sessions[session.id] = session
            self._by_token[session.resume_token] = session
            self._sessions[session.id] = session
            effects.append(StartTimer(grace_timer(session.id), now + self.grace))
        effects += self._vacated(room, now)
        return effects

    def unload(self, name: str, close: tuple[CloseCode, str]) -> list[Effect]:
        """Let go of room ``name`` without ending it (several nodes: it moved elsewhere).

        Its connections are closed with ``close`` (a code that tells clients to resume),
        its timers cancelled and its state forgotten; nothing is announced or stored,
        since the room and its sessions live on with their new owner.
        """
        room = self.rooms.pop(name, None)
        if room is None:
            return []
        effects = self._cancel_expiry(room)
        for session in room.sessions.values():
            if session.conn is not None:
                self._conns.pop(session.conn, None)
                effects.append(Close(session.conn, *close))
            else:
                effects.append(CancelTimer(grace_timer(session.id)))
            self._by_token.pop(session.resume_token, None)
            self._sessions.pop(session.id, None)
            self._changed.pop((name, session.id), None)
        return effects

    def changed(self, session: Session) -> None:
        """Note that ``session``'s stored record is out of date (several nodes only)."""
        if self.track_sessions:
            self._changed[(session.room.name, session.id)] = \
                None if session.state is SessionState.ENDED else session

    def session_writes(self) -> list[Write]:
        """Return (and forget) the session records to store since the last call."""
        writes: list[Write] = []
        for (room, session_id), session in self._changed.items():
            if session is None or session.hidden:
                if session is None:
                    writes.append(DropSession(room=room, id=session_id))
                continue
            writes.append(StoredSession(
                room=room, id=session.id, resume_token=session.resume_token,
                hidden=session.hidden, joined_at=session.joined_at,
                meta=session.room.app.encode_session_meta(session.meta),
                grants=sorted(session.grants), identity=session.identity,
                in_call=session.in_call, audio_muted=session.media.audio_muted,
                video_muted=session.media.video_muted, peers=sorted(session.edges())))
        self._changed.clear()
        return writes

    # --- queries (for the server: health, metrics, the lobby) ------------------------------

    def welcomed(self, conn: ConnId) -> bool:
        """Whether ``conn`` has said a hello that was answered with a welcome."""
        return conn in self._conns or conn in self._admins

    def session_of(self, conn: ConnId) -> tuple[str, str] | None:
        """Return (room, session id) of a room connection's session, None before a welcome."""
        session = self._conns.get(conn)
        return None if session is None else (session.room.name, session.id)

    def room_infos(self) -> list[RoomInfo]:
        """Return every room's public view, by name."""
        return [self.room_info(room) for _, room in sorted(self.rooms.items())]

    def room_count(self) -> int:
        """Return how many rooms the engine holds."""
        return len(self.rooms)

    def participant_count(self) -> int:
        """Return how many participants (sessions that are not hidden) the rooms hold."""
        return sum(room.visible_count() for room in self.rooms.values())

    def session_count(self, room: str | None = None) -> int:
        """Return how many sessions (live or away, hidden included) the rooms hold, or
        ``room`` holds."""
        if room is None:
            return len(self._sessions)
        found = self.rooms.get(room)
        return 0 if found is None else len(found.sessions)

    def request_types(self) -> tuple[type[Request], ...]:
        """Return every request type of the room endpoint: hello, the core's, each app's."""
        return (Hello, *self.routes, *(t for app in self.apps.values() for t in app.requests))

    # --- views ---------------------------------------------------------------------------

    def view(self, session: Session) -> Participant:
        """Return the participant view of ``session``."""
        return Participant(
            id=session.id,
            live=session.live,
            joined_at=session.joined_at,
            in_call=session.in_call,
            media=session.media,
            meta=session.room.app.participant_view(session.meta),
            identity=session.identity,
        )

    def stored_room_info(self, record: StoredRoom, participants: int) -> RoomInfo | None:
        """Return the view of a room another node holds (None for an app not installed)."""
        room = self.rooms.get(record.name)
        if room is not None:
            return self.room_info(room)
        app = self.apps.get(record.app)
        if app is None:
            return None
        return RoomInfo(name=record.name, app=app.name, created_at=record.created_at,
                        participants=participants, last_seq=record.last_seq,
                        meta=app.room_view(app.decode_room_meta(record.meta)),
                        private=record.private or self.require_tokens)

    def room_info(self, room: Room) -> RoomInfo:
        return RoomInfo(
            name=room.name,
            app=room.app.name,
            created_at=room.created_at,
            participants=room.visible_count(),
            last_seq=room.last_seq,
            meta=room.app.room_view(room.meta),
            private=room.private or self.require_tokens,
        )

    def participants(self, room: Room) -> list[Participant]:
        return [self.view(s) for s in room.visible()]

    def room_record(self, room: Room) -> PutRoom:
        """Return the store write that saves ``room`` (not its log)."""
        return PutRoom(
            name=room.name,
            app=room.app.name,
            created_at=room.created_at,
            meta=room.app.encode_room_meta(room.meta),
            private=room.private,
            implicit=room.implicit,
        )

    # --- the room endpoint -----------------------------------------------------------------

    def hello(self, conn: ConnId, room_name: str, hello: Hello, now: float,
              access: Access = ANONYMOUS) -> list[Effect]:
        """A connection to ``room_name`` said hello: welcome it, or answer with an error.

        ``access`` is what the hello's token proved (``daemon.tokens.Authority.check``).
        After an error the connection has no session and may try ``hello`` again, except
        for an unknown room or a refused token, which also close it.
        """
        if conn in self._conns:
            return [Send((conn,), Error(ref=hello.ref, code=ErrorCode.CONFLICT,
                                        message="this connection already said hello"))]
        if hello.protocol != PROTOCOL_VERSION:
            return [Send((conn,), Error(
                ref=hello.ref, code=ErrorCode.BAD_REQUEST,
                message=f"protocol {hello.protocol} is not supported; this daemon speaks "
                        f"protocol {PROTOCOL_VERSION}"))]
        if not hello.subscribe and not hello.hidden:
            return [Send((conn,), Error(
                ref=hello.ref, code=ErrorCode.BAD_REQUEST,
                message="subscribe: false is for hidden sessions only (add hidden: true)"))]
        effects: list[Effect] = []
        room = self.rooms.get(room_name)
        grants: frozenset[Grant] = ALL_GRANTS
        if hello.resume is None:
            try:
                grants = self.check_access(room_name, access, hidden=hello.hidden,
                                           subscribe=hello.subscribe)
            except ProtocolError as exc:
                close = CloseCode.UNAUTHORIZED if exc.code == ErrorCode.UNAUTHORIZED \
                    else CloseCode.FORBIDDEN
                return [_refusal(conn, hello.ref, exc), Close(conn, close, exc.message[:120]),
                        AccessRefused(room_name, conn, exc.code, exc.message)]
        if room is None:
            if (not self.auto_create or not hello.create or hello.resume is not None
                    or room_name in self.foreign_rooms):
                return [
                    Send((conn,), Error(ref=hello.ref, code=ErrorCode.NOT_FOUND,
                                        message=f"no room named {room_name!r}")),
                    Close(conn, CloseCode.ROOM_NOT_FOUND, "no such room"),
                ]
            app = self.default_app
            try:
                meta = app.create_room(None, creator=None if hello.hidden else hello.name)
            except ProtocolError as exc:
                return [_refusal(conn, hello.ref, exc),
                        Close(conn, CloseCode.ROOM_NOT_FOUND, "no such room")]
            space = self._make_space()
            if space is None:
                return [Send((conn,), Error(
                            ref=hello.ref, code=ErrorCode.LIMIT_REACHED,
                            message=f"this daemon holds its maximum of {self.max_rooms} rooms")),
                        Close(conn, CloseCode.ROOM_NOT_FOUND, "no such room")]
            effects += space
            room = Room(name=room_name, app=app, created_at=now, meta=meta,
                        private=self.require_tokens, implicit=True)
            self.rooms[room_name] = room
            effects.append(Persist((self.room_record(room),)))
            effects.append(RoomCreated(room_name, implicit=True))
        try:
            if hello.resume is not None:
                effects += self._resume(conn, room, hello, now)
            else:
                if access.name is not None:  # a token's display name wins over the hello's
                    hello = msgspec.structs.replace(hello, name=access.name)
                effects += self._admit(conn, room, hello, now, grants, access.identity)
        except ProtocolError as exc:
            effects.append(_refusal(conn, hello.ref, exc))
            # A room this hello has just made and then refused it (a name too long...)
            # must not stay forever.
            effects += self._vacated(room, now)
        return effects

    def is_private(self, room_name: str) -> bool:
        """Whether joining ``room_name`` needs a token (as a room made by joining would)."""
        room = self.rooms.get(room_name)
        return self.require_tokens or (room is not None and room.private)

    def check_access(self, room_name: str, access: Access, *, hidden: bool = False,
                     subscribe: bool = True) -> frozenset[Grant]:
        """Return the grants a new session in ``room_name`` gets with ``access``.

        Entering as a listed participant needs ``join``; as a hidden observer, ``read``
        (or ``join`` and ``hidden``, the rule before ``read`` existed); as a sender
        (hidden, not subscribed), nothing beyond a token for the room, since each of its
        requests needs its own grant. ``join`` includes ``read``: a participant sees the
        room. Raises ProtocolError ``unauthorized`` (no token where one is needed) or
        ``forbidden`` (a token for another room, or without the grant entering needs).
        Room limits and whether the room exists are not looked at.
        """
        private = self.is_private(room_name)
        if access.anonymous:
            if private:
                raise ProtocolError(ErrorCode.UNAUTHORIZED,
                                    f"room {room_name!r} needs a join token")
            grants = access.grants
        elif access.is_admin:
            grants = ALL_GRANTS
        elif access.room != room_name:
            raise ProtocolError(ErrorCode.FORBIDDEN,
                                f"the token is for room {access.room!r}, not {room_name!r}")
        else:
            grants = access.grants
        if not hidden:
            if Grant.JOIN not in grants:
                raise MissingGrant(Grant.JOIN, "the token does not grant join")
        elif subscribe and Grant.READ not in grants \
                and not (Grant.JOIN in grants and Grant.HIDDEN in grants):
            raise MissingGrant(Grant.READ, "the token does not grant read")
        if Grant.JOIN in grants and Grant.READ not in grants:
            grants = grants | {Grant.READ}
        return grants

    def request(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """A request arrived on a room connection (one that has a session, or should)."""
        session = self._conns.get(conn)
        if session is None:
            return [Send((conn,), Error(ref=request.ref, code=ErrorCode.BAD_REQUEST,
                                        message="say hello first"))]
        ctx = Context(self, session.room, session, request.ref, now, conn=conn)
        try:
            route, owner = self._route(type(request), session.room.app)
            if route.grant is not None and route.grant not in session.grants:
                raise MissingGrant(route.grant,
                                   f"{_tag(request)} needs the {route.grant} grant, which "
                                   "this session's token lacks")
            route.handler(owner, ctx, request)
        except ProtocolError as exc:
            ctx.effects.append(_refusal(conn, request.ref, exc))
        return ctx.effects

    def _route(self, kind: type[Request], app: App[Any, Any]) -> tuple[Route, object]:
        """Return the route of a request type in a room of ``app``, and whose method it is."""
        route = self.routes.get(kind)
        if route is not None:
            return route, self
        route = app.routes.get(kind)
        if route is not None:
            return route, app
        if kind is Hello:
            raise ProtocolError(ErrorCode.CONFLICT, "this connection already said hello")
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"{kind.__struct_config__.tag} is not supported in this room")

    def disconnect(self, conn: ConnId, now: float) -> list[Effect]:
        """A connection ended. Its participant stays, away, for the grace period."""
        if self._admins.pop(conn, None) is not None:
            return []
        session = self._conns.pop(conn, None)
        if session is None or session.conn != conn:
            return []
        session.conn = None
        if session.hidden:
            return self._end(session, reason="left", now=now)
        session.state = SessionState.AWAY
        ctx = Context(self, session.room, session, None, now)
        ctx.broadcast(ParticipantUpdated(participant=self.view(session)), exclude_self=True)
        ctx.effects.append(StartTimer(grace_timer(session.id), now + self.grace))
        return ctx.effects

    def timer_fired(self, key: TimerKey, now: float) -> list[Effect]:
        """A timer started by a ``StartTimer`` effect is due."""
        kind, name = key
        if kind == "empty":
            return self._expire(name)
        if kind != "grace":
            return []
        session = self._sessions.get(name)
        if session is not None and session.state is SessionState.AWAY:
            return self._end(session, reason="timeout", now=now)
        return []

    # --- sessions --------------------------------------------------------------------------

    def _welcome(self, session: Session, ref: str | None, resumed: bool) -> Welcome:
        limits = self.limits
        if limits is not None:
            limits = msgspec.structs.replace(
                limits, max_participants=self._participant_limit(session.room))
        # The room and its participants are for those who may see the room (read); a
        # sender with only post learns nothing of it.
        reads = Grant.READ in session.grants
        return Welcome(
            ref=ref,
            session_id=session.id,
            resume_token=session.resume_token,
            resumed=resumed,
            room=self.room_info(session.room) if reads else None,
            participants=self.participants(session.room) if reads else [],
            grace=self.grace,
            server=self.server,
            limits=limits,
        )

    def _admit(self, conn: ConnId, room: Room, hello: Hello, now: float,
               grants: frozenset[Grant], identity: str | None) -> list[Effect]:
        ctx = Context(self, room, None, hello.ref, now, conn=conn)
        limit = self._participant_limit(room)
        if limit is not None and not hello.hidden and room.visible_count() >= limit:
            raise ProtocolError(ErrorCode.ROOM_FULL, f"the room is full ({limit} participants)")
        meta = room.app.admit(ctx, hello)
        session_id = self._new_id()
        while session_id in self._sessions:
            session_id = self._new_id()
        session = Session(id=session_id, room=room, resume_token=self._new_token(),
                          hidden=hello.hidden, joined_at=now, meta=meta, conn=conn,
                          grants=grants, identity=identity, subscribed=hello.subscribe)
        room.sessions[session.id] = session
        self._conns[conn] = session
        self._by_token[session.resume_token] = session
        self._sessions[session.id] = session
        ctx.session = session
        self.changed(session)
        ctx.effects += self._cancel_expiry(room)
        ctx.reply(self._welcome(session, hello.ref, resumed=False))
        if not session.hidden:
            ctx.broadcast(ParticipantJoined(participant=self.view(session)), exclude_self=True)
        return ctx.effects

    def _resume(self, conn: ConnId, room: Room, hello: Hello, now: float) -> list[Effect]:
        session = self._by_token.get(hello.resume or "")
        if session is None or session.room is not room:
            raise ProtocolError(
                ErrorCode.NOT_FOUND,
                "resume token unknown or expired; say hello without it to start a new session",
            )
        effects: list[Effect] = []
        if session.conn is not None:
            self._conns.pop(session.conn, None)
            effects.append(Close(session.conn, CloseCode.SESSION_RESUMED,
                                 "session resumed on another connection"))
        else:
            effects.append(CancelTimer(grace_timer(session.id)))
        session.conn = conn
        session.state = SessionState.LIVE
        self._conns[conn] = session
        ctx = Context(self, room, session, hello.ref, now, conn=conn)
        ctx.effects = effects
        ctx.reply(self._welcome(session, hello.ref, resumed=True))
        if not session.hidden:
            ctx.broadcast(ParticipantUpdated(participant=self.view(session)), exclude_self=True)
        for peer_id in sorted((session.stale_peers or NO_EDGES) - session.edges()):
            ctx.effects.append(Send((conn,), RemovePeer(peer_id=peer_id)))
        session.stale_peers = None
        if session.in_call:
            # Peers that entered the mesh while this one was away have no edge to it yet.
            for other in room.sessions.values():
                if other is not session and other.in_call and other.live \
                        and other.id not in session.edges():
                    self._connect_peers(ctx, offerer=session, answerer=other)
        return ctx.effects

    def _end(self, session: Session, *, reason: LeaveReason, now: float,
             close: tuple[CloseCode, str] | None = None, announce: bool = True
             ) -> list[Effect]:
        """End ``session`` for good: the one way out of a room, whatever the reason.

        A live session's connection is closed with ``close`` (when given); an away one's
        grace timer is cancelled (unless its running out is why the session ends). Its mesh
        peers are told to drop it and, with
        ``announce``, the room hears ``participant-left``. The room may then start its
        removal timer (``_vacated``).
        """
        room = session.room
        effects: list[Effect] = []
        if session.state is SessionState.AWAY and reason != "timeout":
            effects.append(CancelTimer(grace_timer(session.id)))
        session.state = SessionState.ENDED
        self.changed(session)
        room.sessions.pop(session.id, None)
        self._by_token.pop(session.resume_token, None)
        self._sessions.pop(session.id, None)
        conn = session.conn
        if conn is not None:
            self._conns.pop(conn, None)
        ctx = Context(self, room, None, None, now)
        ctx.effects = effects
        self._drop_edges(ctx, session)
        if announce and not session.hidden:
            ctx.broadcast(ParticipantLeft(participant_id=session.id, reason=reason))
        if conn is not None and close is not None:
            ctx.effects.append(Close(conn, *close))
        session.conn = None
        ctx.effects += self._vacated(room, now)
        return ctx.effects

    def _participant_limit(self, room: Room) -> int | None:
        """Return the most participants ``room`` admits: the daemon's cap, or its app's lower."""
        asked = room.app.max_participants(room.meta)
        if asked is None or (self.max_participants is not None
                             and asked > self.max_participants):
            return self.max_participants
        return asked

    # --- rooms nobody uses -----------------------------------------------------------------

    def _vacated(self, room: Room, now: float) -> list[Effect]:
        """Start ``room``'s removal timer if it is expirable and has no session left."""
        if (room.sessions or not room.expirable or room.name in self._idle
                or self.rooms.get(room.name) is not room or math.isinf(self.empty_timeout)):
            return []
        deadline = now + self.empty_timeout
        self._idle[room.name] = deadline
        return [StartTimer(empty_timer(room.name), deadline)]

    def _cancel_expiry(self, room: Room) -> list[Effect]:
        """``room`` is in use, adopted or deleted: stop its removal timer, if it has one."""
        if self._idle.pop(room.name, None) is None:
            return []
        return [CancelTimer(empty_timer(room.name))]

    def _expire(self, name: str) -> list[Effect]:
        """Remove the idle room ``name``: its removal timer is due, or its space is needed."""
        room = self.rooms.get(name)
        if self._idle.pop(name, None) is None or room is None:
            return []
        if room.sessions or not room.expirable:  # both cancel the timer first; never here
            return []
        del self.rooms[name]
        return [Persist((DeleteRoomRecord(name=name),)), RoomRemoved(name, "expired")]

    def _make_space(self) -> list[Effect] | None:
        """Return what makes space for one more room, or None when nothing can.

        Below ``max_rooms`` that is nothing; at the limit, the early removal of the room
        that has waited longest for its removal timer.
        """
        if self.max_rooms is None:
            return []
        held = len(self.rooms) + len(self.rooms_elsewhere - self.rooms.keys())
        if held < self.max_rooms:
            return []
        for name in self._idle:
            return [CancelTimer(empty_timer(name)), *self._expire(name)]
        return None

    # --- the mesh --------------------------------------------------------------------------

    def _connect_peers(self, ctx: Context, *, offerer: Session, answerer: Session) -> None:
        offerer.add_edge(answerer.id)
        answerer.add_edge(offerer.id)
        self.changed(offerer)
        self.changed(answerer)
        for to, peer, offer in ((answerer, offerer, False), (offerer, answerer, True)):
            if to.conn is not None:
                ctx.effects.append(
                    Send((to.conn,), AddPeer(peer_id=peer.id, should_create_offer=offer))
                )

    def _drop_edges(self, ctx: Context, session: Session) -> None:
        for peer_id in sorted(session.edges()):
            other = session.room.sessions.get(peer_id)
            if other is None:
                continue
            if other.peers is not None:
                other.peers.discard(session.id)
            self.changed(other)
            if other.conn is not None:
                ctx.effects.append(Send((other.conn,), RemovePeer(peer_id=session.id)))
            else:
                other.add_stale_edge(session.id)
            if session.conn is not None:
                ctx.effects.append(Send((session.conn,), RemovePeer(peer_id=other.id)))
            else:
                session.add_stale_edge(other.id)
        session.peers = None

    @staticmethod
    def _participant(ctx: Context) -> Session:
        session = ctx.session
        assert session is not None
        if session.hidden:
            raise ProtocolError(ErrorCode.FORBIDDEN, "hidden observers cannot take part in calls")
        return session

    # --- core requests (each with the grant it needs) --------------------------------------

    @handles(Join, grant=Grant.MEDIA)
    def _join(self, ctx: Context, request: Join) -> None:
        session = self._participant(ctx)
        if not session.in_call:
            session.in_call = True
            self.changed(session)
            view = self.view(session)
            peers = [other for other in session.room.sessions.values()
                     if other is not session and other.in_call and other.live]
            # Those in the call get one add-peer carrying the newcomer's view (the same
            # frame for all, encoded once) instead of add-peer plus participant-updated;
            # everyone else, the newcomer included, gets participant-updated.
            in_call = tuple(other.conn for other in peers if other.conn is not None)
            if in_call:
                ctx.effects.append(Send(in_call, AddPeer(peer_id=session.id, participant=view)))
            # The newcomer offers to everyone already in the call (as in the seed design).
            for other in peers:
                session.add_edge(other.id)
                other.add_edge(session.id)
                if session.conn is not None:
                    ctx.effects.append(Send((session.conn,), AddPeer(peer_id=other.id,
                                                                     should_create_offer=True)))
            rest = tuple(conn for conn in session.room.connections() if conn not in in_call)
            if rest:
                ctx.effects.append(Send(rest, ParticipantUpdated(participant=view)))
        ctx.ok()

    @handles(Part, grant=Grant.MEDIA)
    def _part(self, ctx: Context, request: Part) -> None:
        session = self._participant(ctx)
        if session.in_call:
            session.in_call = False
            self.changed(session)
            self._drop_edges(ctx, session)
            ctx.broadcast(ParticipantUpdated(participant=self.view(session)))
        ctx.ok()

    @handles(RelayIceCandidate, RelaySessionDescription, ForwardIceCandidate,
             ForwardSessionDescription, grant=Grant.MEDIA)
    def _relay(self, ctx: Context, request: Request) -> None:
        # The daemon decodes relays as Forward* (the payload as its sender's bytes, see
        # protocol.relay); the typed Relay* are accepted too, for embedders and tests.
        assert isinstance(request, _RELAYS)
        session = self._participant(ctx)
        target = session.room.sessions.get(request.peer_id)
        if target is None or target.hidden or target is session:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no peer {request.peer_id!r} in this room")
        if target.conn is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"peer {request.peer_id!r} is reconnecting")
        frame: Event
        if isinstance(request, ForwardSessionDescription):
            frame = SessionDescriptionForwarded(peer_id=session.id,
                                                description=request.description)
        elif isinstance(request, ForwardIceCandidate):
            frame = IceCandidateForwarded(peer_id=session.id, candidate=request.candidate)
        elif isinstance(request, RelayIceCandidate):
            frame = IceCandidateRelayed(peer_id=session.id, candidate=request.candidate)
        else:
            frame = SessionDescriptionRelayed(peer_id=session.id, description=request.description)
        ctx.effects.append(Send((target.conn,), frame))
        ctx.ok()

    @handles(SetMediaState, grant=Grant.MEDIA)
    def _set_media_state(self, ctx: Context, request: SetMediaState) -> None:
        session = self._participant(ctx)
        media = MediaState(audio_muted=request.audio_muted, video_muted=request.video_muted)
        if media != session.media:
            session.media = media
            self.changed(session)
            ctx.broadcast(ParticipantUpdated(participant=self.view(session)))
        ctx.ok()

    @handles(Leave)
    def _leave(self, ctx: Context, request: Leave) -> None:
        session = ctx.session
        assert session is not None
        ctx.ok()
        ctx.effects += self._end(session, reason="left", now=ctx.now,
                                 close=(CloseCode.NORMAL, "left the room"))

    @handles(GetParticipants, grant=Grant.READ)
    def _get_participants(self, ctx: Context, request: GetParticipants) -> None:
        ctx.reply(Participants(ref=ctx.ref, participants=self.participants(ctx.room)))

    # --- the admin endpoint ----------------------------------------------------------------

    def admin_hello(self, conn: ConnId, hello: Hello, now: float,
                    access: Access = ANONYMOUS) -> list[Effect]:
        """A connection to the admin endpoint said hello: welcome it, or refuse and close.

        The admin token may do everything; a join token with the ``admin`` grant manages
        its one room (list shows it alone; get-room, kick and delete-room in it).
        """
        if conn in self._admins:
            return [Send((conn,), Error(ref=hello.ref, code=ErrorCode.CONFLICT,
                                        message="this connection already said hello"))]
        if access.anonymous or not (access.is_admin or Grant.ADMIN in access.grants):
            exc: ProtocolError = ProtocolError(
                ErrorCode.UNAUTHORIZED,
                "the admin token (or a join token with the admin grant) is required")
            close = CloseCode.UNAUTHORIZED
            if not access.anonymous:
                exc = MissingGrant(Grant.ADMIN, "the admin token (or a join token with the "
                                                "admin grant) is required")
                close = CloseCode.FORBIDDEN
            return [_refusal(conn, hello.ref, exc), Close(conn, close, "admin token required"),
                    AccessRefused("", conn, exc.code, exc.message)]
        self._admins[conn] = access
        return [Send((conn,), Welcome(ref=hello.ref, session_id=f"admin-{conn}",
                                      grace=self.grace, server=self.server, limits=self.limits))]

    def admin(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """A request on the admin endpoint, checked against what its hello's token proved."""
        access = self._admins.get(conn)
        if access is None:
            return [Send((conn,), Error(ref=request.ref, code=ErrorCode.BAD_REQUEST,
                                        message="say hello first"))]
        try:
            if not access.is_admin:
                self._check_scope(request, access)
            route = self.admin_routes.get(type(request))
            if route is None:
                if isinstance(request, Hello):
                    raise ProtocolError(ErrorCode.CONFLICT, "this connection already said hello")
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"{_tag(request)} is not an admin "
                                                           "request")
            return list(route.handler(self, conn, request, now, access))
        except ProtocolError as exc:
            return [_refusal(conn, request.ref, exc)]

    @staticmethod
    def _check_scope(request: Request, access: Access) -> None:
        """Raise ``forbidden`` unless a room's admin grant allows ``request``."""
        if isinstance(request, adm.ListRooms):
            return
        if isinstance(request, adm.GetRoom | adm.UpdateRoom | adm.Kick | adm.DeleteRoom):
            if request.room != access.room:
                raise ProtocolError(ErrorCode.FORBIDDEN,
                                    f"the token is for room {access.room!r}, "
                                    f"not {request.room!r}")
            return
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{_tag(request)} needs the admin token")

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no room named {name!r}")
        return room

    def _details(self, ref: str | None, room: Room) -> adm.RoomDetails:
        return adm.RoomDetails(ref=ref, room=self.room_info(room),
                               participants=self.participants(room))

    @handles(adm.ListRooms)
    def _list_rooms(self, conn: ConnId, request: adm.ListRooms, now: float,
                    access: Access) -> list[Effect]:
        names, following = page_of_names(
            (name for name in self.rooms if access.is_admin or name == access.room),
            request.after, request.limit)
        rooms = [self.room_info(self.rooms[name]) for name in names]
        return [Send((conn,), adm.RoomList(ref=request.ref, rooms=rooms, next=following))]

    @handles(adm.GetRoom)
    def _get_room(self, conn: ConnId, request: adm.GetRoom, now: float,
                  access: Access) -> list[Effect]:
        return [Send((conn,), self._details(request.ref, self._room(request.room)))]

    @handles(adm.Kick)
    def _kick(self, conn: ConnId, request: adm.Kick, now: float,
              access: Access) -> list[Effect]:
        room = self._room(request.room)
        session = room.sessions.get(request.participant_id)
        if session is None or session.hidden:
            raise ProtocolError(ErrorCode.NOT_FOUND,
                                f"no participant {request.participant_id!r} in {room.name!r}")
        effects: list[Effect] = [ParticipantKicked(room.name, session.id)]
        effects += self._end(session, reason="kicked", now=now,
                             close=(CloseCode.KICKED, "removed by an administrator"))
        ctx = Context(self, room, None, request.ref, now, conn=conn)
        ctx.ok()
        return effects + ctx.effects

    @handles(adm.CreateRoom)
    def _create_room(self, conn: ConnId, request: adm.CreateRoom, now: float,
                     access: Access) -> list[Effect]:
        existing = self.rooms.get(request.room)
        if request.room in self.foreign_rooms:
            raise ProtocolError(ErrorCode.CONFLICT,
                                f"room {request.room!r} exists with an app this daemon lacks")
        if existing is not None:
            if not request.if_missing:
                raise ProtocolError(ErrorCode.CONFLICT, f"room {request.room!r} already exists")
            if not existing.implicit:
                return [Send((conn,), self._details(request.ref, existing))]
            # A room someone's visit made is adopted: from now on it stays until deleted.
            existing.implicit = False
            adopt = Context(self, existing, None, request.ref, now, conn=conn)
            adopt.effects += self._cancel_expiry(existing)
            adopt.persist(self.room_record(existing),
                          then=lambda c: c.reply(self._details(request.ref, existing)))
            return adopt.effects
        app = self.apps.get(request.app)
        if app is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"no app named {request.app!r}")
        meta = app.create_room(request.meta, creator=None)
        asked = app.max_participants(meta)
        if self.max_participants is not None and asked is not None \
                and asked > self.max_participants:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"max_participants {asked} is over this daemon's cap of "
                                f"{self.max_participants} participants per room")
        space = self._make_space()
        if space is None:
            raise ProtocolError(ErrorCode.LIMIT_REACHED,
                                f"this daemon holds its maximum of {self.max_rooms} rooms")
        room = Room(name=request.room, app=app, created_at=now, meta=meta,
                    private=request.private or self.require_tokens)
        self.rooms[room.name] = room
        ctx = Context(self, room, None, request.ref, now, conn=conn)
        ctx.effects += space

        def undo() -> None:
            if self.rooms.get(room.name) is room:
                del self.rooms[room.name]

        ctx.persist(self.room_record(room),
                    then=lambda c: c.reply(self._details(request.ref, room)), undo=undo)
        ctx.effects.append(RoomCreated(room.name, implicit=False))
        return ctx.effects

    @handles(adm.UpdateRoom)
    def _update_room(self, conn: ConnId, request: adm.UpdateRoom, now: float,
                     access: Access) -> list[Effect]:
        room = self._room(request.room)
        before, was_private = room.meta, room.private
        meta = room.app.update_room(before, request.meta or {})
        asked = room.app.max_participants(meta)
        if self.max_participants is not None and asked is not None \
                and asked > self.max_participants:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"max_participants {asked} is over this daemon's cap of "
                                f"{self.max_participants} participants per room")
        ctx = Context(self, room, None, request.ref, now, conn=conn)
        ctx.set_room_meta(meta)
        if request.private is not None:
            room.private = request.private
        ctx.effects += self._cancel_expiry(room)  # a room someone set up is in use
        revert_meta = ctx.room_meta_undo(before)

        def undo() -> None:
            revert_meta()
            if room.private == request.private:
                room.private = was_private

        def updated(after: Context) -> None:
            room.app.room_updated(after, before, meta)
            after.reply(self._details(request.ref, room))

        ctx.persist(self.room_record(room), then=updated, undo=undo)
        return ctx.effects

    @handles(adm.DeleteRoom)
    def _delete_room(self, conn: ConnId, request: adm.DeleteRoom, now: float,
                     access: Access) -> list[Effect]:
        room = self._room(request.room)
        effects: list[Effect] = self._cancel_expiry(room)
        del self.rooms[room.name]  # first: ending its sessions must not start its removal
        for session in list(room.sessions.values()):
            effects += self._end(session, reason="left", now=now, announce=False,
                                 close=(CloseCode.ROOM_DELETED, "the room was deleted"))
        ctx = Context(self, room, None, request.ref, now, conn=conn)
        ctx.persist(DeleteRoomRecord(name=room.name), then=lambda c: c.ok())
        return [*effects, *ctx.effects, RoomRemoved(room.name, "deleted")]

    @handles(adm.CreateToken)
    def _create_token(self, conn: ConnId, request: adm.CreateToken, now: float,
                      access: Access) -> list[Effect]:
        if self._sign_token is None:
            raise ProtocolError(ErrorCode.INTERNAL, "this daemon cannot sign join tokens")
        grants = sorted(set(request.grants))
        token, expires_at = self._sign_token(room=request.room, identity=request.identity,
                                             name=request.name, grants=grants,
                                             ttl=request.ttl, now=now)
        return [Send((conn,), adm.TokenIssued(ref=request.ref, token=token, room=request.room,
                                              identity=request.identity, grants=grants,
                                              expires_at=expires_at)),
                TokenIssued(request.room, request.identity, tuple(grants), request.ttl)]

    # The route tables: the room endpoint's core requests, and the admin endpoint's.
    routes: dict[type[Request], Route] = {}
    admin_routes: dict[type[Request], Route] = {}


_ALL_ROUTES = routes_of(Engine)
Engine.admin_routes = {t: r for t, r in _ALL_ROUTES.items() if t in adm.ADMIN_REQUESTS}
Engine.routes = {t: r for t, r in _ALL_ROUTES.items() if t not in adm.ADMIN_REQUESTS}
_RELAYS = (RelayIceCandidate, RelaySessionDescription, ForwardIceCandidate,
           ForwardSessionDescription)
