"""``roomctl load-test``: drive a daemon with many clients and check every delivery.

Theory of operation
-------------------
Setup: with the admin token (read from the data directory next to a local daemon), each
daemon gets its rooms (``load-XXXXXX-N``, room N on ``--url`` N modulo their number) and
a join token per room, so the test also runs against ``--require-tokens``. Then every
client connects, all at once: per room, ``--watchers`` participants that only read,
``--posters`` that post ``--rate`` messages a second, and ``--callers`` that join the
room's WebRTC mesh and only signal (offers, answers, then ICE candidates at ``--rate``),
never touching media. Names say the role (``poster-3-0``, ``watcher-3-1``, ``caller-3-2``).

Run: once everyone is connected (so every watcher can expect every message), posters and
callers send for ``--duration``. Each message's text and each candidate carry the
sender's own counter, so each receiver checks each sender's stream item by item
(``roomctl.loadstats.Stream``): a message acknowledged (``ok`` with its ``seq``) must
reach every watcher of its room once, in order; a candidate relayed must reach its peer
once, in order. Acknowledgement latency is send to ``ok``, delivery latency send to
``message-posted`` at a watcher, relay latency send to ``ice-candidate`` at the peer; all
timed on this process's monotonic clock, so no clock needs to agree with the daemon's.

Drain: up to ``--timeout`` for the last acknowledgements and deliveries; what has not
arrived by then is lost. Then every client leaves and the rooms are deleted.

Bounds: at most 10,000 connections, 1,000 rooms, 1,000 clients per room, 1,000 sends a
second per client, an hour of sending; the whole run ends by itself within the duration
plus three timeouts. Only loopback addresses are driven unless ``--allow-remote``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import signal
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import trio
import typer

from protocol.admin import CreateRoom, CreateToken, DeleteRoom, TokenIssued
from protocol.chat import MessagePosted, SendMessage
from protocol.local import DEFAULT_URL, room_path
from protocol.messages import (
    AddPeer,
    Error,
    Grant,
    Hello,
    IceCandidate,
    IceCandidateRelayed,
    Join,
    Leave,
    Ok,
    RelayIceCandidate,
    RelaySessionDescription,
    SessionDescription,
    SessionDescriptionRelayed,
)
from roomctl import output
from roomctl.client import CliError, ExitCode, Session, Target, connect, open_admin
from roomctl.errors import json_errors
from roomctl.loadstats import Latencies, Stream, Tally
from roomctl.options import parse_duration, run, until_signalled
from roomctl.target import validate_url

MAX_CONNECTIONS = 10_000
MAX_ROOMS = 1_000
MAX_PER_ROOM = 1_000
MAX_RATE = 1_000.0
MAX_DURATION = 3600.0
PROGRESS_EVERY = 0.5  # seconds between progress lines on a terminal
_CONNECTING_AT_ONCE = 64  # handshakes in flight: more only queue in the daemon's backlog


# --- the command line ---------------------------------------------------------------------------


def _duration(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if seconds > MAX_DURATION:
        raise typer.BadParameter(f"at most {MAX_DURATION / 3600:g} h")
    return seconds


def _urls(values: list[str] | None) -> list[str]:
    urls = [item.strip() for value in values or [DEFAULT_URL] for item in value.split(",")
            if item.strip()]
    for url in urls:
        try:
            validate_url(url)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return urls


def is_loopback(host: str) -> bool:
    """Return whether every address ``host`` names is on this machine's loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in found)


def load_test(
    urls: Annotated[list[str] | None, typer.Option(
        "--url", envvar="ROOMCTL_URL", metavar="URL", show_default=DEFAULT_URL,
        help="A daemon to drive; repeat for several (rooms go round them).")] = None,
    rooms: Annotated[int, typer.Option(
        min=1, max=MAX_ROOMS, metavar="N", help="Rooms to make and load.")] = 1,
    posters: Annotated[int, typer.Option(
        min=0, max=MAX_PER_ROOM, metavar="N", help="Clients per room that post messages.")] = 2,
    watchers: Annotated[int, typer.Option(
        min=0, max=MAX_PER_ROOM, metavar="N",
        help="Clients per room that only read, checking every message.")] = 4,
    callers: Annotated[int, typer.Option(
        min=0, max=MAX_PER_ROOM, metavar="N",
        help="Clients per room in the WebRTC mesh that only signal (no media).")] = 0,
    rate: Annotated[float, typer.Option(
        min=0.1, max=MAX_RATE, metavar="N",
        help="Messages (posters) or ICE candidates (callers) per second, per client.")] = 5.0,
    duration: Annotated[float, typer.Option(
        parser=_duration, metavar="DURATION",
        help="How long to send (30, 30s, 5m; at most 1h).")] = "10s",  # type: ignore[assignment]
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Also drive daemons that are not on this machine's loopback.")
    ] = False,
    token: Annotated[str | None, typer.Option(
        "--token", envvar="ROOMCTL_TOKEN", metavar="TOKEN",
        show_default="the local daemon's admin token",
        help="Admin token: makes and deletes the rooms, and signs join tokens.")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar="ROOMCTL_DATA_DIR", metavar="DIR",
        show_default="$XDG_STATE_HOME/roomctl",
        help="A local daemon's data directory, to read its admin token from.")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", envvar="ROOMCTL_TIMEOUT", parser=_duration, metavar="DURATION",
        help="How long to wait to connect, and for the last deliveries.")
    ] = "10s",  # type: ignore[assignment]
    ca_file: Annotated[Path | None, typer.Option(
        "--ca-file", envvar="ROOMCTL_CA_FILE", metavar="FILE", exists=True, dir_okay=False,
        help="CA certificates (PEM) to verify an https/wss daemon with.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", envvar="ROOMCTL_INSECURE",
        help="Do not verify the daemon's TLS certificate (testing only).")] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the summary as one JSON document.")] = False,
) -> None:
    """Load one or more daemons with rooms of posters, watchers and callers; check every delivery.

    Prints a summary: connections, messages per second, acknowledgement, delivery and
    relay latencies (p50, p95, p99, max), and lost, duplicated and out-of-order deliveries.
    Exits 1 when any delivery was lost, duplicated or out of order, a connection failed or
    a request was refused.
    """
    targets = _urls(urls)
    if posters + callers == 0:
        raise typer.BadParameter("nothing would be sent: give --posters or --callers",
                                 param_hint="--posters")
    if posters + watchers + callers > MAX_PER_ROOM:
        raise typer.BadParameter(f"at most {MAX_PER_ROOM} clients per room",
                                 param_hint="--watchers")
    if rooms * (posters + watchers + callers) > MAX_CONNECTIONS:
        raise typer.BadParameter(f"at most {MAX_CONNECTIONS} connections in all "
                                 f"(--rooms times the clients per room)", param_hint="--rooms")
    if not allow_remote:
        for url in targets:
            host = urlsplit(url).hostname or ""
            if not is_loopback(host):
                raise typer.BadParameter(
                    f"{url} is not on this machine's loopback; a load test sends a lot: "
                    "give --allow-remote to drive a daemon elsewhere", param_hint="--url")
    plan = Plan(
        targets=[Target(url=url, token=token, data_dir=data_dir, timeout=timeout,
                        ca_file=ca_file, insecure=insecure) for url in targets],
        rooms=rooms, posters=posters, watchers=watchers, callers=callers, rate=rate,
        duration=duration, timeout=timeout)
    progress = Progress(sys.stderr) if sys.stderr.isatty() else None
    load = LoadTest(plan, progress)
    report = run(load.run)
    if json_output or json_errors():  # (roomctl --json load-test)
        output.emit_json(report)
    else:
        print_summary(report)
    if not report["passed"]:
        raise typer.Exit(int(ExitCode.REFUSED))


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    targets: list[Target]
    rooms: int
    posters: int
    watchers: int
    callers: int
    rate: float
    duration: float
    timeout: float


@dataclass
class Room:
    name: str
    target: Target
    token: str | None = None  # a join token, when the admin token could sign one
    made: bool = False  # made by us through the admin endpoint (so ours to delete)


@dataclass
class Client:
    """One connection of the test; ``role`` is poster, watcher or caller."""

    room: Room
    role: str
    index: int
    session: Session | None = None
    id: str = ""
    # poster: when each message was sent, by its number; which were acknowledged.
    sent_at: list[float] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    refs: dict[str, int] = field(default_factory=dict)  # pending ref -> message number
    # watcher: each poster's stream; caller: each peer's, and what went to each peer.
    streams: dict[str, Stream] = field(default_factory=dict)
    peers: list[str] = field(default_factory=list)
    relayed: dict[str, list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.room.name.rsplit('-', 1)[-1]}-{self.index}"


class Progress:
    """One line on a terminal, rewritten in place while the test runs."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def show(self, text: str) -> None:
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()

    def done(self) -> None:
        self.stream.write("\r\x1b[2K")
        self.stream.flush()


class LoadTest:
    """One run of the plan; ``run`` returns the report (see ``report``)."""

    def __init__(self, plan: Plan, progress: Progress | None) -> None:
        self.plan = plan
        self.progress = progress
        self.run_id = secrets.token_hex(3)
        self.clients: list[Client] = []
        self.connected = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.ack = Latencies()
        self.delivery = Latencies()
        self.relay = Latencies()
        self.messages = Tally()
        self.relays = Tally()
        self.sent_messages = 0
        self.sent_relays = 0
        self.all_connected = trio.Event()
        self.sending = trio.Event()
        self.stop = trio.Event()  # sending is over (time, or a signal)
        self.done = trio.Event()  # drained: every client may leave
        self.started = 0.0
        self.send_started = 0.0
        self.send_ended = 0.0
        self.interrupted: str | None = None
        self._waiting = 0  # clients still connecting
        self.by_id: dict[str, Client] = {}  # connected clients by session id

    # --- the phases ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        self.started = trio.current_time()
        bound = plan.duration + 3 * plan.timeout + 30
        with trio.move_on_after(bound):
            await until_signalled(self._phases, self._on_signal)
        if self.progress is not None:
            self.progress.done()
        return self.report()

    def _on_signal(self, signum: signal.Signals) -> None:
        self.interrupted = signum.name
        self.all_connected.set()
        self.stop.set()

    async def _phases(self) -> None:
        plan = self.plan
        rooms = [Room(f"load-{self.run_id}-{n}", plan.targets[n % len(plan.targets)])
                 for n in range(plan.rooms)]
        await self._prepare(rooms)
        for room in rooms:
            for role, count in (("watcher", plan.watchers), ("poster", plan.posters),
                                ("caller", plan.callers)):
                self.clients += [Client(room, role, i) for i in range(count)]
        self._waiting = len(self.clients)
        limiter = trio.CapacityLimiter(_CONNECTING_AT_ONCE)
        try:
            async with trio.open_nursery() as nursery:
                showing = trio.CancelScope()
                if self.progress is not None:
                    nursery.start_soon(self._show_progress, showing)
                for client in self.clients:
                    nursery.start_soon(self._client, client, limiter)
                with trio.move_on_after(plan.timeout):
                    await self.all_connected.wait()
                self.all_connected.set()  # the late ones count as failed
                await self._callers_meet()
                self.send_started = trio.current_time()
                self.sending.set()
                with trio.move_on_after(plan.duration):
                    await self.stop.wait()
                self.stop.set()
                self.send_ended = trio.current_time()
                with trio.move_on_after(plan.timeout):
                    # Polled: checking is a walk over every stream, too dear per frame.
                    while not self._drained():  # noqa: ASYNC110
                        await trio.sleep(0.05)
                self.done.set()
                showing.cancel()
                nursery.cancel_scope.deadline = trio.current_time() + plan.timeout
        finally:
            with trio.move_on_after(plan.timeout, shield=True):
                await self._clean_up(rooms)

    async def _prepare(self, rooms: list[Room]) -> None:
        """Make the rooms and a join token for each, where the admin token allows."""
        for target in dict.fromkeys(room.target for room in rooms):
            mine = [room for room in rooms if room.target is target]
            if target.resolved_token() is None:
                continue  # rooms are made by the first hello; tokens cannot be signed
            try:
                async with open_admin(target) as admin:
                    for room in mine:
                        await admin.request(CreateRoom(room=room.name, ref=admin.next_ref()))
                        room.made = True
                        issued = await admin.request(CreateToken(
                            room=room.name, identity=f"load-test-{self.run_id}",
                            grants=[Grant.JOIN, Grant.POST, Grant.MEDIA],
                            ttl=self.plan.duration + 3 * self.plan.timeout + 3600,
                            ref=admin.next_ref()), expect=TokenIssued)
                        room.token = issued.token
            except CliError as exc:
                self.errors[f"admin: {exc.code or exc.message}"] += 1

    async def _clean_up(self, rooms: list[Room]) -> None:
        for target in dict.fromkeys(room.target for room in rooms if room.made):
            try:
                async with open_admin(target) as admin:
                    for room in rooms:
                        if room.made and room.target is target:
                            await admin.request(DeleteRoom(room=room.name, ref=admin.next_ref()))
            except CliError as exc:
                self.errors[f"admin: {exc.code or exc.message}"] += 1

    def _drained(self) -> bool:
        """Whether every acknowledgement came and every watcher has every acked message."""
        if any(client.refs for client in self.clients if client.role == "poster"):
            return False
        return self._lost_messages() == 0 and self._lost_relays() == 0

    async def _callers_meet(self) -> None:
        """Wait (at most the timeout) until every caller knows every other caller of its room."""
        callers = [c for c in self.clients if c.role == "caller" and c.session is not None]
        with trio.move_on_after(self.plan.timeout):
            # Polled, as _drained: add-peer events come from every caller's reader.
            while any(len(c.peers) < self._live_callers(c.room) - 1  # noqa: ASYNC110
                      for c in callers):
                await trio.sleep(0.01)

    def _live_callers(self, room: Room) -> int:
        return sum(1 for c in self.clients
                   if c.room is room and c.role == "caller" and c.session is not None)

    # --- one client ---------------------------------------------------------------------------

    async def _client(self, client: Client, limiter: trio.CapacityLimiter) -> None:
        room = client.room
        hello = Hello(name=client.name, token=room.token, create=True)
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with limiter:
                    session = await stack.enter_async_context(
                        connect(room.target, room_path(room.name), hello))
            except CliError as exc:
                self.failed += 1
                self.errors[f"connect: {exc.code or _reason(exc.message)}"] += 1
                self._connecting_done()
                return
            assert session.welcome is not None
            client.session, client.id = session, session.welcome.session_id
            self.by_id[client.id] = client
            self.connected += 1
            self._connecting_done()
            try:
                await self._take_part(client, session)
            except CliError as exc:
                self.errors[f"closed: {_reason(exc.message)}"] += 1

    async def _take_part(self, client: Client, session: Session) -> None:
        """Read, and send as the client's role says, until the run is done; then leave."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, client)
            if client.role == "caller":
                await session.send(Join(ref=session.next_ref()))
            await self.all_connected.wait()
            await self.sending.wait()
            if client.role == "poster":
                await self._post(client)
            elif client.role == "caller":
                await self._signal(client)
            await self.done.wait()
            with trio.move_on_after(self.plan.timeout):
                await session.send(Leave(ref=session.next_ref()))
            nursery.cancel_scope.cancel()

    def _connecting_done(self) -> None:
        self._waiting -= 1
        if self._waiting == 0:
            self.all_connected.set()

    async def _paced(self, send: Callable[[int], Awaitable[None]]) -> None:
        """Call ``send(n)`` for n = 0, 1, ... at ``--rate`` a second until sending stops."""
        interval = 1 / self.plan.rate
        start = trio.current_time() + interval * secrets.randbelow(1000) / 1000  # spread out
        number = 0
        while not self.stop.is_set():
            with trio.move_on_at(start + number * interval):
                await self.stop.wait()
            if self.stop.is_set():
                return
            await send(number)
            number += 1

    async def _post(self, client: Client) -> None:
        session = client.session
        assert session is not None

        async def send(number: int) -> None:
            ref = session.next_ref()
            client.refs[ref] = number
            client.sent_at.append(trio.current_time())
            self.sent_messages += 1
            await session.send(SendMessage(text=f"lt {client.id} {number}", ref=ref))

        await self._paced(send)

    async def _signal(self, client: Client) -> None:
        session = client.session
        assert session is not None

        async def send(number: int) -> None:
            if not client.peers:
                return
            peer = client.peers[number % len(client.peers)]
            times = client.relayed.setdefault(peer, [])
            line = f"candidate:lt {client.id} {len(times)} 1 udp 1 127.0.0.1 9 typ host"
            times.append(trio.current_time())
            self.sent_relays += 1
            await session.send(RelayIceCandidate(peer_id=peer, candidate=IceCandidate(
                candidate=line, sdp_mid="0", sdp_m_line_index=0)))

        await self._paced(send)

    async def _read(self, client: Client) -> None:
        session = client.session
        assert session is not None
        while True:
            try:
                frame = await session.receive()
            except CliError:
                if self.done.is_set():
                    return  # the daemon closes after our leave
                raise
            now = trio.current_time()
            if isinstance(frame, Ok | Error):
                self._answered(client, frame, now)
            elif isinstance(frame, MessagePosted) and client.role == "watcher":
                self._delivered(client, frame, now)
            elif isinstance(frame, AddPeer) and client.role == "caller":
                client.peers.append(frame.peer_id)
                if frame.should_create_offer:
                    await session.send(RelaySessionDescription(
                        peer_id=frame.peer_id, ref=session.next_ref(),
                        description=SessionDescription(type="offer", sdp="v=0 load-test")))
            elif isinstance(frame, SessionDescriptionRelayed) and client.role == "caller":
                if frame.description.type == "offer":
                    await session.send(RelaySessionDescription(
                        peer_id=frame.peer_id, ref=session.next_ref(),
                        description=SessionDescription(type="answer", sdp="v=0 load-test")))
            elif isinstance(frame, IceCandidateRelayed) and client.role == "caller":
                self._relayed(client, frame, now)

    def _answered(self, client: Client, reply: Ok | Error, now: float) -> None:
        number = client.refs.pop(reply.ref, None) if reply.ref is not None else None
        if isinstance(reply, Error):
            self.errors[str(reply.code)] += 1
        elif number is not None:
            client.acked.append(number)
            self.ack.add(now - client.sent_at[number])

    def _delivered(self, client: Client, frame: MessagePosted, now: float) -> None:
        parts = frame.message.text.split(" ")
        if len(parts) != 3 or parts[0] != "lt":
            return
        sender, number = parts[1], int(parts[2])
        stream = client.streams.setdefault(sender, Stream())
        if stream.receive(number, self.messages):
            poster = self._poster(sender)
            if poster is not None and number < len(poster.sent_at):
                self.delivery.add(now - poster.sent_at[number])

    def _relayed(self, client: Client, frame: IceCandidateRelayed, now: float) -> None:
        parts = frame.candidate.candidate.split(" ")
        if len(parts) < 3 or parts[0] != "candidate:lt":
            return
        sender, number = parts[1], int(parts[2])
        stream = client.streams.setdefault(sender, Stream())
        if stream.receive(number, self.relays):
            caller = self.by_id.get(sender)
            times = caller.relayed.get(client.id, []) if caller is not None else []
            if number < len(times):
                self.relay.add(now - times[number])

    def _poster(self, session_id: str) -> Client | None:
        client = self.by_id.get(session_id)
        return client if client is not None and client.role == "poster" else None

    # --- what it found ------------------------------------------------------------------------

    def _lost_messages(self) -> int:
        lost = 0
        for watcher in self.clients:
            if watcher.role != "watcher" or watcher.session is None:
                continue
            for poster in self.clients:
                if poster.role == "poster" and poster.room is watcher.room and poster.acked:
                    lost += watcher.streams.get(poster.id, Stream()).missing(poster.acked)
        return lost

    def _lost_relays(self) -> int:
        lost = 0
        by_id = self.by_id
        for caller in self.clients:
            for peer_id, times in caller.relayed.items():
                peer = by_id.get(peer_id)
                if peer is not None:
                    lost += peer.streams.get(caller.id, Stream()).missing(
                        list(range(len(times))))
        return lost

    async def _show_progress(self, scope: trio.CancelScope) -> None:
        assert self.progress is not None
        with scope:
            while True:
                self.progress.show(self._progress_line())
                await trio.sleep(PROGRESS_EVERY)

    def _progress_line(self) -> str:
        elapsed = trio.current_time() - self.started
        p95 = self.ack.percentile(0.95)
        return (f"{elapsed:5.1f}s  connected {self.connected}/{len(self.clients)}"
                f"{f' failed {self.failed}' if self.failed else ''}  "
                f"sent {self.sent_messages}  acked {self.ack.count}  "
                f"delivered {self.messages.delivered}"
                + (f"  relayed {self.relays.delivered}" if self.plan.callers else "")
                + (f"  ack p95 {p95 * 1000:.1f} ms" if p95 is not None else "")
                + (f"  errors {sum(self.errors.values())}" if self.errors else ""))

    def report(self) -> dict[str, Any]:
        """Return the run's findings as one JSON-ready document (times in seconds)."""
        plan = self.plan
        self.messages.lost = self._lost_messages()
        self.relays.lost = self._lost_relays()
        sending = max((self.send_ended or trio.current_time()) - self.send_started, 1e-9) \
            if self.send_started else 0.0
        acked = self.ack.count
        passed = (self.messages.faults == 0 and self.relays.faults == 0 and self.failed == 0
                  and not self.errors and self.interrupted is None
                  and self.connected == len(self.clients))
        document: dict[str, Any] = {
            "urls": [target.url for target in plan.targets],
            "rooms": plan.rooms, "posters": plan.posters, "watchers": plan.watchers,
            "callers": plan.callers, "rate": plan.rate, "duration": plan.duration,
            "elapsed": round(trio.current_time() - self.started, 3),
            "sending": round(sending, 3),
            "connections": {"made": self.connected, "failed": self.failed,
                            "planned": len(self.clients)},
            "messages": {
                "sent": self.sent_messages, "acknowledged": acked,
                "per_second": round(acked / sending, 1) if sending else 0.0,
                "delivered": self.messages.delivered,
                "deliveries_per_second": (round(self.messages.delivered / sending, 1)
                                          if sending else 0.0),
                "lost": self.messages.lost, "duplicated": self.messages.duplicated,
                "out_of_order": self.messages.out_of_order,
            },
            "ack_latency": self.ack.summary(),
            "delivery_latency": self.delivery.summary(),
            "relays": {
                "sent": self.sent_relays, "delivered": self.relays.delivered,
                "lost": self.relays.lost, "duplicated": self.relays.duplicated,
                "out_of_order": self.relays.out_of_order,
                "latency": self.relay.summary(),
            },
            "errors": dict(sorted(self.errors.items())),
            "interrupted": self.interrupted,
            "passed": passed,
        }
        return document


def _reason(message: str) -> str:
    """A short, countable form of a connection failure's message."""
    if "(HTTP " in message:
        return "HTTP " + message.split("(HTTP ", 1)[1].split(")", 1)[0]
    if message.startswith("connection closed ("):
        return "close " + message.split("(", 1)[1].split(")", 1)[0]
    return message.split(":", 1)[0][:60]


# --- the summary ------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def print_summary(report: dict[str, Any]) -> None:
    """Print the report as a short table for people."""
    connections, messages, relays = report["connections"], report["messages"], report["relays"]
    rows = [
        ("connections", f"{connections['made']} made, {connections['failed']} failed"),
        ("messages", f"{messages['acknowledged']} acknowledged of {messages['sent']} sent, "
                     f"{messages['per_second']:g}/s"),
        ("deliveries", f"{messages['delivered']} ({messages['deliveries_per_second']:g}/s): "
                       f"{messages['lost']} lost, {messages['duplicated']} duplicated, "
                       f"{messages['out_of_order']} out of order"),
    ]
    if report["callers"]:
        rows.append(("relays", f"{relays['delivered']} of {relays['sent']}: "
                               f"{relays['lost']} lost, {relays['duplicated']} duplicated, "
                               f"{relays['out_of_order']} out of order"))
    for name, errors in report["errors"].items():
        rows.append(("error", f"{name}: {errors}"))
    if report["interrupted"]:
        rows.append(("interrupted", f"by {report['interrupted']}"))
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    print()
    print(f"{'latency (ms)':<12}  {'p50':>8}  {'p95':>8}  {'p99':>8}  {'max':>8}  {'count':>8}")
    latencies = [("ack", report["ack_latency"]), ("delivery", report["delivery_latency"])]
    if report["callers"]:
        latencies.append(("relay", relays["latency"]))
    for name, summary in latencies:
        print(f"{name:<12}  {_ms(summary['p50']):>8}  {_ms(summary['p95']):>8}  "
              f"{_ms(summary['p99']):>8}  {_ms(summary['max']):>8}  {summary['count']:>8}")
    print()
    print("passed" if report["passed"] else "FAILED", flush=True)

