"""One daemon as a node of a cluster: where each room is served, and the traffic between nodes.

Theory of operation
-------------------
Every node serves clients on its own port; a room is *owned* by one node at a time
(``daemon.cluster.ownership``), which runs the room in its own engine, unchanged. When a
client opens a room:

* if this node owns the room, it serves the client itself;
* if nobody owns it, this node claims it, loads it from Redis (the room, its log position,
  its idempotency keys and its sessions, all away with a full grace period) into its
  engine, and serves the client;
* if another live node owns it, this node is the client's *edge*: it keeps the socket and
  forwards the client's frames to the owner over a link (``daemon.cluster.links``), and
  writes what the owner sends back. The owner serves that client with the same loop as
  its own (``daemon.cluster.remote.RemoteTransport``).

Whatever breaks a client's path to its room closes the client with ``ROOM_MOVED`` (4014),
which tells it to reconnect and resume its session, on any node: a link that lost
messages, an owner whose heartbeat stopped, a room whose lease this node lost (it was
paused too long, or Redis was unreachable past the lease time). Nothing acknowledged is
lost on the way, since a message is acknowledged only once the owner's append script
(fenced by the lease) has answered; a resumed client catches up from the log.

A room nobody uses any more is let go (unloaded, its lease released) after a while, so
rooms spread over the nodes that their clients come to.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import coredis
import trio

from daemon.cluster.links import (
    AdminCall,
    AnyMessage,
    Deliver,
    Frames,
    Gone,
    Links,
    Open,
    Reset,
    Shut,
)
from daemon.cluster.nodes import Nodes
from daemon.cluster.ownership import Ownership
from daemon.cluster.redis import UNREACHABLE
from daemon.cluster.remote import TRY_AGAIN_LATER, RemoteTransport
from daemon.cluster.setup import sync_admin_token
from daemon.cluster.store import RedisWriter, Unreachable
from daemon.config import Config
from daemon.core.access import Access
from daemon.core.effects import Effect
from daemon.core.engine import Engine, page_of_names
from daemon.net import wire
from daemon.net.transport import Closed, Transport
from protocol import Codec, ErrorCode, Event, Request, WireFormat
from protocol import admin as adm
from protocol.errors import CloseCode
from protocol.messages import Error, RoomInfo

log = logging.getLogger(__name__)

_NO_ANSWER: tuple[type[BaseException], ...] = (trio.TooSlowError, *UNREACHABLE)
MOVED = (CloseCode.ROOM_MOVED, "the room moved to another node: reconnect and resume")
IDLE_UNLOAD = 30.0  # seconds a room without sessions stays loaded before it is let go
# Admin requests on one room: they run where the room is.
_ROOM_ADMIN = (adm.CreateRoom, adm.GetRoom, adm.UpdateRoom, adm.Kick, adm.DeleteRoom)
_REFRESH_FAILURES: tuple[type[BaseException], ...] = (*_NO_ANSWER, Unreachable)


class Host(Protocol):
    """What a node needs of its daemon (``daemon.server.Daemon``)."""

    engine: Engine
    nursery: trio.Nursery
    admin_codecs: dict[WireFormat, Codec]

    def admin_call(self, transport: Transport, fmt: WireFormat, token: str | None,
                   data: str | bytes) -> None: ...

    def now(self) -> float: ...

    def apply_now(self, effects: Sequence[Effect]) -> None: ...

    def serve_connection(self, transport: Transport, fmt: WireFormat, peer: tuple[str, int],
                         *, room: str | None) -> Awaitable[None]: ...


@dataclass(eq=False)
class EdgeClient:
    """A client this node forwards to the owner of its room."""

    transport: Transport
    owner: str
    room: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    shut: tuple[int, str] | None = None  # what the owner (or a broken link) closes it with


class ClusterNode:
    """This daemon's part in a cluster (see the module docstring)."""

    def __init__(self, host: Host, redis: coredis.Redis[bytes], writer: RedisWriter,
                 ownership: Ownership, nodes: Nodes, *, config: Config,
                 outbound_queue: int = 2048, lease_wait: float = 12.0) -> None:
        self.host = host
        self.config = config
        self.redis = redis
        self.writer = writer
        self.ownership = ownership
        self.nodes = nodes
        self.node = nodes.info.node
        self.outbound_queue = outbound_queue
        self.lease_wait = lease_wait
        self.links = Links(redis, self.node, on_message=self._on_message,
                           on_broken=self._on_broken, on_subscribed=self._on_subscribed)
        self._cids = itertools.count(1)
        self.edge: dict[int, EdgeClient] = {}  # cid -> a client forwarded to its owner
        self.remote: dict[tuple[str, int], RemoteTransport] = {}  # (edge, cid) -> its client
        self._loading: dict[str, trio.Event] = {}  # rooms being loaded from Redis
        self._idle_since: dict[str, float] = {}
        self.forwarded_total = 0
        # Admin requests forwarded to a room's owner: cid -> where the reply goes.
        self._admin_waiting: dict[int, tuple[Transport, trio.Event]] = {}
        self.listing: list[RoomInfo] = []  # every room of the cluster, refreshed often

    # --- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node's background work until cancelled; ``started`` once subscribed."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.nodes.run)
            nursery.start_soon(self.ownership.run, self._lost)
            await nursery.start(self.links.run)
            nursery.start_soon(self._watch_owners)
            nursery.start_soon(self._unload_idle)
            nursery.start_soon(self._refresh)
            task_status.started()

    @property
    def healthy(self) -> bool:
        """Whether Redis answers this node (heartbeats and the inbox subscription)."""
        return self.nodes.healthy and self.links.connected

    # --- where a room is served ------------------------------------------------------------------

    async def serve_client(self, transport: Transport, fmt: WireFormat, peer: tuple[str, int],
                           room: str) -> None:
        """Serve a client of ``room``: here if this node owns (or can claim) the room,
        through its owner otherwise; closes it with 4014 or 1013 when neither can be."""
        try:
            owner = await self.place(room)
        except _NO_ANSWER as exc:
            log.warning("cannot place room %r: Redis: %s", room, exc or type(exc).__name__)
            await self._refuse(transport, TRY_AGAIN_LATER, "the rooms' store is unreachable")
            return
        if owner is None:
            await self.host.serve_connection(transport, fmt, peer, room=room)
        elif owner == "":
            await self._refuse(transport, *MOVED)
        else:
            await self._forward(transport, fmt, peer, room, owner)

    async def place(self, room: str) -> str | None:
        """Return None when this node serves ``room`` (loaded), the owner's node otherwise,
        or "" when its owner died and its lease has not lapsed in time.

        Raises trio.TooSlowError or a connection error when Redis does not answer.
        """
        deadline = trio.current_time() + self.lease_wait
        while True:
            if self.ownership.owner_of(room) is not None:
                loading = self._loading.get(room)
                if loading is not None:
                    await loading.wait()
                if self.ownership.owner_of(room) is not None:
                    return None
            holder = await self.ownership.claim(room)
            if holder is None:
                await self._load(room)
                return None
            if holder != self.node and holder in await self.nodes.alive({holder}):
                return holder
            if trio.current_time() > deadline:
                return ""
            await trio.sleep(0.25)  # a dead owner's lease lapses within its time

    async def _load(self, room: str) -> None:
        """Load a room this node just claimed into its engine (if Redis has it)."""
        loaded = self._loading[room] = trio.Event()
        try:
            keys_since = self.host.now() - self.host.engine.key_window
            record, sessions = await self.writer.load_room(room, keys_since)
            if record is not None and room not in self.host.engine.rooms:
                self.host.apply_now(self.host.engine.adopt(record, sessions, self.host.now()))
                log.info("took over room %r (seq %d, %d sessions to resume)", room,
                         record.last_seq, len(sessions),
                         extra={"event": "room-adopted", "room": room})
        except BaseException:
            await self.ownership.release(room)
            raise
        finally:
            del self._loading[room]
            loaded.set()

    def _lost(self, room: str) -> None:
        """This node's lease on ``room`` is gone: let the room go (its clients resume)."""
        self.host.apply_now(self.host.engine.unload(room, MOVED))
        self._idle_since.pop(room, None)

    def fenced(self, room: str) -> None:
        """A write of ``room`` was refused: another node owns it; let it go at once."""
        if self.ownership.owned.pop(room, None) is not None:
            log.warning("room %r was taken over by another node", room,
                        extra={"event": "lease-lost", "room": room})
        self._lost(room)

    async def _unload_idle(self) -> None:
        """Let go of rooms that have had no session for a while (and release their lease)."""
        engine = self.host.engine
        while True:
            await trio.sleep(IDLE_UNLOAD / 3)
            now = trio.current_time()
            for room in list(self.ownership.owned):
                if engine.session_count(room) or room in self._loading:
                    self._idle_since.pop(room, None)
                    continue
                since = self._idle_since.setdefault(room, now)
                # A room that would expire (made by a visit, never used) is kept until it
                # does, so that the expiry is not lost by unloading it first.
                found = engine.rooms.get(room)
                wait = IDLE_UNLOAD if found is None or not found.expirable else \
                    max(IDLE_UNLOAD, engine.empty_timeout + 5)
                if now - since < wait:
                    continue
                await self.writer.flush()  # its last writes land while it is still ours
                if engine.session_count(room):
                    continue
                self.host.apply_now(engine.unload(room, MOVED))
                self._idle_since.pop(room, None)
                await self.ownership.release(room)

    # --- edge: forwarding a client to its room's owner -------------------------------------------

    async def _forward(self, transport: Transport, fmt: WireFormat, peer: tuple[str, int],
                       room: str, owner: str) -> None:
        cid = next(self._cids)
        client = self.edge[cid] = EdgeClient(transport, owner, room)
        self.forwarded_total += 1
        self.links.send(owner, Open(cid=cid, kind="room", room=room, format=fmt.value,
                                    peer=f"{peer[0]}:{peer[1]}"))
        code = 1006
        try:
            with client.scope:
                while True:
                    frames = await transport.receive()
                    self.links.send(owner, Frames(cid=cid, frames=list(frames)))
        except Closed as closed:
            code = closed.code
        finally:
            del self.edge[cid]
            if client.shut is None:
                self.links.send(owner, Gone(cid=cid, code=code))
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 2
                await transport.aclose(*(client.shut or (1000, "")))

    def _close_edge(self, client: EdgeClient, code: int, reason: str) -> None:
        if client.shut is None:
            client.shut = (code, reason)
        client.scope.cancel()

    async def _watch_owners(self) -> None:
        """Close the forwarded clients of owners whose heartbeat stopped (they resume)."""
        while True:
            await trio.sleep(self.nodes.interval)
            owners = {client.owner for client in self.edge.values()}
            if not owners:
                continue
            try:
                alive = await self.nodes.alive(owners)
            except _NO_ANSWER:
                continue  # Redis itself is away; links report what they lose
            for dead in owners - alive:
                log.warning("node %s stopped: its clients here reconnect", dead,
                            extra={"event": "node-gone", "node": dead})
                self._on_broken(dead)

    # --- the admin endpoint across nodes --------------------------------------------------------

    async def admin_request(self, transport: Transport, fmt: WireFormat, frame: Request,
                            token: str | None, access: Access) -> bool:
        """Answer an admin request that needs the cluster; return False for one this
        node's engine answers (its room is here, or it needs no room).

        list-rooms lists the cluster's rooms; a request on a room another node owns runs
        there, and its reply comes back to ``transport``.
        """
        if isinstance(frame, adm.ListRooms):
            visible = {r.name: r for r in await self._list(fresh=True)
                       if access.is_admin or r.name == access.room}
            names, following = page_of_names(visible, frame.after, frame.limit)
            self._write(transport, fmt, adm.RoomList(ref=frame.ref,
                                                     rooms=[visible[n] for n in names],
                                                     next=following))
            return True
        room = getattr(frame, "room", None)
        if not isinstance(frame, _ROOM_ADMIN) or not isinstance(room, str):
            return False
        try:
            owner = await self.place(room)
        except _NO_ANSWER:
            owner = ""
        if owner is None:
            return False
        if owner == "":
            self._write(transport, fmt, Error(ref=frame.ref, code=ErrorCode.UNAVAILABLE,
                                              message="the room's node cannot be reached; "
                                                      "retry", retry_after=1.0))
            return True
        cid = next(self._cids)
        answered = trio.Event()
        self._admin_waiting[cid] = (transport, answered)
        data = self.host.admin_codecs[fmt].encode(frame)
        self.links.send(owner, AdminCall(cid=cid, token=token, format=fmt.value,
                                         data=data if fmt.binary else data.decode()))
        try:
            with trio.move_on_after(10):
                await answered.wait()
        finally:
            del self._admin_waiting[cid]
        if not answered.is_set():
            self._write(transport, fmt, Error(ref=frame.ref, code=ErrorCode.UNAVAILABLE,
                                              message=f"node {owner} did not answer; retry",
                                              retry_after=1.0))
        return True

    def _write(self, transport: Transport, fmt: WireFormat, frame: Event) -> None:
        data = self.host.admin_codecs[fmt].encode(frame)
        transport.out.write(wire.frame(data, binary=fmt.binary))

    async def _list(self, *, fresh: bool) -> list[RoomInfo]:
        if fresh or not self.listing:
            engine = self.host.engine
            rooms = [engine.stored_room_info(record, count)
                     for record, count in await self.writer.list_rooms()]
            self.listing = [room for room in rooms if room is not None]
            # --max-rooms counts the cluster's rooms (as of this listing: every 2 s).
            engine.rooms_elsewhere = frozenset(room.name for room in self.listing)
        return self.listing

    async def _refresh(self) -> None:
        """Keep ``listing`` (the lobby, health) and the admin token current."""
        while True:
            try:
                await self._list(fresh=True)
                await sync_admin_token(self.redis, self.config)
            except _REFRESH_FAILURES:
                pass
            await trio.sleep(2.0)

    # --- the links' messages ---------------------------------------------------------------------

    def _on_message(self, sender: str, message: AnyMessage) -> None:
        if isinstance(message, Deliver):
            for cid in message.cids:
                waiting = self._admin_waiting.get(cid)
                if waiting is not None:
                    waiting[0].out.write(message.data)
                    waiting[1].set()
                    continue
                client = self.edge.get(cid)
                if client is None:
                    continue
                client.transport.out.write(message.data)
                if client.transport.out.pending > self.outbound_queue:
                    self._close_edge(client, CloseCode.SLOW_CONSUMER,
                                     "outbound queue overflowed")
        elif isinstance(message, Frames):
            remote = self.remote.get((sender, message.cid))
            if remote is None:
                self.links.send(sender, Shut(cid=message.cid, code=MOVED[0], reason=MOVED[1]))
            elif not remote.feed(message.frames):
                remote.gone(TRY_AGAIN_LATER)
                self.links.send(sender, Shut(cid=message.cid, code=TRY_AGAIN_LATER,
                                             reason="too many frames waiting"))
        elif isinstance(message, Shut):
            client = self.edge.get(message.cid)
            if client is not None:
                self._close_edge(client, message.code, message.reason)
        elif isinstance(message, Open):
            self._open_remote(sender, message)
        elif isinstance(message, Gone):
            remote = self.remote.get((sender, message.cid))
            if remote is not None:
                remote.gone(message.code)
        elif isinstance(message, Reset):
            self._on_broken(sender)
        elif isinstance(message, AdminCall):
            try:
                fmt = WireFormat(message.format)
            except ValueError:
                return
            self.host.admin_call(RemoteTransport(self.links, sender, message.cid), fmt,
                                 message.token, message.data)

    def _open_remote(self, edge: str, message: Open) -> None:
        if message.kind != "room" or self.ownership.owner_of(message.room) is None:
            # Not (or no longer) this node's room: the client tries again, elsewhere.
            self.links.send(edge, Shut(cid=message.cid, code=MOVED[0], reason=MOVED[1]))
            return
        try:
            fmt = WireFormat(message.format)
        except ValueError:
            self.links.send(edge, Shut(cid=message.cid, code=1002, reason="unknown format"))
            return
        remote = self.remote[(edge, message.cid)] = RemoteTransport(self.links, edge,
                                                                    message.cid)
        host, _, port = message.peer.rpartition(":")
        peer = (host, int(port) if port.isdigit() else 0)

        async def serve() -> None:
            try:
                await self.host.serve_connection(remote, fmt, peer, room=message.room)
            finally:
                self.remote.pop((edge, message.cid), None)

        self.host.nursery.start_soon(serve)

    def _on_broken(self, node: str) -> None:
        """A link to or from ``node`` lost messages, or ``node`` died: close what it carried
        (the clients resume, on any node)."""
        for client in list(self.edge.values()):
            if client.owner == node:
                self._close_edge(client, *MOVED)
        for (edge, cid), remote in list(self.remote.items()):
            if edge == node:
                self.links.send(edge, Shut(cid=cid, code=MOVED[0], reason=MOVED[1]))
                remote.gone(1006)
        self.links.forget(node)

    def _on_subscribed(self, first: bool) -> None:
        """This node's inbox subscription is (back) up: reset every link if it was lost,
        and ask the other nodes to reset theirs to it (their messages may be lost)."""
        if not first:
            log.warning("this node's inbox was cut off: its forwarded clients reconnect",
                        extra={"event": "links-reset"})
            for node in {c.owner for c in self.edge.values()} | {e for e, _ in self.remote}:
                self._on_broken(node)
        self.host.nursery.start_soon(self._announce_reset)

    async def _announce_reset(self) -> None:
        try:
            others = await self.nodes.others()
        except _NO_ANSWER:
            return
        for node in others:
            self.links.send(node, Reset())

    async def _refuse(self, transport: Transport, code: int, reason: str) -> None:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + 2
            await transport.aclose(code, reason)

    # --- shutdown --------------------------------------------------------------------------------

    async def leave(self) -> None:
        """Before the daemon stops: hand every forwarded client back, release every room."""
        for client in list(self.edge.values()):
            self._close_edge(client, CloseCode.GOING_AWAY, "the daemon is shutting down")
        with trio.move_on_after(2):
            await self.writer.flush()
        async with trio.open_nursery() as releases:
            for room in list(self.ownership.owned):
                releases.start_soon(self.ownership.release, room)
        await self.nodes.leave()

