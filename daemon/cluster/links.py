"""Node-to-node links: ordered messages over Redis pub/sub, one inbox channel per node.

Theory of operation
-------------------
A node that terminates a client's WebSocket for a room owned elsewhere (an *edge*)
forwards the client's frames to the owner, and the owner sends the client's output back:
both travel as messages on links. ``send(node, message)`` never waits: messages for one
node queue in order, and one sender task per destination publishes what has queued as
one batch on that node's inbox channel. Redis delivers the publishes of one connection in
order, so a link is ordered as long as nothing is lost.

Loss is what the link sequence number is for: each batch from node A to node B carries
the next number of the A->B link. A receiver that sees a number skipped, or a sender
whose publish failed, cannot know which client frames went missing, so it reports the
link *broken* (``on_broken(node)``): the connections carried by it are closed with the
retryable close code, and their clients resume their sessions, on any node, with nothing
lost that was acknowledged. Every ``HEARTBEAT`` seconds each open link sends a batch even
when idle, so a lost last batch is noticed within that time. A node whose subscription
was lost (Redis restarted: pub/sub keeps nothing) may have lost anything sent to it, by
anyone: ``on_subscribed(first=False)`` tells its owner, which resets every link (and
tells the other nodes, with ``Reset``, to do the same for what they sent).

Bounds: a destination's queue holds at most ``MAX_QUEUED`` messages; past that (Redis
far slower than the clients) the link is reported broken rather than grown without end.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, TypeAlias

import coredis
import coredis.exceptions
import msgspec
import trio
from coredis.retry import NoRetryPolicy

from daemon.cluster.keys import inbox
from daemon.cluster.redis import UNREACHABLE, retry_delay

log = logging.getLogger(__name__)

HEARTBEAT = 1.0
_NO_ANSWER: tuple[type[BaseException], ...] = (trio.TooSlowError, *UNREACHABLE)
_LOST: tuple[type[Exception], ...] = (coredis.exceptions.ConnectionError,
                                      *(e for e in UNREACHABLE if issubclass(e, Exception)))
MAX_QUEUED = 100_000
MAX_BATCH = 512  # messages in one publish


# --- the messages --------------------------------------------------------------------------


class Message(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """Base of what travels on a link."""


class Open(Message, frozen=True, array_like=True, tag="o"):
    """Edge -> owner: a client connected to ``room`` (``kind`` room) or the admin endpoint."""

    cid: int
    kind: str
    room: str
    format: str  # the WebSocket subprotocol: the wire format of its frames
    peer: str  # the client's address, for the owner's logs and limits


class Frames(Message, frozen=True, array_like=True, tag="f"):
    """Edge -> owner: complete messages from the client (text as str, binary as bytes)."""

    cid: int
    frames: list[Any]  # str (a text message) or bytes (binary): MessagePack keeps which


class Gone(Message, frozen=True, array_like=True, tag="g"):
    """Edge -> owner: the client's connection ended (``code``, 1006 without a close)."""

    cid: int
    code: int


class Deliver(Message, frozen=True, array_like=True, tag="d"):
    """Owner -> edge: framed WebSocket bytes to write, the same to each of ``cids``."""

    cids: list[int]
    data: bytes


class Shut(Message, frozen=True, array_like=True, tag="s"):
    """Owner -> edge: close the client's connection with ``code``."""

    cid: int
    code: int
    reason: str


class Reset(Message, frozen=True, array_like=True, tag="r"):
    """This node (re)subscribed to its inbox: what was sent to it before may be lost."""


class AdminCall(Message, frozen=True, array_like=True, tag="a"):
    """Edge -> owner: one admin request for a room the owner holds; the reply goes to cid."""

    cid: int
    token: str | None
    format: str
    data: Any  # str or bytes, as the client sent it


AnyMessage: TypeAlias = Open | Frames | Gone | Deliver | Shut | AdminCall | Reset


class Batch(msgspec.Struct, frozen=True, array_like=True):
    sender: str
    seq: int  # of the sender -> receiver link
    messages: list[AnyMessage]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Batch).decode


# --- the links -----------------------------------------------------------------------------


class _Outbox:
    """What waits to go to one node, and the link's next number."""

    __slots__ = ("messages", "next_seq", "ready")

    def __init__(self) -> None:
        self.messages: collections.deque[AnyMessage] = collections.deque()
        self.next_seq = 1
        self.ready = trio.Event()


class Links:
    """This node's links to the others (see the module docstring).

    ``on_message(node, message)`` runs for every message received, in order, from the
    receiving task; ``on_broken(node)`` when a link to or from ``node`` lost something.
    """

    def __init__(self, redis: coredis.Redis[bytes], node: str, *,
                 on_message: Callable[[str, AnyMessage], None],
                 on_broken: Callable[[str], None],
                 on_subscribed: Callable[[bool], None] = lambda first: None) -> None:
        self.node = node
        self._redis = redis
        self._on_message = on_message
        self._on_broken = on_broken
        self._on_subscribed = on_subscribed
        self._outboxes: dict[str, _Outbox] = {}
        self._expected: dict[str, int] = {}  # sender -> the seq its next batch must have
        self._nursery: trio.Nursery | None = None
        self.connected = False  # subscribed to the inbox right now
        self.batches_sent = 0
        self.batches_received = 0

    # --- sending -----------------------------------------------------------------------------

    def send(self, node: str, message: AnyMessage) -> None:
        """Queue ``message`` for ``node`` after everything queued for it before. Never waits.

        Consecutive ``Deliver``s of the same bytes object (one broadcast to several
        clients of one edge) travel as one, listing every connection.
        """
        outbox = self._outboxes.get(node)
        if outbox is None:
            outbox = self._outboxes[node] = _Outbox()
            if self._nursery is not None:
                self._nursery.start_soon(self._sender, node, outbox)
        queued = outbox.messages
        if isinstance(message, Deliver) and queued:
            last = queued[-1]
            if isinstance(last, Deliver) and last.data is message.data:
                last.cids.extend(message.cids)
                return
        if len(queued) >= MAX_QUEUED:
            log.warning("link to node %s: %d messages queued; dropping them", node, len(queued))
            queued.clear()
            self._on_broken(node)
            return
        queued.append(message)
        outbox.ready.set()

    async def _sender(self, node: str, outbox: _Outbox) -> None:
        channel = inbox(node)
        while True:
            with trio.move_on_after(HEARTBEAT):
                await outbox.ready.wait()
            outbox.ready = trio.Event()
            queued = outbox.messages
            # Heartbeats are empty batches: they carry the link's number alone.
            while True:
                messages = [queued.popleft() for _ in range(min(len(queued), MAX_BATCH))]
                batch = Batch(self.node, outbox.next_seq, messages)
                outbox.next_seq += 1
                try:
                    with trio.fail_after(5):
                        await self._redis.publish(channel, _encode(batch))
                    self.batches_sent += 1
                except _NO_ANSWER as exc:
                    if messages:
                        log.warning("link to node %s lost %d messages: %s", node,
                                    len(messages), exc or type(exc).__name__)
                        self._on_broken(node)
                    await trio.sleep(0.2)
                if not queued:
                    break

    def forget(self, node: str) -> None:
        """Drop what waits for ``node`` (it is gone) and start its link over if it returns."""
        outbox = self._outboxes.get(node)
        if outbox is not None:
            outbox.messages.clear()
        self._expected.pop(node, None)

    # --- receiving ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send and receive until cancelled; ``started`` once subscribed the first time."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for node, outbox in self._outboxes.items():
                nursery.start_soon(self._sender, node, outbox)
            await self._receive(task_status)

    async def _receive(self, task_status: trio.TaskStatus[None]) -> None:
        attempt = 0
        started = False
        while True:
            try:
                async with self._redis.pubsub(channels=[inbox(self.node)],
                                              retry_policy=NoRetryPolicy(),
                                              ignore_subscribe_messages=True) as pubsub:
                    self.connected = True
                    attempt = 0
                    self._on_subscribed(not started)
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        message = await pubsub.get_message(timeout=HEARTBEAT)
                        if message is not None and message.get("type") == "message":
                            self._received(message["data"])
            except* _LOST as group:
                log.warning("subscription to this node's inbox lost (%s); resubscribing",
                            _first(group))
            self.connected = False
            # Anything published meanwhile is gone: on_subscribed(False) says so, once the
            # subscription is back; the links' numbers start over.
            self._expected.clear()
            await trio.sleep(retry_delay(attempt))
            attempt += 1

    def _received(self, data: Any) -> None:
        try:
            batch = _decode(data)
        except msgspec.DecodeError:
            log.error("a malformed batch on this node's inbox was ignored")
            return
        self.batches_received += 1
        expected = self._expected.get(batch.sender)
        if expected is not None and batch.seq != expected:
            log.warning("link from node %s skipped from batch %d to %d", batch.sender,
                        expected, batch.seq)
            self._on_broken(batch.sender)
        self._expected[batch.sender] = batch.seq + 1
        for message in batch.messages:
            try:
                self._on_message(batch.sender, message)
            except Exception:
                log.exception("handling a message from node %s failed", batch.sender)


def _first(group: BaseExceptionGroup[Any]) -> str:
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return str(leaves[0]) if leaves else "connection lost"
