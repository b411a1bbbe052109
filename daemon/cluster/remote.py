"""A client connection whose socket lives on another node, as the owner's serving loop sees it.

The owner of a room serves an edge's client with the same loop as its own clients: this
``Transport`` takes the client's frames from the link (a bounded queue that the link's
receiving task fills) and sends what the daemon writes back over the link, where the
edge writes it to the client's socket. The edge keeps what is the socket's business: the
keepalive pings, the slow-consumer cut (its output buffer), the Origin check and the
limit of connections per address.

Bounds: at most ``MAX_WAITING`` batches of frames wait for the owner's loop; a client
whose frames pile up past that (it sends faster than its room's owner handles them) is
closed with 1013 (try again later) rather than allowed to grow the queue.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import trio

from daemon.cluster.links import Deliver, Links, Shut
from daemon.net.transport import Closed

MAX_WAITING = 256
TRY_AGAIN_LATER = 1013


class RemoteSink:
    """What the daemon writes for a remote client: sent over the link, in order."""

    __slots__ = ("_cid", "_links", "_node", "closed", "on_stall", "stall_timeout")

    def __init__(self, links: Links, node: str, cid: int) -> None:
        self._links = links
        self._node = node
        self._cid = cid
        self.stall_timeout = 10.0
        self.on_stall: Callable[[], None] | None = None
        self.closed = False

    @property
    def pending(self) -> int:
        return 0  # the edge holds the client's output, and cuts a slow reader itself

    @property
    def corked(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        if not self.closed:
            self._links.send(self._node, Deliver(cids=[self._cid], data=data))

    def cork(self) -> None:
        pass  # the link batches what one pass of the scheduler sends already

    def uncork(self) -> None:
        pass

    def discard_pending(self) -> None:
        pass


class RemoteTransport:
    """One edge client, served by this node's loop (``daemon.net.transport.Transport``)."""

    __slots__ = ("_arrived", "_ended", "_queue", "cid", "node", "out")

    def __init__(self, links: Links, node: str, cid: int) -> None:
        self.node = node
        self.cid = cid
        self.out = RemoteSink(links, node, cid)
        self._queue: collections.deque[list[str | bytes]] = collections.deque()
        self._arrived = trio.Event()
        self._ended: int | None = None  # the client's close code, once it has gone

    def feed(self, frames: list[str | bytes]) -> bool:
        """Queue frames that came over the link; False when too many wait (close it)."""
        if self._ended is not None:
            return True
        if len(self._queue) >= MAX_WAITING:
            return False
        self._queue.append(frames)
        self._arrived.set()
        return True

    def gone(self, code: int) -> None:
        """The client's connection ended on its edge (or the link to the edge broke)."""
        if self._ended is None:
            self._ended = code
            self.out.closed = True
            self._arrived.set()

    async def receive(self) -> list[str | bytes]:
        while not self._queue:
            if self._ended is not None:
                raise Closed(self._ended)
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self._queue.popleft()

    async def aclose(self, code: int, reason: str = "") -> None:
        await trio.lowlevel.checkpoint()
        if self._ended is None:
            self._ended = code
            self.out.closed = True
            links = self.out._links
            links.send(self.node, Shut(cid=self.cid, code=code, reason=reason))

    def keepalive(self, now: float, interval: float, timeout: float) -> bool:
        return True  # the edge pings the client
