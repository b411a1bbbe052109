"""The trio server: applies the engine's effects to real connections and the store.

Theory of operation
-------------------
One TCP port. ``daemon.net.front`` parses each request head: plain HTTP (health, metrics)
is answered here; WebSocket upgrades to ``/v1/rooms/{room}`` and ``/v1/admin`` are accepted
by ``on_websocket`` and served by ``serve_connection`` as ``Connection`` objects, in the
connection's one task: it takes the batch of messages each read brought
(``daemon.net.transport.Transport.receive``; a ``daemon.net.websocket.WebSocket`` here),
decodes each and feeds the engine; the effects it gets back are applied in order, and what
the batch makes the daemon send is corked and leaves in one write per recipient when the
batch is done. The loop sees only the ``Transport`` interface, never a socket. A broadcast
is encoded and framed once per wire format, and the same bytes are written to every
recipient through its ``wire.OutputStream``: straight to the socket when it can take
them, otherwise into a bounded, ordered buffer that the connection's flusher drains. Too
much pending output (or none of it moving for ``send_timeout``) means the peer does not
read fast enough: it is closed with 4011, never waited for, so one slow consumer cannot
stall a room.

Durable effects go to the store's single writer task, which commits them in order and
runs their ``on_commit`` callbacks in that order from one task; the engine's
acknowledgements and broadcasts of a message therefore leave only after its commit.

One connection's failure never reaches another: every handler catches at its boundary,
logs once, and closes its own connection with a code that says why (1011 for our bugs).

Logging (logger ``daemon.server``): one info line per event that changes what the
daemon holds or whom it lets in: start (addresses, data directory), rooms created and
removed (the engine's facts, see ``daemon.effects``), kicks, join tokens issued (never a
token itself), refused tokens and hellos, rate-limit, slow-consumer and keepalive closes,
shutdown begun, and a last "stopped" line; never a line per message. Lines that clients
can cause at will go through a ``LogThrottle`` each. Every record carries its context in
``extra`` (``event``, and ``room``, ``session``, ``peer``, ``conn`` where they apply),
which ``daemon.logs.JsonFormatter`` writes out as fields.

Metrics (``daemon.metrics``): counters bumped where things happen, and three histograms
observed here: acknowledgement latency (a request's frame read, ``received_at``, to its
ok after the commit: ``_committed``), relay latency (read to written, for requests that
need no store write: ``apply``) and store batch sizes (``_batch_done``).

Queues, and what happens when each is full:
* a connection's output (``wire.OutputStream``): over ``outbound_queue`` writes waiting
  for the socket, or no progress for ``send_timeout``: closed with 4011;
* a connection's input: one read (64 KiB) at a time, handled before the next read, so
  TCP pushes back on that client alone;
* the store writer's queue (4096 jobs): the connection submitting waits, so a flood of
  writes slows its sender, not the room's readers;
* timers: one per disconnected session, so bounded by the sessions.

Limits on what one client may cost (each a ``Config`` field and a ``roomctl serve`` option):
connections per client address (counted by ``daemon.net.front.serve_tcp`` from accept to
close: one more gets a 429 and is closed before anything is read); the TLS handshake and
request head within ``head_timeout`` (``daemon.net.front``); an allowed ``Origin`` for
browsers (``on_websocket``, before accept); a valid hello within ``handshake_timeout``;
requests per second per connection after the hello (``daemon.net.ratelimit``:
``rate-limited``, then 1008); message size (1009, ``daemon.net.websocket``); and a pong to
each keepalive ping (one sweeper task, ``Daemon.keepalive``; 1011 when none comes).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote

import msgspec
import trio

from daemon import metrics, notify
from daemon.apps.api import App
from daemon.apps.chat import ChatApp
from daemon.cluster.node import ClusterNode
from daemon.cluster.setup import ClusterParts
from daemon.config import ADMIN_TOKEN_FILE, AdminTokenFile, Config, lock_data_dir
from daemon.core.access import Access
from daemon.core.effects import (
    AccessRefused,
    CancelTimer,
    Close,
    ConnId,
    Effect,
    Fact,
    ParticipantKicked,
    Persist,
    Query,
    RoomCreated,
    RoomRemoved,
    Send,
    StartTimer,
    TokenIssued,
)
from daemon.core.engine import Engine
from daemon.logs import LogThrottle
from daemon.net import web, wire
from daemon.net.front import (
    FrontLimits,
    HttpRequest,
    HttpResponse,
    Upgrade,
    error_body,
    handle_connection,
    peer_of,
    refuse_connection,
    serve_tcp,
)
from daemon.net.httpapi import HttpApi
from daemon.net.origins import origin_allowed
from daemon.net.ratelimit import RateLimit, RequestLimiter, Verdict
from daemon.net.transport import Closed, Sink, Transport
from daemon.store import Store, StoreWriter
from daemon.store.writer import OrderedWriter
from daemon.tokens import Authority, ensure_join_secret
from protocol import (
    CloseCode,
    Codec,
    ErrorCode,
    ProtocolError,
    WireFormat,
    local,
    negotiate,
    relay,
)
from protocol import admin as adm
from protocol import http as http_api
from protocol.messages import ConnectionLimits, Error, Hello, Request, RoomInfo

log = logging.getLogger(__name__)

VERSION = "0.1.0"
ROOM_PATH = local.ROOM_PATH
ACCESS_PATH = re.compile(ROOM_PATH.pattern.removesuffix("$") + "/access$")
ADMIN_PATH = local.ADMIN_PATH


def _address(peer: tuple[str, int]) -> str:
    host, port = peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Connection:
    """One client connection being served: its transport, wire format and limits."""

    __slots__ = ("bad_frames", "close_code", "close_reason", "detached", "flush_before_close",
                 "format", "id", "inbox", "inbox_at", "is_admin", "limiter", "max_pending",
                 "on_close", "out", "peer", "reader_scope", "room", "session", "transport")

    def __init__(self, conn_id: ConnId, transport: Transport, fmt: WireFormat,
                 peer: tuple[str, int], max_pending: int, *, is_admin: bool = False,
                 on_close: Callable[[Connection], None] | None = None) -> None:
        self.id = conn_id
        self.transport = transport
        self.out: Sink = transport.out
        self.format = fmt
        self.peer = peer
        self.max_pending = max_pending
        self.is_admin = is_admin
        self.on_close = on_close
        self.reader_scope = trio.CancelScope()  # the serving task's; cancelled to close
        self.close_code: int | None = None
        self.close_reason = ""
        self.flush_before_close = True
        self.bad_frames = 0
        self.detached = False  # the engine was told the connection is gone
        self.limiter: RequestLimiter | None = None  # None: not rate limited (or not welcomed)
        # The messages of the batch being handled, and how many of them are done.
        self.inbox: Sequence[str | bytes] = ()
        self.inbox_at = 0
        # Where its session is, once welcomed: the log still names them after the engine
        # has let go of the connection (a close detaches it at once).
        self.room: str | None = None
        self.session: str | None = None

    def enqueue(self, payload: bytes) -> None:
        """Write one framed message; too much unwritten output closes it as a slow consumer."""
        if self.close_code is not None:
            return
        self.out.write(payload)
        self.check_backlog()

    def check_backlog(self) -> None:
        """Close the connection as a slow consumer if too many writes wait for its socket."""
        if self.out.pending > self.max_pending:
            self.close(CloseCode.SLOW_CONSUMER, "outbound queue overflowed", flush=False)

    def stalled(self) -> None:
        """The output made no progress for the send timeout: the peer stopped reading."""
        self.close(CloseCode.SLOW_CONSUMER, "the peer stopped reading", flush=False)

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Ask the connection's task to close with ``code``.

        With ``flush`` the frames already queued are sent first; without, they are dropped
        (but a frame already half written is always finished: a close frame in the middle
        of a frame would garble both).
        """
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.flush_before_close = flush
        self.reader_scope.cancel()
        if self.on_close is not None:
            self.on_close(self)


class Daemon:
    """The running server: engine, store writer, connections and timers."""

    def __init__(self, config: Config, apps: Sequence[App[Any, Any]], nursery: trio.Nursery,
                 writer: OrderedWriter, admin_token: AdminTokenFile) -> None:
        self.config = config
        self.nursery = nursery
        self.writer = writer
        # Several nodes (daemon.cluster): set by _serve when config.redis is given.
        self.cluster: ClusterNode | None = None
        self._admin_token = admin_token
        self.authority = Authority(ensure_join_secret(config.data_dir),
                                   admin_token=lambda: self.admin_token)
        chat = next((app for app in apps if isinstance(app, ChatApp)), None)
        limits = ConnectionLimits(
            rate=config.rate_limit, burst=config.rate_burst if config.rate_limit else 0,
            max_frame_bytes=config.max_frame_bytes,
            max_text=chat.max_text if chat is not None else config.max_text,
            max_name=chat.max_name if chat is not None else config.max_name)
        self.engine = Engine(apps, grace=config.grace, auto_create=config.auto_create,
                             server=f"roomctl/{VERSION}", require_tokens=config.require_tokens,
                             max_rooms=config.max_rooms,
                             max_participants=config.max_participants,
                             empty_timeout=config.empty_timeout, limits=limits,
                             sign_token=self.authority.issue)
        # Relays are read as forwarding types: their payload is passed on as sent.
        room_types = relay.forwarding(self.engine.request_types())
        admin_types: tuple[type[Request], ...] = (Hello, *adm.ADMIN_REQUESTS)
        self.room_codecs = {f: Codec(f, room_types, max_frame_bytes=config.max_frame_bytes)
                            for f in WireFormat}
        self.admin_codecs = {f: Codec(f, admin_types, max_frame_bytes=config.max_frame_bytes)
                             for f in WireFormat}
        self.connections: dict[ConnId, Connection] = {}
        # Streams corked while the callbacks of one committed batch run: each gets the
        # batch's frames in one write (see _send and _batch_done).
        self._corked: list[Connection] | None = None
        writer.on_batch_done = self._batch_done
        self.timers: dict[tuple[str, str], trio.CancelScope] = {}
        self.connection_closed = trio.Event()  # renewed by shutdown() while it waits
        self._flush_due: trio.Event | None = None  # set: flush_corked has work (see _end_batch)
        self._next_conn = 0
        self._clock_offset = time.time() - trio.current_time()
        self.started_at = self.now()
        self.counters = metrics.new_counters()
        self.histograms = metrics.new_histograms()
        self.metrics = metrics.Metrics(metrics.DaemonCollector(
            self.counters, self.histograms, self._gauges))
        # When the frame being handled was read (trio clock), set by _receive and taken by
        # apply: nothing awaits between the two, so no other connection's frame can come
        # in between. None while effects come from a commit or a timer.
        self.received_at: float | None = None
        self._batch_size = 0  # jobs of the store batch whose callbacks are running
        self.tcp_connections = 0  # open TCP connections, plain HTTP and WebSocket alike
        # One throttle per kind of line that clients can cause at will (daemon.logs).
        started = trio.current_time()
        self.refusals = LogThrottle(log, started)  # tokens, hellos, origins, addresses
        self.closes = LogThrottle(log, started)  # rate limit, slow consumer, keepalive
        self.visits = LogThrottle(log, started)  # rooms made by a visit, and their removal

    @property
    def admin_token(self) -> str:
        """The admin token as its file holds it now (it can be rotated while we run)."""
        return self._admin_token.current()

    def now(self) -> float:
        """Wall-clock seconds, advancing with trio's clock (so autojump tests see time pass)."""
        return trio.current_time() + self._clock_offset

    # --- applying effects ------------------------------------------------------------------

    async def apply(self, effects: Sequence[Effect]) -> None:
        """Apply effects in order, then wait while the store's queue is full.

        The effects of one input are applied at once, with no checkpoint among them (a
        checkpoint would let another task's effects, a broadcast, overtake a welcome).
        The wait after them is the backpressure of a connection's requests on the store:
        its next frame is not read until the store has room.
        """
        received, self.received_at = self.received_at, None
        self.apply_now(effects, received=received)
        await self.writer.wait_for_room()

    def apply_now(self, effects: Sequence[Effect], *, received: float | None = None) -> None:
        """Apply effects in order, without waiting (callbacks and timers use this alone).

        Persists go to the store writer's one ordered queue (``submit_nowait``), so they
        commit in the order they were made, those made by commit callbacks included.
        ``received``: when the frame that caused them was read, for the latency metrics.
        """
        persisted = sent = False
        for effect in effects:
            if isinstance(effect, Send):
                self._send(effect)
                sent = True
            elif isinstance(effect, Close):
                conn = self.connections.get(effect.conn)
                if conn is not None:
                    conn.close(effect.code, effect.reason)
            elif isinstance(effect, Persist):
                self.writer.submit_nowait(effect.writes, self._committed(effect, received))
                persisted = True
            elif isinstance(effect, Query):
                self.nursery.start_soon(self._query, effect)
            elif isinstance(effect, StartTimer):
                self._start_timer(effect)
            elif isinstance(effect, CancelTimer):
                scope = self.timers.pop(effect.key, None)
                if scope is not None:
                    scope.cancel()
            else:
                self._note(effect)
        if received is not None and sent and not persisted:
            self.histograms["relay_latency_seconds"].observe(trio.current_time() - received)
        if self.engine.track_sessions:
            # Several nodes: a session's record follows it to Redis, so that another node
            # can take the room over with it (not acknowledged data: nobody waits for it).
            writes = self.engine.session_writes()
            if writes:
                self.writer.submit_nowait(writes, self._session_stored)

    @staticmethod
    def _session_stored(exc: BaseException | None) -> None:
        if exc is not None:
            log.debug("a session record was not stored: %s", exc)

    def _note(self, fact: Fact) -> None:
        """Log (and count) what the engine reports having done."""
        now = trio.current_time()
        if isinstance(fact, RoomCreated):
            self.counters["rooms_created"] += 1
            if fact.implicit:
                self.visits.info(now, "room %r created by a visit", fact.room,
                                 extra={"event": "room-created", "room": fact.room,
                                        "implicit": True})
            else:
                log.info("room %r created", fact.room,
                         extra={"event": "room-created", "room": fact.room, "implicit": False})
        elif isinstance(fact, RoomRemoved):
            if fact.reason == "expired":
                self.counters["rooms_expired"] += 1
                self.visits.info(now, "room %r removed: made by a visit, never used, and empty",
                                 fact.room, extra={"event": "room-expired", "room": fact.room})
            else:
                log.info("room %r deleted", fact.room,
                         extra={"event": "room-deleted", "room": fact.room})
        elif isinstance(fact, ParticipantKicked):
            log.info("participant %s kicked from room %r", fact.session, fact.room,
                     extra={"event": "kicked", "room": fact.room, "session": fact.session})
        elif isinstance(fact, TokenIssued):
            self.counters["tokens_issued"] += 1
            grants = ",".join(fact.grants)
            log.info("issued a join token for room %r to identity %r (grants %s, valid %s)",
                     fact.room, fact.identity, grants, _span(fact.ttl),
                     extra={"event": "token-issued", "room": fact.room,
                            "identity": fact.identity, "grants": grants,
                            "ttl": fact.ttl})
        elif isinstance(fact, AccessRefused):
            self.counters["refused_hellos"] += 1
            conn = self.connections.get(fact.conn)
            peer = _address(conn.peer) if conn is not None else "?"
            self.refusals.info(now, "refused a hello to room %r from %s: %s", fact.room, peer,
                               fact.message, extra={"event": "hello-refused", "room": fact.room,
                                                    "peer": peer, "conn": fact.conn,
                                                    "code": str(fact.code)})

    def _committed(self, effect: Persist, received: float | None) -> Any:
        def on_done(exc: BaseException | None) -> None:
            if self._corked is None:
                self._corked = []
            self._batch_size += 1
            if exc is None:
                if effect.on_commit is not None:
                    self.apply_now(effect.on_commit(self.now()))
                if received is not None:
                    self.histograms["ack_latency_seconds"].observe(
                        trio.current_time() - received)
            else:
                self.counters["store_failures"] += 1
                log.error("store write failed: %s", exc, extra={"event": "store-failed"})
                if effect.on_failure is not None:
                    self.apply_now(effect.on_failure(exc, self.now()))
        return on_done

    def _send(self, effect: Send) -> None:
        # Encoded and framed once per wire format; every recipient queues the same bytes.
        framed: dict[WireFormat, bytes] = {}
        for conn_id in effect.to:
            conn = self.connections.get(conn_id)
            if conn is None:
                continue
            payload = framed.get(conn.format)
            if payload is None:
                data = self.room_codecs[conn.format].encode(effect.frame)
                payload = framed[conn.format] = wire.frame(data, binary=conn.format.binary)
            if self._corked is not None and not conn.out.corked:
                conn.out.cork()
                self._corked.append(conn)
            conn.enqueue(payload)
        self.counters["frames_sent"] += len(effect.to)

    def _batch_done(self) -> None:
        if self._batch_size:
            self.histograms["store_batch_size"].observe(self._batch_size)
            self._batch_size = 0
        corked, self._corked = self._corked, None
        for conn in corked or ():
            conn.out.uncork()
            conn.check_backlog()

    async def _query(self, effect: Query) -> None:
        try:
            entries = await self.writer.read_log(effect.room, after=effect.after,
                                                 before=effect.before, limit=effect.limit)
        except Exception as exc:
            log.exception("reading the log of room %r failed", effect.room)
            if effect.on_failure is not None:
                self.apply_now(effect.on_failure(exc, self.now()))
            return
        self.apply_now(effect.respond(entries, self.now()))

    def _start_timer(self, effect: StartTimer) -> None:
        old = self.timers.pop(effect.key, None)
        if old is not None:
            old.cancel()
        scope = trio.CancelScope(deadline=effect.deadline - self._clock_offset)
        self.timers[effect.key] = scope

        async def fire() -> None:
            with scope:
                await trio.sleep_forever()
            # Reaching the deadline leaves the scope registered; CancelTimer removed it.
            if self.timers.get(effect.key) is scope:
                del self.timers[effect.key]
                self.apply_now(self.engine.timer_fired(effect.key, self.now()))

        self.nursery.start_soon(fire)

    # --- HTTP ------------------------------------------------------------------------------

    async def on_http(self, request: HttpRequest) -> HttpResponse:
        answer = await self.api.respond(request)
        if answer is not None:
            return answer
        page = web.respond(request, self.room_infos)
        if page is not None:
            return page
        if request.method not in ("GET", "HEAD"):
            return _error(405, "method not allowed", headers=(("Allow", "GET, HEAD"),))
        if request.path == "/healthz":
            health = http_api.Health(status="ok", version=VERSION,
                                     rooms=len(self.room_infos()),
                                     connections=len(self.connections))
            if self.cluster is not None:
                health = msgspec.structs.replace(health, node=self.cluster.node, redis="ok")
                if not self.cluster.healthy:
                    # Posts get "unavailable" meanwhile: a balancer should send clients
                    # elsewhere. The node reconnects by itself when Redis is back.
                    health = msgspec.structs.replace(health, status="degraded",
                                                     redis="unreachable")
                    return _json(503, health, headers=(("Retry-After", "1"),))
            return _json(200, health)
        if request.path == "/metrics":
            body, content_type = self.metrics.exposition(request.headers.get("accept", ""))
            return HttpResponse(200, body, content_type=content_type)
        access = ACCESS_PATH.match(request.path)
        if access is not None:
            return self._room_access(request, access.group(1))
        if ROOM_PATH.match(request.path) or request.path == ADMIN_PATH:
            return _error(426, "this endpoint speaks WebSocket",
                          headers=(("Upgrade", "websocket"),))
        return _error(404, "not found")

    @functools.cached_property
    def api(self) -> HttpApi:
        """The HTTP API (``/v1/...``), served through ``serve_client``."""
        return HttpApi(self.serve_client, self.authority.check, rate_limit=self.rate_limit,
                       keepalive=self.config.ping_interval)

    async def serve_client(self, transport: Transport, fmt: WireFormat, peer: tuple[str, int],
                           *, room: str | None) -> None:
        """Serve one client connection of ``room`` (None: the admin endpoint) where it is
        served: the one entry of the HTTP API's connections into rooms.

        On one node that is here (``serve_connection``); with several, the room's owner
        serves it (``daemon.cluster.node.ClusterNode.serve_client``), so this is where a
        cluster routes it. Returns when the connection has ended.
        """
        if room is not None and self.cluster is not None:
            await self.cluster.serve_client(transport, fmt, peer, room)
        else:
            await self.serve_connection(transport, fmt, peer, room=room)

    def room_infos(self) -> list[RoomInfo]:
        """Every room, for the lobby and health: this node's, or the cluster's."""
        if self.cluster is not None:
            return self.cluster.listing
        return self.engine.room_infos()

    def _gauges(self) -> metrics.Gauges:
        admin = sum(1 for conn in self.connections.values() if conn.is_admin)
        websockets = len(self.connections)
        return metrics.Gauges(
            rooms=self.engine.room_count(),
            participants=self.engine.participant_count(),
            sessions=self.engine.session_count(),
            connections={"room": websockets - admin, "admin": admin,
                         "http": max(self.tcp_connections - websockets, 0)},
            start_time_seconds=round(self.started_at, 3), version=VERSION,
            node=self.cluster.node if self.cluster is not None else self.config.node_name())

    def status(self) -> str:
        """One line for the service manager: rooms, participants and connections now."""
        rooms, connections = self.engine.room_count(), len(self.connections)
        participants = self.engine.participant_count()
        return (f"{rooms} room{'s' * (rooms != 1)}, {participants} "
                f"participant{'s' * (participants != 1)}, {connections} "
                f"connection{'s' * (connections != 1)}")

    def _room_access(self, request: HttpRequest, room: str) -> HttpResponse:
        """Answer whether a hello to ``room`` would be let in with the request's token.

        The token comes as ``Authorization: Bearer TOKEN`` (never in the URL, where
        proxies and logs keep it). The room page asks this before it shows its join form.
        The answer says no more than a hello would: room limits are not looked at.
        """
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else ""
        private = self.engine.is_private(room)
        try:
            self.engine.check_access(room, self.authority.check(token or None))
        except ProtocolError as exc:
            if exc.code == ErrorCode.UNAUTHORIZED and token:
                self._refused_token(request.peer, exc.message)
            answer = http_api.RoomAccess(room=room, private=private, admitted=False,
                                         code=exc.code, message=exc.message)
        else:
            answer = http_api.RoomAccess(room=room, private=private, admitted=True)
        return _json(200, answer, headers=(("Cache-Control", "no-store"),))

    def _refused_token(self, peer: tuple[str, int], reason: str) -> None:
        self.counters["refused_tokens"] += 1
        where = _address(peer)
        self.refusals.info(trio.current_time(), "refused a token from %s: %s", where, reason,
                           extra={"event": "token-refused", "peer": where})

    # --- WebSocket -------------------------------------------------------------------------

    def on_websocket(self, upgrade: Upgrade, request: HttpRequest) -> Awaitable[None] | None:
        """Refuse an upgrade, or accept it (a room or the admin endpoint) and return the
        coroutine that serves it."""
        match = ROOM_PATH.match(request.path)
        is_admin = request.path == ADMIN_PATH
        if match is None and not is_admin:
            upgrade.reject(404, b'{"error":"not found"}')
            return None
        origin = request.headers.get("origin")
        if origin is not None and not origin_allowed(origin, request.headers.get("host"),
                                                     self.config.allowed_origins):
            # Before accept: a page from another site must not get a session at all.
            self.counters["origins_refused"] += 1
            where = _address(request.peer)
            self.refusals.info(trio.current_time(), "refused a WebSocket from origin %r (peer %s)",
                               origin[:100], where, extra={"event": "origin-refused",
                                                           "peer": where})
            upgrade.reject(403, b'{"error":"origin not allowed"}')
            return None
        offered = upgrade.proposed_subprotocols
        fmt = negotiate(offered)
        if fmt is None:
            upgrade.reject(400, b'{"error":"unsupported subprotocol"}')
            return None
        ws = upgrade.accept(fmt.value if offered else None)
        room = None if match is None else unquote(match.group(1))
        return self.serve_client(ws, fmt, request.peer, room=room)

    async def serve_connection(self, transport: Transport, fmt: WireFormat,
                               peer: tuple[str, int], *, room: str | None) -> None:
        """Serve one connection until it ends, then close it; ``room`` None is the admin
        endpoint.

        The transport is a WebSocket of this process, or any other ``Transport`` (such as
        a connection whose socket lives on another node). Returns when the connection has
        ended and is closed; nothing but cancellation propagates out.
        """
        self._next_conn += 1
        conn = Connection(self._next_conn, transport, fmt, peer, self.config.outbound_queue,
                          is_admin=room is None, on_close=self._detach)
        out = conn.out
        out.stall_timeout = self.config.send_timeout
        out.on_stall = conn.stalled
        self.connections[conn.id] = conn
        self.counters["connections_accepted"] += 1
        try:
            with conn.reader_scope:
                try:
                    if room is None:
                        await self._serve_admin(conn)
                    elif await self._enter_room(conn, room):
                        # The room's requests, here rather than in a helper: an idle
                        # connection waits in this frame, and every coroutine on its stack
                        # is memory it holds all that time.
                        codec = self.room_codecs[conn.format]
                        while True:
                            frame = self._next_frame(conn, codec)
                            if frame is None:
                                self._end_batch(conn)
                                self._start_batch(conn, await transport.receive())
                            elif conn.limiter is None or self._within_rate(conn, conn.limiter,
                                                                          frame):
                                await self.apply(self.engine.request(conn.id, frame,
                                                                     self.now()))
                except Closed:
                    pass
        except Exception:
            log.exception("connection %d from %s failed", conn.id, conn.peer)
            conn.close_code = conn.close_code or CloseCode.INTERNAL_ERROR
            conn.close_reason = conn.close_reason or "internal error"
            conn.flush_before_close = False
        finally:
            self._end_batch(conn)  # what a batch cut short corked leaves now
            self._detach(conn)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.config.close_timeout
                await self._finish(conn)
            # Nothing may keep the connection alive now: freed by reference counting alone.
            out.on_stall = conn.on_close = None
            del self.connections[conn.id]
            self.connection_closed.set()

    def _detach(self, conn: Connection) -> None:
        """Tell the engine the connection is gone (once), so its room learns at once."""
        if not conn.detached:
            conn.detached = True
            if not conn.is_admin:
                self.apply_now(self.engine.disconnect(conn.id, self.now()))

    async def _finish(self, conn: Connection) -> None:
        """Close the connection: after what is queued, or at once for a slow consumer."""
        if conn.close_code == CloseCode.SLOW_CONSUMER:
            self.counters["slow_consumer_closes"] += 1
            self._log_close(conn, "slow-consumer")
        if not conn.flush_before_close:
            conn.out.discard_pending()
        await conn.transport.aclose(conn.close_code or CloseCode.NORMAL, conn.close_reason)

    async def _receive(self, conn: Connection, codec: Codec) -> Any:
        """Return the next valid frame; answers bad ones and closes after too many."""
        while (frame := self._next_frame(conn, codec)) is None:
            self._end_batch(conn)
            self._start_batch(conn, await conn.transport.receive())
        return frame

    # Messages come in batches, all that one read brought. What handling a batch sends is
    # corked (see _send) and leaves in one write per recipient once the batch is done,
    # before the connection waits for more.

    def _start_batch(self, conn: Connection, batch: Sequence[str | bytes]) -> None:
        conn.inbox, conn.inbox_at = batch, 0
        self.counters["frames_received"] += len(batch)
        self.received_at = trio.current_time()
        if self._corked is None:
            self._corked = []

    def _end_batch(self, conn: Connection) -> None:
        conn.inbox, conn.inbox_at = (), 0
        corked = self._corked
        if corked is not None and len(corked) > 1 and self._flush_due is not None:
            # Output for many connections (a join, a broadcast) stays corked until the
            # flusher's turn, in the scheduler's next pass: the batches of the other
            # connections that are ready in this pass likely write to the same peers, and
            # each peer then gets one write for all of them (a join storm: one per pass,
            # not one per join). A batch for one recipient (a relay) leaves at once.
            self._flush_due.set()
        else:
            self._batch_done()

    async def flush_corked(self) -> None:
        """Uncork what batches with many recipients left corked, once per scheduler pass.

        One task for the daemon; runs until cancelled.
        """
        while True:
            self._flush_due = trio.Event()
            await self._flush_due.wait()
            self._batch_done()

    def _next_frame(self, conn: Connection, codec: Codec) -> Any:
        """Return the next valid frame of the batch in hand, None once it is done."""
        inbox = conn.inbox
        while conn.inbox_at < len(inbox):
            data = inbox[conn.inbox_at]
            conn.inbox_at += 1
            try:
                return codec.decode(data)
            except ProtocolError as exc:
                self._reject(conn, codec.ref_of(data), exc)
        return None

    def _reject(self, conn: Connection, ref: str | None, exc: ProtocolError) -> None:
        self.counters["bad_frames"] += 1
        self.apply_now([Send((conn.id,), Error(ref=ref, code=exc.code, message=exc.message))])
        conn.bad_frames += 1
        if conn.bad_frames > self.config.max_bad_frames:
            conn.close(CloseCode.POLICY_VIOLATION, "too many bad frames")

    async def _hello(self, conn: Connection, codec: Codec, deadline: float) -> Hello | None:
        with trio.move_on_at(deadline):
            while True:
                frame = await self._receive(conn, codec)
                if isinstance(frame, Hello):
                    return frame
                self._reject(conn, frame.ref, ProtocolError(ErrorCode.BAD_REQUEST,
                                                            "the first frame must be hello"))
        conn.close(CloseCode.HELLO_TIMEOUT, "no hello in time")
        return None

    async def _enter_room(self, conn: Connection, room: str) -> bool:
        """Take hellos until one is welcomed; return False if the connection was closed."""
        codec = self.room_codecs[conn.format]
        deadline = trio.current_time() + self.config.handshake_timeout
        while not self.engine.welcomed(conn.id):
            hello = await self._hello(conn, codec, deadline)
            if hello is None:
                return False
            access = self._access(conn, hello)
            if access is None:
                return False
            await self.apply(self.engine.hello(conn.id, room, hello, self.now(), access))
            if conn.close_code is not None:
                return False
        conn.room, conn.session = self.engine.session_of(conn.id) or (room, None)
        conn.limiter = self._limiter(access)
        return True

    async def _serve_admin(self, conn: Connection) -> None:
        codec = self.admin_codecs[conn.format]
        deadline = trio.current_time() + self.config.handshake_timeout
        hello = await self._hello(conn, codec, deadline)
        if hello is None:
            return
        access = self._access(conn, hello)
        if access is None:
            return
        self.apply_now(self.engine.admin_hello(conn.id, hello, self.now(), access))
        if conn.close_code is not None:
            return
        conn.limiter = self._limiter(access)
        while True:
            frame = await self._receive(conn, codec)
            if conn.limiter is not None and not self._within_rate(conn, conn.limiter, frame):
                continue
            if self.cluster is not None and await self.cluster.admin_request(
                    conn.transport, conn.format, frame, hello.token, access):
                continue  # answered from the cluster, or by the room's owner
            await self.apply(self.engine.admin(conn.id, frame, self.now()))

    def admin_call(self, transport: Transport, fmt: WireFormat, token: str | None,
                   data: str | bytes) -> None:
        """Run one admin request an edge forwarded (several nodes); replies go to
        ``transport``, the way back to the client.

        The request runs on a connection of its own, welcomed as the edge's was (the token
        is checked again: the secrets are the cluster's), kept until the store has run
        what the request persisted, so that a reply sent after a commit still finds it.
        """
        self._next_conn += 1
        conn = Connection(self._next_conn, transport, fmt, ("", 0), self.config.outbound_queue,
                          is_admin=True)
        self.connections[conn.id] = conn
        codec = self.admin_codecs[fmt]
        try:
            access = self.authority.check(token)
            frame = codec.decode(data)
        except ProtocolError as exc:
            self.apply_now([Send((conn.id,), Error(ref=codec.ref_of(data), code=exc.code,
                                                   message=exc.message))])
        else:
            welcome = self.engine.admin_hello(conn.id, Hello(token=token), self.now(), access)
            if self.engine.welcomed(conn.id) and isinstance(frame, Request):
                self.apply_now(self.engine.admin(conn.id, frame, self.now()))
            else:  # refused: say why, as the welcome would have been said, to the request
                self.apply_now([e for e in welcome if not isinstance(e, Close)])

        async def done() -> None:
            with trio.move_on_after(self.config.shutdown_timeout + 5):
                await self.writer.flush()
            self.engine.disconnect(conn.id, self.now())
            self.connections.pop(conn.id, None)

        self.nursery.start_soon(done)

    def _access(self, conn: Connection, hello: Hello) -> Access | None:
        """Return what the hello's token proves; None after refusing a bad token (4001)."""
        try:
            return self.authority.check(hello.token)
        except ProtocolError as exc:
            self._refused_token(conn.peer, exc.message)
            self.apply_now([Send((conn.id,), Error(ref=hello.ref, code=exc.code,
                                                   message=exc.message))])
            conn.close(CloseCode.UNAUTHORIZED, exc.message[:120])
            return None

    # --- limits ----------------------------------------------------------------------------

    @functools.cached_property
    def rate_limit(self) -> RateLimit:
        """The per-connection request limit the config asks for."""
        config = self.config
        return RateLimit(rate=config.rate_limit, burst=config.rate_burst,
                         max_refused=config.max_rate_limited)

    def _limiter(self, access: Access | None) -> RequestLimiter | None:
        """Return a welcomed connection's rate limiter; None when it is not limited."""
        limit = self.rate_limit
        if not limit.enabled or (access is not None and access.is_admin):
            return None
        return RequestLimiter(limit, trio.current_time())

    def _within_rate(self, conn: Connection, limiter: RequestLimiter, frame: Request) -> bool:
        """Return whether ``frame`` may run; otherwise answer it, or close a persistent abuser."""
        verdict = limiter.check(trio.current_time())
        if verdict is Verdict.ALLOW:
            return True
        self.counters["rate_limited"] += 1
        limit = self.rate_limit
        retry_after = math.ceil(limiter.retry_after() * 100) / 100
        self.apply_now([Send((conn.id,), Error(
            ref=frame.ref, code=ErrorCode.RATE_LIMITED, retry_after=retry_after,
            message=f"over {limit.rate:g} requests per second (bursts of {limit.burst}); "
                    f"retry in {retry_after:.2f} s"))])
        if verdict is Verdict.CLOSE:
            self.counters["rate_limit_closes"] += 1
            conn.close(CloseCode.POLICY_VIOLATION, "too many requests")
            self._log_close(conn, "rate-limit")
        return False

    async def keepalive(self) -> None:
        """Ping every WebSocket each ping_interval; close those that stop answering (1011).

        One task for all connections, waking a few times per interval; runs until cancelled.
        """
        interval, timeout = self.config.ping_interval, self.config.ping_timeout
        period = max(0.02, min(interval, timeout) / 4)
        while True:
            await trio.sleep(period)
            self._sweep(trio.current_time(), interval, timeout)

    def _sweep(self, now: float, interval: float, timeout: float) -> None:
        # Apart from keepalive's loop: a loop variable left in that frame would keep the
        # last connection alive (and its socket's memory) until the next sweep.
        for conn in list(self.connections.values()):
            if conn.close_code is None and not conn.transport.keepalive(now, interval, timeout):
                self.counters["ping_timeouts"] += 1
                conn.close(CloseCode.INTERNAL_ERROR,
                           f"keepalive ping timeout: no pong in {timeout:g} s", flush=False)
                self._log_close(conn, "ping-timeout")

    _CLOSE_REASONS = {
        "rate-limit": "kept sending over the rate limit (1008)",
        "slow-consumer": "too slow reading what it is sent (4011)",
        "ping-timeout": "no answer to a keepalive ping (1011)",
    }

    def _log_close(self, conn: Connection, why: str) -> None:
        """Log (throttled) that the daemon closed ``conn`` for ``why``, a _CLOSE_REASONS key."""
        where = _address(conn.peer)
        self.closes.info(trio.current_time(), "closed connection %d from %s%s: %s", conn.id,
                         where, f" in room {conn.room!r}" if conn.room else "",
                         self._CLOSE_REASONS[why],
                         extra={"event": f"closed-{why}", "conn": conn.id, "peer": where,
                                "room": conn.room, "session": conn.session})

    # --- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Close every client with 1001 and wait for them, bounded by the shutdown timeout."""
        for conn in list(self.connections.values()):
            conn.close(CloseCode.GOING_AWAY, "the daemon is shutting down")
        with trio.move_on_after(self.config.shutdown_timeout):
            while self.connections:
                self.connection_closed = trio.Event()
                await self.connection_closed.wait()
            await self.api.streams_ended()  # each says why it ends and ends whole


_json_encode = msgspec.json.Encoder().encode


def _span(seconds: float) -> str:
    """Return a duration as people write it: 90 d, 12 h, 10 min, 45 s."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _json(status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, _json_encode(body) + b"\n", headers=headers)


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
           ) -> HttpResponse:
    return HttpResponse(status, error_body(status, message), headers=headers)


async def serve(
    config: Config,
    apps: Sequence[App[Any, Any]] | None = None,
    *,
    notifier: notify.Notifier | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until cancelled; ``task_status.started`` gets the bound (host, port).

    Use it as ``host, port = await nursery.start(daemon.serve, config, [apps...])`` (trio's
    ``Nursery.start`` takes no keyword arguments for the task, so ``apps`` is positional).
    Without ``apps`` the built-in chat app is installed, with the config's text and name
    limits. On cancellation it stops accepting, closes every client with 1001, and flushes
    the store before returning. With a ``notifier`` (``daemon.notify``, as ``roomctl
    serve`` makes from NOTIFY_SOCKET) it tells systemd when it is ready, how it is doing
    and when it stops; pass it with ``functools.partial``. Raises OSError when the address
    cannot be bound, the data directory is unusable, or the TLS certificate or key cannot
    be used (``daemon.tls.TlsSetupError``, whose message is one line).
    """
    if apps is None:
        from daemon.apps.loader import load_apps

        apps = load_apps(config.apps, config=config)
    tls: ssl.SSLContext | None = None
    if config.tls_cert is not None or config.tls_key is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise ValueError("TLS needs both a certificate and a key")
        from daemon.net.tls import server_context

        tls = server_context(config.tls_cert, config.tls_key)
    lock = None if config.memory else lock_data_dir(config.data_dir)
    try:
        if config.redis is not None:
            from daemon.cluster.setup import open_cluster

            async with open_cluster(config, VERSION) as cluster:
                admin_token = AdminTokenFile(config.data_dir)
                await _serve(config, apps, cluster.writer, admin_token, tls, notifier,
                             cluster=cluster, task_status=task_status)
        else:
            admin_token = AdminTokenFile(config.data_dir)
            store = await trio.to_thread.run_sync(Store.open, config.db_path)
            await _serve(config, apps, StoreWriter(store), admin_token, tls, notifier,
                         task_status=task_status)
    finally:
        if lock is not None:
            lock.close()


async def _serve(
    config: Config,
    apps: Sequence[App[Any, Any]],
    writer: OrderedWriter,
    admin_token: AdminTokenFile,
    tls: ssl.SSLContext | None,
    notifier: notify.Notifier | None,
    *,
    cluster: ClusterParts | None = None,
    task_status: trio.TaskStatus[tuple[str, int]],
) -> None:
    # Connections and the store writer must outlive the listener: on cancellation the
    # listener stops at once, clients get a 1001 close handshake (their readers still
    # running), and the last acknowledged writes commit. Both run shielded and are
    # stopped explicitly, in that order, at the end.
    writer_scope = trio.CancelScope(shield=True)
    handler_scope = trio.CancelScope(shield=True)

    async def run_writer(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with writer_scope:
            await writer.run(task_status=task_status)

    async def run_handlers(
        *, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with handler_scope:
            async with trio.open_nursery() as handlers:
                task_status.started(handlers)
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(run_writer)
        handlers: trio.Nursery = await nursery.start(run_handlers)
        try:
            daemon = Daemon(config, apps, handlers, writer, admin_token)
        except BaseException:
            # The shielded tasks would otherwise keep this nursery open for ever.
            handler_scope.cancel()
            writer_scope.cancel()
            raise
        listening = False
        node: ClusterNode | None = None
        try:
            if cluster is not None:
                node = daemon.cluster = ClusterNode(daemon, cluster.redis, cluster.writer,
                                                    cluster.ownership, cluster.nodes,
                                                    outbound_queue=config.outbound_queue,
                                                    config=config,
                                                    lease_wait=2 * config.redis_lease + 1)
                cluster.writer.on_fenced = node.fenced
                daemon.engine.track_sessions = True
                await handlers.start(node.run)
            now = daemon.now()
            stored = await writer.load_rooms(keys_since=now - daemon.engine.key_window)
            daemon.apply_now(daemon.engine.restore(stored, now))
            limits = FrontLimits(max_head_bytes=config.max_head_bytes,
                                 head_timeout=config.head_timeout,
                                 max_message_size=config.max_frame_bytes)
            handle_client = functools.partial(
                handle_connection, on_http=daemon.on_http, on_websocket=daemon.on_websocket,
                limits=limits, tls=tls, flushers=handlers)

            async def refuse(stream: trio.SocketStream) -> None:
                daemon.counters["address_limit_refusals"] += 1
                address = peer_of(stream)[0]
                daemon.refusals.info(trio.current_time(),
                                     "refused a connection from %s: %d open already",
                                     address, config.max_connections_per_address,
                                     extra={"event": "address-limit", "peer": address})
                await refuse_connection(stream, 429, "too many connections from your address",
                                        tls=tls is not None)

            async def serve_client(stream: trio.SocketStream) -> None:
                daemon.tcp_connections += 1
                try:
                    await handle_client(stream)
                finally:
                    daemon.tcp_connections -= 1

            handlers.start_soon(daemon.flush_corked)
            if config.ping_interval > 0:
                handlers.start_soon(daemon.keepalive)
            address = await nursery.start(functools.partial(
                serve_tcp, serve_client, config.host, config.port, handlers,
                max_per_address=config.max_connections_per_address, refuse=refuse))
            await _log_started(config, address, tls is not None)
            task_status.started(address)
            listening = True
            if notifier is not None:
                notifier.ready(f"listening on {_address(address)}; {daemon.status()}")
                handlers.start_soon(notify.keep_informed, notifier, daemon.status)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                clients = len(daemon.connections)
                if listening:
                    log.info("shutting down: closing %d connection%s", clients,
                             "s" * (clients != 1),
                             extra={"event": "shutdown-begun", "clients": clients})
                    if notifier is not None:
                        notifier.stopping(f"shutting down: closing {clients} connections")
                flushed = False
                try:
                    await daemon.shutdown()
                    if node is not None:
                        with trio.move_on_after(config.shutdown_timeout):
                            await node.leave()
                finally:
                    # Even if a step above failed: the shielded tasks would otherwise
                    # keep this nursery, and the process, alive for ever.
                    handler_scope.cancel()  # timers, queries, idle keep-alives, keepalive
                    try:
                        with trio.move_on_after(config.shutdown_timeout):
                            await writer.aclose()
                            flushed = True
                    finally:
                        writer_scope.cancel()
                for throttle, what in ((daemon.refusals, "refusal"), (daemon.closes, "close"),
                                       (daemon.visits, "visit")):
                    throttle.flush(what)
                if listening:  # (a start that failed says why itself)
                    log.info("stopped after %.0f s; connections closed: %d; %s",
                             daemon.now() - daemon.started_at, clients,
                             "store flushed" if flushed else "store NOT flushed in time",
                             extra={"event": "stopped", "clients": clients,
                                    "flushed": flushed})
            nursery.cancel_scope.cancel()


async def _log_started(config: Config, address: tuple[str, int], tls: bool) -> None:
    """Log the start: every address listened on, where rooms and the admin token are."""
    host, port = address
    try:
        found = await trio.socket.getaddrinfo(host or None, port, type=trio.socket.SOCK_STREAM,
                                              flags=trio.socket.AI_PASSIVE)
        bound = list(dict.fromkeys(_address((str(info[4][0]), port)) for info in found))
    except OSError:
        bound = [_address(address)]
    scheme = "https" if tls else "http"
    if config.redis is not None:
        from daemon.cluster.redis import describe

        store = f"in Redis at {describe(config.redis)}"
    else:
        store = "in memory" if config.memory else str(config.db_path)
    log.info("listening on %s (%s); data directory %s; rooms %s; admin token in %s",
             ", ".join(bound), scheme, config.data_dir, store,
             config.data_dir / ADMIN_TOKEN_FILE,
             extra={"event": "started", "addresses": bound, "scheme": scheme,
                    "data_dir": str(config.data_dir), "store": store, "version": VERSION})


__all__ = ["Config", "serve"]
