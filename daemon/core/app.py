"""The app plugin API: what a room app declares and the context its handlers act through.

The engine knows rooms, sessions, the WebRTC relay and the store; it knows nothing of
chat. An app adds typed room metadata, typed per-session metadata, its own request and
event types (merged into the decoders at start-up), its part of the participant view,
and handlers. Handlers never do I/O: they act through a ``Context``, which turns what
they do into effects, so app rules are as testable as the engine's.

An app's requests are its handler methods, each marked with the request type it handles
and the grant it needs (``@handles(SendMessage, grant=Grant.POST)``, see
``daemon.core.routes``): the same table the engine keeps for its own requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import msgspec

from daemon.core.effects import ConnId, Effect, Persist, Query, Send
from daemon.core.records import AppendLog, LogEntry, PutRoom
from daemon.core.routes import Route, routes_of
from protocol import ErrorCode, Event, ProtocolError, Request
from protocol.messages import Error, Hello, Ok, ParticipantUpdated

if TYPE_CHECKING:
    from daemon.core.engine import Engine
    from daemon.core.state import Room, Session

RoomMetaT = TypeVar("RoomMetaT", bound=msgspec.Struct)
SessionMetaT = TypeVar("SessionMetaT")


class App(Generic[RoomMetaT, SessionMetaT]):
    """Base class of room apps. Subclass it, set the class attributes, override the hooks."""

    name: ClassVar[str]
    """The app's name on the wire (``RoomInfo.app``) and in the store."""
    room_meta_type: ClassVar[type[msgspec.Struct]]
    """The Struct type of the room metadata; stored as JSON, so fields only ever get added."""
    events: ClassVar[tuple[type[Event], ...]] = ()
    routes: ClassVar[dict[type[Request], Route]] = {}
    """The app's requests: each type, the grant it needs, its ``@handles`` method."""
    requests: ClassVar[tuple[type[Request], ...]] = ()
    """The request types of ``routes``, for the room endpoint's decoder."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.routes = routes_of(cls)
        cls.requests = tuple(cls.routes)

    def create_room(self, options: dict[str, Any] | None, *, creator: str | None) -> RoomMetaT:
        """Return the metadata of a new room from admin options (None when auto-created).

        Raises ProtocolError (bad-request) for invalid options.
        """
        try:
            meta: RoomMetaT = msgspec.convert(  # type: ignore[assignment]
                options or {}, self.room_meta_type
            )
        except msgspec.ValidationError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid room options: {exc}") from None
        return meta

    def max_participants(self, meta: RoomMetaT) -> int | None:
        """Return the participant limit a room's metadata sets (None: the daemon's cap only).

        The engine enforces it, hidden observers not counted, and refuses ``create-room``
        asking for more than the daemon's own cap (``Config.max_participants``).
        """
        return None

    def update_room(self, meta: RoomMetaT, changes: dict[str, Any]) -> RoomMetaT:
        """Return ``meta`` with an administrator's ``changes`` (``update-room``) applied.

        Raises ProtocolError (bad-request) for invalid changes. The default takes any
        field of ``room_meta_type``.
        """
        try:
            updated: RoomMetaT = msgspec.convert(  # type: ignore[assignment]
                {**msgspec.to_builtins(meta), **changes}, self.room_meta_type)
        except msgspec.ValidationError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid room options: {exc}") from None
        return updated

    def room_updated(self, ctx: Context, before: RoomMetaT, after: RoomMetaT) -> None:
        """An ``update-room`` is stored: tell the room what changed (``ctx.broadcast``)."""

    def admit(self, ctx: Context, hello: Hello) -> SessionMetaT:
        """Return the metadata of a session entering the room. Raises ProtocolError to refuse."""
        raise NotImplementedError

    def participant_view(self, meta: SessionMetaT) -> Any:
        """Return the app's part of the participant view (``Participant.meta``)."""
        return meta

    def room_view(self, meta: RoomMetaT) -> Any:
        """Return the app's part of the room view (``RoomInfo.meta``)."""
        return meta

    def encode_room_meta(self, meta: RoomMetaT) -> bytes:
        return msgspec.json.encode(meta)

    def encode_session_meta(self, meta: SessionMetaT) -> bytes:
        """Return a session's metadata as bytes (several nodes keep sessions in Redis)."""
        return msgspec.msgpack.encode(meta)

    def decode_session_meta(self, data: bytes) -> SessionMetaT:
        """Return what ``encode_session_meta`` made; override with a type to get it back."""
        meta: SessionMetaT = msgspec.msgpack.decode(data)
        return meta

    def decode_room_meta(self, data: bytes) -> RoomMetaT:
        meta: RoomMetaT = msgspec.json.decode(  # type: ignore[assignment]
            data, type=self.room_meta_type
        )
        return meta


class Context:
    """What a handler may do: read its room and session, reply, broadcast, persist, query.

    Effects accumulate in ``effects``; the engine returns them. Callbacks given to
    ``persist`` and ``query`` run later in a fresh context of the same room, session and
    request, so recipients and state are those of the moment they run.
    """

    def __init__(
        self,
        engine: Engine,
        room: Room,
        session: Session | None,
        ref: str | None,
        now: float,
        *,
        conn: ConnId | None = None,
    ) -> None:
        self.engine = engine
        self.room = room
        self.session = session
        self.ref = ref
        self.now = now
        self.conn = conn  # where replies go when there is no session (admin requests)
        self.effects: list[Effect] = []

    # --- reading ---------------------------------------------------------------------------

    @property
    def room_meta(self) -> Any:
        return self.room.meta

    @property
    def session_meta(self) -> Any:
        if self.session is None:
            raise ProtocolError(ErrorCode.FORBIDDEN, "this request needs a session")
        return self.session.meta

    def visible_count(self) -> int:
        """Return how many participants (not hidden observers) the room has."""
        return self.room.visible_count()

    # --- answering -------------------------------------------------------------------------

    def reply(self, frame: Event) -> None:
        """Send ``frame`` to the requesting connection, if it is still connected."""
        conn = self.session.conn if self.session is not None else self.conn
        if conn is not None:
            self.effects.append(Send((conn,), frame))

    def ok(self, seq: int | None = None, at: float | None = None) -> None:
        """Acknowledge the request (with the ``seq`` and time ``at`` of a record it made);
        only requests that carry a ``ref`` get an ``ok``."""
        if self.ref is not None:
            self.reply(Ok(ref=self.ref, seq=seq, at=at))

    def error(self, code: ErrorCode, message: str, *, retry_after: float | None = None) -> None:
        self.reply(Error(ref=self.ref, code=code, message=message, retry_after=retry_after))

    def broadcast(self, frame: Event, *, exclude_self: bool = False) -> None:
        """Send ``frame`` to every connected session of the room (observers included)."""
        skip = self.session.id if (exclude_self and self.session is not None) else None
        to: tuple[ConnId, ...] = self.room.connections(exclude=skip)
        if to:
            self.effects.append(Send(to, frame))

    # --- changing state --------------------------------------------------------------------

    def set_session_meta(self, meta: Any, *, announce: bool = True) -> None:
        """Replace this session's metadata; ``announce`` broadcasts ``participant-updated``."""
        if self.session is None:
            raise ProtocolError(ErrorCode.FORBIDDEN, "this request needs a session")
        self.session.meta = meta
        self.engine.changed(self.session)
        if announce and not self.session.hidden:
            self.broadcast(ParticipantUpdated(participant=self.engine.view(self.session)))

    def set_room_meta(self, meta: Any) -> PutRoom:
        """Replace the room's metadata in memory; return the write that stores it.

        Pass ``undo=ctx.room_meta_undo(previous)`` to ``persist`` to revert on failure.
        A room whose metadata someone changed is in use: if a visit made it, it is no
        longer removed when it empties.
        """
        self.room.meta = meta
        self.room.implicit = False
        return self.engine.room_record(self.room)

    def room_meta_undo(self, previous: Any) -> Callable[[], None]:
        """Return an ``undo`` that restores ``previous`` unless the metadata changed since."""
        room, current = self.room, self.room.meta

        def undo() -> None:
            if room.meta is current:
                room.meta = previous

        return undo

    def allocate_seq(self) -> int:
        """Reserve the room's next log sequence number."""
        self.room.next_seq += 1
        return self.room.next_seq

    def log_entry(self, seq: int, body: bytes, *, key: str | None = None) -> AppendLog:
        """Return the write that appends ``body`` as ``seq``; with the client's idempotency
        ``key``, the key is remembered with it (see ``seq_for_key``)."""
        if key is not None:
            self.room.pending_keys[key] = seq
        return AppendLog(room=self.room.name, seq=seq, at=self.now, body=body, key=key)

    def seq_for_key(self, key: str) -> tuple[int, float | None] | None:
        """Return the seq a post with idempotency ``key`` got in this room, and its time
        once committed (None: still on its way to the store); None for a new key."""
        committed = self.room.keys.get(key)
        if committed is not None:
            return committed
        pending = self.room.pending_keys.get(key)
        return None if pending is None else (pending, None)

    def persist(
        self,
        *writes: Any,
        then: Callable[[Context], None] | None = None,
        undo: Callable[[], None] | None = None,
    ) -> None:
        """Store ``writes`` in one transaction; call ``then`` with a fresh context after commit.

        If the commit fails, ``undo`` (if given) reverts what the handler changed in memory
        and the requester gets an ``internal`` error instead.
        """
        appends = [w for w in writes if isinstance(w, AppendLog)]
        log_seqs = [w.seq for w in appends]
        room = self.room
        window = self.engine.key_window
        later = self._later()

        def on_commit(now: float) -> list[Effect]:
            if log_seqs:
                room.last_seq = max(room.last_seq, *log_seqs)
            for write in appends:
                if write.key is not None:
                    room.remember_key(write.key, write.seq, write.at, window=window)
            if then is None:
                return []
            ctx = later(now)
            then(ctx)
            return ctx.effects

        def on_failure(exc: BaseException, now: float) -> list[Effect]:
            if undo is not None:
                undo()
            for write in appends:
                if write.key is not None and room.pending_keys.get(write.key) == write.seq:
                    del room.pending_keys[write.key]
            # A store may say which seq it holds last (several nodes: an append refused
            # because an earlier one failed); later appends continue from there.
            committed = getattr(exc, "committed_seq", None)
            if log_seqs and isinstance(committed, int):
                room.last_seq = room.next_seq = committed
            elif log_seqs and getattr(exc, "uncommitted", False):
                # Nothing of it was stored (the store says so): its seqs, and any taken
                # after them, are free again; appends still on their way before it keep
                # theirs. (Should it have been stored after all, the next append is
                # refused with the store's last seq, and the room continues from there.)
                room.next_seq = max(room.last_seq, min(log_seqs) - 1)
            code = getattr(exc, "code", None)
            ctx = later(now)
            ctx.error(code if isinstance(code, ErrorCode) else ErrorCode.INTERNAL,
                      getattr(exc, "public_message", None)
                      or "the store failed to save this; it was not applied",
                      retry_after=getattr(exc, "retry_after", None))
            return ctx.effects

        self.effects.append(Persist(tuple(writes), on_commit, on_failure))

    def query(
        self,
        *,
        after: int | None,
        before: int | None,
        limit: int,
        respond: Callable[[Context, list[LogEntry]], None],
    ) -> None:
        """Read a page of the room's log; ``respond`` gets a fresh context and the entries."""
        later = self._later()

        def on_entries(entries: list[Any], now: float) -> list[Effect]:
            ctx = later(now)
            respond(ctx, entries)
            return ctx.effects

        def on_failure(exc: BaseException, now: float) -> list[Effect]:
            ctx = later(now)
            ctx.error(ErrorCode.INTERNAL, "the store failed to read the history")
            return ctx.effects

        self.effects.append(Query(self.room.name, after, before, limit, on_entries, on_failure))

    def _later(self) -> Callable[[float], Context]:
        """Return a maker of fresh contexts of this request's room, session and ref.

        It holds those, not this context: a callback that held the context would hold its
        effects, which hold the callback, and the cycle would outlive the connection.
        """
        engine, room, session, ref, conn = self.engine, self.room, self.session, self.ref, \
            self.conn

        def later(now: float) -> Context:
            return Context(engine, room, session, ref, now, conn=conn)

        return later
