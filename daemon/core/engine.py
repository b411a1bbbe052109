"""The room engine: rooms, sessions, participants and the WebRTC relay, with no I/O.

Theory of operation
-------------------
Inputs are calls: a connection said ``hello`` (``hello``), a decoded request arrived
(``request``, or ``admin`` on the admin endpoint), a connection dropped (``disconnect``),
a timer fired (``timer_fired``). Each takes ``now`` and returns a list of effects
(``daemon.core.effects``) that the server applies in order: send frames, close connections,
persist records, query the log, start or cancel timers. Nothing here awaits, so each
call is atomic under trio's scheduler without locks, and every rule is testable
without sockets or clocks.

A session belongs to one room. While its connection is up it is *live*; when the
connection drops, the participant stays, marked not live, for ``grace`` seconds, and a
``hello`` carrying its resume token in that window reattaches the same session: no
leave/join churn, and its mesh edges (WebRTC peer connections) are kept. Hidden sessions
(observers) never appear as participants, never enter the mesh, and end on disconnect.

Room behaviour beyond that belongs to the room's app (``daemon.core.app``): its requests are
dispatched to ``App.handle`` through a ``Context``.

Access: the server checks a hello's token (``daemon.tokens``) and passes the ``Access`` it
proves; the engine decides with it. An open room admits anyone (with ``OPEN_ROOM_GRANTS``);
a private room, or every room under ``require_tokens``, needs the admin token or a join
token for that room with the ``join`` grant. A session keeps its grants: each request
needs one (``media`` for the call, the app's choice for its own requests, ``post`` for
the chat app's writes), or it is answered ``forbidden``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import msgspec

from daemon.core.access import ADMIN, ALL_GRANTS, ANONYMOUS, Access
from daemon.core.app import App, Context
from daemon.core.effects import (
    CancelTimer,
    Close,
    ConnId,
    Effect,
    Persist,
    Send,
    StartTimer,
    TimerKey,
)
from daemon.core.records import DeleteRoom as DeleteRoomRecord
from daemon.core.records import PutRoom, StoredRoom
from protocol import PROTOCOL_VERSION, CloseCode, ErrorCode, Event, ProtocolError, Request
from protocol import admin as adm
from protocol.messages import (
    AddPeer,
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

DEFAULT_GRACE = 60.0


@dataclass(eq=False, slots=True)
class Session:
    id: str
    room: Room
    resume_token: str
    hidden: bool
    joined_at: float
    meta: Any
    conn: ConnId | None = None
    in_call: bool = False
    media: MediaState = field(default_factory=MediaState)
    grants: frozenset[str] = ALL_GRANTS
    identity: str | None = None  # the join token's subject
    # Mesh edges: the ids this session has (or is setting up) a peer connection with.
    # Both sets are made on first use: most sessions never join a call, and an empty set
    # is 216 bytes of every idle connection.
    peers: set[str] | None = None
    # Edges dropped while this session was away: it is told to remove them on resume.
    stale_peers: set[str] | None = None

    @property
    def live(self) -> bool:
        return self.conn is not None

    def edges(self) -> AbstractSet[str]:
        return self.peers or _NO_EDGES

    def add_edge(self, peer_id: str) -> None:
        if self.peers is None:
            self.peers = set()
        self.peers.add(peer_id)

    def add_stale_edge(self, peer_id: str) -> None:
        if self.stale_peers is None:
            self.stale_peers = set()
        self.stale_peers.add(peer_id)


_NO_EDGES: frozenset[str] = frozenset()


@dataclass(eq=False)
class Room:
    name: str
    app: App[Any, Any]
    created_at: float
    meta: Any
    private: bool = False  # joining needs a token
    last_seq: int = 0  # highest committed log sequence number
    next_seq: int = 0  # highest allocated one (>= last_seq; allocated before commit)
    sessions: dict[str, Session] = field(default_factory=dict)

    def connections(self, exclude: str | None = None) -> tuple[ConnId, ...]:
        return tuple(
            s.conn for s in self.sessions.values() if s.conn is not None and s.id != exclude
        )

    def visible(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.hidden]

    def visible_count(self) -> int:
        return sum(1 for s in self.sessions.values() if not s.hidden)


def grace_timer(session_id: str) -> TimerKey:
    return ("grace", session_id)


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
        self.max_participants = max_participants  # per room, hidden observers not counted
        self.server = server
        self._new_id = new_id or (lambda: secrets.token_hex(6))
        self._new_token = new_token or (lambda: secrets.token_urlsafe(24))
        self.rooms: dict[str, Room] = {}
        self.conns: dict[ConnId, Session] = {}
        self._by_token: dict[str, Session] = {}
        self._sessions: dict[str, Session] = {}  # every session of every room, by id
        # Stored rooms whose app is not installed: kept off limits so they are not overwritten.
        self.foreign_rooms: set[str] = set()
        self.last_now = 0.0

    # --- start-up ------------------------------------------------------------------------

    def restore(self, stored: Iterable[StoredRoom]) -> None:
        """Load rooms from the store at start-up. Rooms of unknown apps are skipped."""
        for rec in stored:
            app = self.apps.get(rec.app)
            if app is None:
                self.foreign_rooms.add(rec.name)
                continue
            self.rooms[rec.name] = Room(
                name=rec.name,
                app=app,
                created_at=rec.created_at,
                meta=app.decode_room_meta(rec.meta),
                private=rec.private,
                last_seq=rec.last_seq,
                next_seq=rec.last_seq,
            )

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
        )

    def request_types(self) -> tuple[type[Request], ...]:
        """Return every app's request types, for the room endpoint's decoder."""
        return tuple(t for app in self.apps.values() for t in app.requests)

    # --- inputs --------------------------------------------------------------------------

    def hello(self, conn: ConnId, room_name: str, hello: Hello, now: float,
              access: Access = ANONYMOUS) -> list[Effect]:
        """A connection to ``room_name`` said hello: welcome it, or answer with an error.

        ``access`` is what the hello's token proved (``daemon.auth.Authority.check``).
        After an error the connection has no session and may try ``hello`` again, except
        for an unknown room or a refused token, which also close it.
        """
        self.last_now = now
        if conn in self.conns:
            return [Send((conn,), Error(ref=hello.ref, code=ErrorCode.CONFLICT,
                                        message="this connection already said hello"))]
        if hello.protocol != PROTOCOL_VERSION:
            return [Send((conn,), Error(
                ref=hello.ref, code=ErrorCode.BAD_REQUEST,
                message=f"protocol {hello.protocol} is not supported; this daemon speaks "
                        f"protocol {PROTOCOL_VERSION}"))]
        effects: list[Effect] = []
        room = self.rooms.get(room_name)
        if hello.resume is None:
            try:
                grants = self._grants(room_name, room, access, hello)
            except ProtocolError as exc:
                close = CloseCode.UNAUTHORIZED if exc.code == ErrorCode.UNAUTHORIZED \
                    else CloseCode.FORBIDDEN
                return [Send((conn,), Error(ref=hello.ref, code=exc.code, message=exc.message)),
                        Close(conn, close, exc.message[:120])]
        if room is None:
            if (not self.auto_create or not hello.create or hello.resume is not None
                    or room_name in self.foreign_rooms):
                return [
                    Send((conn,), Error(ref=hello.ref, code=ErrorCode.NOT_FOUND,
                                        message=f"no room named {room_name!r}")),
                    Close(conn, CloseCode.ROOM_NOT_FOUND, "no such room"),
                ]
            if self.max_rooms is not None and len(self.rooms) >= self.max_rooms:
                return [Send((conn,), Error(
                            ref=hello.ref, code=ErrorCode.LIMIT_REACHED,
                            message=f"this daemon holds its maximum of {self.max_rooms} rooms")),
                        Close(conn, CloseCode.ROOM_NOT_FOUND, "no such room")]
            app = self.default_app
            try:
                meta = app.create_room(None, creator=None if hello.hidden else hello.name)
            except ProtocolError as exc:
                return [Send((conn,), Error(ref=hello.ref, code=exc.code, message=exc.message)),
                        Close(conn, CloseCode.ROOM_NOT_FOUND, "no such room")]
            room = Room(name=room_name, app=app, created_at=now, meta=meta,
                        private=self.require_tokens)
            self.rooms[room_name] = room
            effects.append(Persist((self.room_record(room),)))
        try:
            if hello.resume is not None:
                effects += self._resume(conn, room, hello, now)
            else:
                if access.name is not None:  # a token's display name wins over the hello's
                    hello = msgspec.structs.replace(hello, name=access.name)
                effects += self._admit(conn, room, hello, now, grants, access.identity)
        except ProtocolError as exc:
            effects.append(Send((conn,), Error(ref=hello.ref, code=exc.code, message=exc.message)))
        return effects

    def _grants(self, room_name: str, room: Room | None, access: Access,
                hello: Hello) -> frozenset[str]:
        """Return the grants a new session gets, or raise unauthorized/forbidden."""
        private = self.require_tokens or (room is not None and room.private)
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
        if "join" not in grants:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the token does not grant join")
        if hello.hidden and "hidden" not in grants:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the token does not grant hidden")
        return grants

    def request(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """A request arrived on a connection that has a session."""
        self.last_now = now
        session = self.conns.get(conn)
        if session is None:
            return [Send((conn,), Error(ref=request.ref, code=ErrorCode.BAD_REQUEST,
                                        message="say hello first"))]
        ctx = Context(self, session.room, session, request.ref, now, conn=conn)
        try:
            kind = type(request)
            grant = _CORE_GRANTS[kind] if kind in _CORE_GRANTS else \
                session.room.app.grant_for(kind)
            if grant is not None and grant not in session.grants:
                raise ProtocolError(ErrorCode.FORBIDDEN,
                                    f"{type(request).__struct_config__.tag} needs the {grant} "
                                    "grant, which this session's token lacks")
            handler = self._core_handlers.get(type(request))
            if handler is not None:
                handler(self, ctx, request)
            elif type(request) in session.room.app.requests:
                session.room.app.handle(ctx, request)
            elif isinstance(request, Hello):
                raise ProtocolError(ErrorCode.CONFLICT, "this connection already said hello")
            else:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"{type(request).__struct_config__.tag} is not supported in this room",
                )
        except ProtocolError as exc:
            ctx.effects.append(Send((conn,), Error(ref=request.ref, code=exc.code,
                                                   message=exc.message)))
        return ctx.effects

    def disconnect(self, conn: ConnId, now: float) -> list[Effect]:
        """A connection ended. Its participant stays, not live, for the grace period."""
        self.last_now = now
        session = self.conns.pop(conn, None)
        if session is None or session.conn != conn:
            return []
        session.conn = None
        if session.hidden:
            return self._remove(session, reason="left", now=now)
        ctx = Context(self, session.room, session, None, now)
        ctx.broadcast(ParticipantUpdated(participant=self.view(session)), exclude_self=True)
        ctx.effects.append(StartTimer(grace_timer(session.id), now + self.grace))
        return ctx.effects

    def timer_fired(self, key: TimerKey, now: float) -> list[Effect]:
        """A timer started by a ``StartTimer`` effect is due."""
        self.last_now = now
        kind, session_id = key
        if kind != "grace":
            return []
        session = self._sessions.get(session_id)
        if session is not None and not session.live:
            return self._remove(session, reason="timeout", now=now)
        return []

    def admin(self, conn: ConnId, request: Request, now: float,
              access: Access = ADMIN) -> list[Effect]:
        """A request on the admin endpoint, from the admin token or a room's ``admin`` grant.

        A join token with the ``admin`` grant manages only its room: it may list (its room
        only), get, kick in and delete that room, and nothing else.
        """
        self.last_now = now
        try:
            if not access.is_admin:
                request = self._scoped(request, access)
            return self._admin(conn, request, now, access)
        except ProtocolError as exc:
            return [Send((conn,), Error(ref=request.ref, code=exc.code, message=exc.message))]

    # --- sessions --------------------------------------------------------------------------

    def _welcome(self, session: Session, ref: str | None, resumed: bool) -> Welcome:
        return Welcome(
            ref=ref,
            session_id=session.id,
            resume_token=session.resume_token,
            resumed=resumed,
            room=self.room_info(session.room),
            participants=self.participants(session.room),
            grace=self.grace,
            server=self.server,
        )

    def _admit(self, conn: ConnId, room: Room, hello: Hello, now: float,
               grants: frozenset[str] = ALL_GRANTS, identity: str | None = None
               ) -> list[Effect]:
        ctx = Context(self, room, None, hello.ref, now, conn=conn)
        if (self.max_participants is not None and not hello.hidden
                and room.visible_count() >= self.max_participants):
            raise ProtocolError(ErrorCode.ROOM_FULL,
                                f"the room is full ({self.max_participants} participants)")
        meta = room.app.admit(ctx, hello)
        session_id = self._new_id()
        while session_id in self._sessions:
            session_id = self._new_id()
        session = Session(
            id=session_id,
            room=room,
            resume_token=self._new_token(),
            hidden=hello.hidden,
            joined_at=now,
            meta=meta,
            conn=conn,
            grants=grants,
            identity=identity,
        )
        room.sessions[session.id] = session
        self.conns[conn] = session
        self._by_token[session.resume_token] = session
        self._sessions[session.id] = session
        ctx.session = session
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
            self.conns.pop(session.conn, None)
            effects.append(Close(session.conn, CloseCode.SESSION_RESUMED,
                                 "session resumed on another connection"))
        else:
            effects.append(CancelTimer(grace_timer(session.id)))
        session.conn = conn
        self.conns[conn] = session
        ctx = Context(self, room, session, hello.ref, now, conn=conn)
        ctx.effects = effects
        ctx.reply(self._welcome(session, hello.ref, resumed=True))
        if not session.hidden:
            ctx.broadcast(ParticipantUpdated(participant=self.view(session)), exclude_self=True)
        for peer_id in sorted((session.stale_peers or _NO_EDGES) - session.edges()):
            ctx.effects.append(Send((conn,), RemovePeer(peer_id=peer_id)))
        session.stale_peers = None
        if session.in_call:
            # Peers that entered the mesh while this one was away have no edge to it yet.
            for other in room.sessions.values():
                if other is not session and other.in_call and other.live \
                        and other.id not in session.edges():
                    self._connect_peers(ctx, offerer=session, answerer=other)
        return ctx.effects

    def _remove(self, session: Session, *, reason: LeaveReason, now: float) -> list[Effect]:
        room = session.room
        room.sessions.pop(session.id, None)
        self._by_token.pop(session.resume_token, None)
        self._sessions.pop(session.id, None)
        if session.conn is not None:
            self.conns.pop(session.conn, None)
        ctx = Context(self, room, None, None, now)
        self._drop_edges(ctx, session)
        if not session.hidden:
            ctx.broadcast(ParticipantLeft(participant_id=session.id, reason=reason))
        return ctx.effects

    # --- the mesh --------------------------------------------------------------------------

    @staticmethod
    def _connect_peers(ctx: Context, *, offerer: Session, answerer: Session) -> None:
        offerer.add_edge(answerer.id)
        answerer.add_edge(offerer.id)
        for to, peer, offer in ((answerer, offerer, False), (offerer, answerer, True)):
            if to.conn is not None:
                ctx.effects.append(
                    Send((to.conn,), AddPeer(peer_id=peer.id, should_create_offer=offer))
                )

    @staticmethod
    def _drop_edges(ctx: Context, session: Session) -> None:
        for peer_id in sorted(session.edges()):
            other = session.room.sessions.get(peer_id)
            if other is None:
                continue
            if other.peers is not None:
                other.peers.discard(session.id)
            if other.conn is not None:
                ctx.effects.append(Send((other.conn,), RemovePeer(peer_id=session.id)))
            else:
                other.add_stale_edge(session.id)
            if session.conn is not None:
                ctx.effects.append(Send((session.conn,), RemovePeer(peer_id=other.id)))
            else:
                session.add_stale_edge(other.id)
        session.peers = None

    def _join(self, ctx: Context, request: Request) -> None:
        session = self._participant(ctx)
        if not session.in_call:
            session.in_call = True
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

    def _part(self, ctx: Context, request: Request) -> None:
        session = self._participant(ctx)
        if session.in_call:
            session.in_call = False
            self._drop_edges(ctx, session)
            ctx.broadcast(ParticipantUpdated(participant=self.view(session)))
        ctx.ok()

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

    def _set_media_state(self, ctx: Context, request: Request) -> None:
        assert isinstance(request, SetMediaState)
        session = self._participant(ctx)
        media = MediaState(audio_muted=request.audio_muted, video_muted=request.video_muted)
        if media != session.media:
            session.media = media
            ctx.broadcast(ParticipantUpdated(participant=self.view(session)))
        ctx.ok()

    def _leave(self, ctx: Context, request: Request) -> None:
        session = ctx.session
        assert session is not None and session.conn is not None
        conn = session.conn
        ctx.ok()
        ctx.effects += self._remove(session, reason="left", now=ctx.now)
        ctx.effects.append(Close(conn, CloseCode.NORMAL, "left the room"))

    def _get_participants(self, ctx: Context, request: Request) -> None:
        ctx.reply(Participants(ref=ctx.ref, participants=self.participants(ctx.room)))

    @staticmethod
    def _participant(ctx: Context) -> Session:
        session = ctx.session
        assert session is not None
        if session.hidden:
            raise ProtocolError(ErrorCode.FORBIDDEN, "hidden observers cannot take part in calls")
        return session

    _core_handlers: dict[type, Callable[[Engine, Context, Request], None]] = {
        Join: _join,
        Part: _part,
        RelayIceCandidate: _relay,
        RelaySessionDescription: _relay,
        ForwardIceCandidate: _relay,
        ForwardSessionDescription: _relay,
        SetMediaState: _set_media_state,
        GetParticipants: _get_participants,
        Leave: _leave,
    }

    # --- administration --------------------------------------------------------------------

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no room named {name!r}")
        return room

    def _details(self, ref: str | None, room: Room) -> adm.RoomDetails:
        return adm.RoomDetails(ref=ref, room=self.room_info(room),
                               participants=self.participants(room))

    @staticmethod
    def _scoped(request: Request, access: Access) -> Request:
        if "admin" not in access.grants or access.room is None:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the token does not grant admin")
        if isinstance(request, adm.ListRooms):
            return request
        if isinstance(request, adm.GetRoom | adm.Kick | adm.DeleteRoom):
            if request.room != access.room:
                raise ProtocolError(ErrorCode.FORBIDDEN,
                                    f"the token is for room {access.room!r}, "
                                    f"not {request.room!r}")
            return request
        raise ProtocolError(ErrorCode.FORBIDDEN,
                            f"{type(request).__struct_config__.tag} needs the admin token")

    def _admin(self, conn: ConnId, request: Request, now: float,
               access: Access = ADMIN) -> list[Effect]:
        if isinstance(request, adm.ListRooms):
            rooms = [self.room_info(r) for _, r in sorted(self.rooms.items())
                     if access.is_admin or r.name == access.room]
            return [Send((conn,), adm.RoomList(ref=request.ref, rooms=rooms))]
        if isinstance(request, adm.GetRoom):
            return [Send((conn,), self._details(request.ref, self._room(request.room)))]
        if isinstance(request, adm.CreateRoom):
            return self._create_room(conn, request, now)
        if isinstance(request, adm.DeleteRoom):
            return self._delete_room(conn, request, now)
        if isinstance(request, adm.Kick):
            room = self._room(request.room)
            session = room.sessions.get(request.participant_id)
            if session is None or session.hidden:
                raise ProtocolError(ErrorCode.NOT_FOUND,
                                    f"no participant {request.participant_id!r} in {room.name!r}")
            effects: list[Effect] = []
            if session.conn is not None:
                effects.append(Close(session.conn, CloseCode.KICKED, "removed by an administrator"))
            else:
                effects.append(CancelTimer(grace_timer(session.id)))
            effects += self._remove(session, reason="kicked", now=now)
            ctx = Context(self, room, None, request.ref, now, conn=conn)
            ctx.ok()
            return effects + ctx.effects
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"{type(request).__struct_config__.tag} is not an admin request")

    def _create_room(self, conn: ConnId, request: adm.CreateRoom, now: float) -> list[Effect]:
        existing = self.rooms.get(request.room)
        if request.room in self.foreign_rooms:
            raise ProtocolError(ErrorCode.CONFLICT,
                                f"room {request.room!r} exists with an app this daemon lacks")
        if existing is not None:
            if request.if_missing:
                return [Send((conn,), self._details(request.ref, existing))]
            raise ProtocolError(ErrorCode.CONFLICT, f"room {request.room!r} already exists")
        app = self.apps.get(request.app)
        if app is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"no app named {request.app!r}")
        if self.max_rooms is not None and len(self.rooms) >= self.max_rooms:
            raise ProtocolError(ErrorCode.LIMIT_REACHED,
                                f"this daemon holds its maximum of {self.max_rooms} rooms")
        room = Room(name=request.room, app=app, created_at=now,
                    meta=app.create_room(request.meta, creator=None),
                    private=request.private or self.require_tokens)
        self.rooms[room.name] = room
        ctx = Context(self, room, None, request.ref, now, conn=conn)

        def undo() -> None:
            if self.rooms.get(room.name) is room:
                del self.rooms[room.name]

        ctx.persist(self.room_record(room),
                    then=lambda c: c.reply(self._details(request.ref, room)), undo=undo)
        return ctx.effects

    def _delete_room(self, conn: ConnId, request: adm.DeleteRoom, now: float) -> list[Effect]:
        room = self._room(request.room)
        effects: list[Effect] = []
        for session in list(room.sessions.values()):
            if session.conn is not None:
                effects.append(Close(session.conn, CloseCode.ROOM_DELETED, "the room was deleted"))
                self.conns.pop(session.conn, None)
            else:
                effects.append(CancelTimer(grace_timer(session.id)))
            self._by_token.pop(session.resume_token, None)
            self._sessions.pop(session.id, None)
        room.sessions.clear()
        del self.rooms[room.name]
        ctx = Context(self, room, None, request.ref, now, conn=conn)
        ctx.persist(DeleteRoomRecord(name=room.name), then=lambda c: c.ok())
        return effects + ctx.effects


_RELAYS = (RelayIceCandidate, RelaySessionDescription, ForwardIceCandidate,
           ForwardSessionDescription)

# The grant each core request needs (None: any session may make it).
_CORE_GRANTS: dict[type[Request], str | None] = {
    Join: "media",
    Part: "media",
    RelayIceCandidate: "media",
    RelaySessionDescription: "media",
    ForwardIceCandidate: "media",
    ForwardSessionDescription: "media",
    SetMediaState: "media",
    GetParticipants: None,
    Leave: None,
}
