"""Which node owns each room: leases in Redis with a fencing epoch, and this node's renewals.

A node owns a room while it holds the room's lease (``{r:NAME}:lease``, ``"<node>
<epoch>"``, with an expiry of ``ttl`` seconds), renewed every ``ttl / 3``. Claiming takes
a free lease and the next epoch; no two nodes can hold one room's lease at once, and every
write checks the epoch (``daemon.cluster.scripts``), so a node that lost its lease while
paused writes nothing when it wakes. It also stops acting as the owner by itself: when no
renewal has succeeded for ``0.8 * ttl`` (Redis unreachable), it gives up every room
before another node could have claimed one (``on_lost``), and claims them again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import coredis
import trio

from daemon.cluster import scripts
from daemon.cluster.keys import RoomKeys
from daemon.cluster.redis import UNREACHABLE

log = logging.getLogger(__name__)

_NO_ANSWER: tuple[type[BaseException], ...] = (trio.TooSlowError, *UNREACHABLE)


def holder_node(owner: str | None) -> str | None:
    """Return the node of a lease value ``"<node> <epoch>"``."""
    return None if owner is None else owner.rpartition(" ")[0]


class Ownership:
    """This node's leases (see the module docstring)."""

    def __init__(self, redis: coredis.Redis[bytes], node: str, *, ttl: float = 10.0) -> None:
        self.node = node
        self.ttl = ttl
        self._redis = redis
        self._claim = redis.register_script(scripts.CLAIM)
        self._renew = redis.register_script(scripts.RENEW)
        self._release = redis.register_script(scripts.RELEASE)
        self.owned: dict[str, str] = {}  # room -> this node's lease value
        self._last_renewal = trio.current_time()

    def owner_of(self, room: str) -> str | None:
        """Return this node's lease value for ``room``, or None when it does not own it."""
        return self.owned.get(room)

    async def holder(self, room: str) -> str | None:
        """Return the node that owns ``room`` now, or None when nobody does."""
        with trio.fail_after(5):
            value = await self._redis.get(RoomKeys(room).lease)
        return holder_node(value.decode() if isinstance(value, bytes) else value)

    async def claim(self, room: str) -> str | None:
        """Claim ``room``; return None when won, else the node that holds it.

        Raises trio.TooSlowError or a connection error when Redis does not answer.
        """
        keys = RoomKeys(room)
        with trio.fail_after(5):
            reply: Any = await self._claim(keys=[keys.lease, keys.epoch],
                                           args=[self.node, int(self.ttl * 1000)])
        won, value = reply
        owner = value.decode() if isinstance(value, bytes) else str(value)
        if won == 1:
            self.owned[room] = owner
            log.info("claimed room %r (lease %s)", room, owner,
                     extra={"event": "room-claimed", "room": room, "lease": owner})
            return None
        return holder_node(owner)

    async def release(self, room: str) -> None:
        """Give up ``room`` (its new owner, whoever claims it next, continues it)."""
        owner = self.owned.pop(room, None)
        if owner is None:
            return
        keys = RoomKeys(room)
        try:
            with trio.fail_after(5):
                await self._release(keys=[keys.lease], args=[owner])
        except _NO_ANSWER:
            pass  # it lapses by itself within the lease time
        log.info("released room %r", room, extra={"event": "room-released", "room": room})

    async def run(self, on_lost: Callable[[str], None]) -> None:
        """Renew the leases every ``ttl / 3`` until cancelled; ``on_lost(room)`` for each
        room whose lease is gone (or can no longer be vouched for)."""
        period = self.ttl / 3
        while True:
            await trio.sleep(period)
            rooms = dict(self.owned)
            try:
                with trio.fail_after(period):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        calls: dict[str, Any] = {room: self._renew(keys=[RoomKeys(room).lease],
                                                   args=[owner, int(self.ttl * 1000)],
                                                   client=pipe)
                                 for room, owner in rooms.items()}
                    kept = {room: await call for room, call in calls.items()}
            except _NO_ANSWER as exc:
                silent = trio.current_time() - self._last_renewal
                log.warning("could not renew %d leases (%s) for %.1f s", len(rooms),
                            exc or type(exc).__name__, silent)
                if silent > 0.8 * self.ttl:
                    for room in list(self.owned):
                        self.owned.pop(room, None)
                        on_lost(room)
                continue
            self._last_renewal = trio.current_time()
            for room, still in kept.items():
                if not still and self.owned.get(room) == rooms[room]:
                    del self.owned[room]
                    log.warning("lost the lease of room %r: another node owns it now", room,
                                extra={"event": "lease-lost", "room": room})
                    on_lost(room)
