"""The nodes of a cluster: each one's heartbeat, and the secrets they share.

Each node keeps ``{roomctl}:node:<id>`` alive (an expiry of ``3 * interval`` seconds,
refreshed every ``interval``); a node whose key has gone is dead, and the edges that
forwarded clients to it close them so that they resume elsewhere. The admin token and
the join-token secret are the cluster's: the first node to start stores its own (HSETNX),
every other node adopts them, so a token made on any node works on all of them.
"""

from __future__ import annotations

import logging
import secrets

import coredis
import msgspec
import trio

from daemon.cluster.keys import SECRETS, node_key
from daemon.cluster.redis import UNREACHABLE

log = logging.getLogger(__name__)

_NO_ANSWER: tuple[type[BaseException], ...] = (trio.TooSlowError, *UNREACHABLE)


class NodeInfo(msgspec.Struct, frozen=True):
    node: str
    version: str
    started_at: float
    address: str


class Nodes:
    """This node's heartbeat, and what it knows of the others."""

    def __init__(self, redis: coredis.Redis[bytes], info: NodeInfo, *,
                 interval: float = 1.0) -> None:
        self.info = info
        self.interval = interval
        self._redis = redis
        self.healthy = False  # the last heartbeat reached Redis
        self.last_beat = 0.0

    async def beat(self) -> None:
        """Refresh this node's key once. Raises on a Redis failure."""
        with trio.fail_after(max(self.interval, 1.0)):
            await self._redis.set(node_key(self.info.node), msgspec.json.encode(self.info),
                                  px=int(self.interval * 3000))
        self.healthy = True
        self.last_beat = trio.current_time()

    async def run(self) -> None:
        """Beat every ``interval`` until cancelled; a failed beat marks the node unhealthy."""
        while True:
            try:
                await self.beat()
            except _NO_ANSWER as exc:
                if self.healthy:
                    log.warning("Redis unreachable: %s", exc or type(exc).__name__,
                                extra={"event": "redis-unreachable"})
                self.healthy = False
            await trio.sleep(self.interval)

    async def alive(self, nodes: set[str]) -> set[str]:
        """Return which of ``nodes`` have a live heartbeat. Raises on a Redis failure."""
        if not nodes:
            return set()
        ordered = sorted(nodes)
        with trio.fail_after(max(self.interval, 1.0)):
            async with self._redis.pipeline(transaction=False) as pipe:
                calls = [pipe.exists([node_key(node)]) for node in ordered]
            present = [await call for call in calls]
        return {node for node, count in zip(ordered, present, strict=True) if count}

    async def others(self) -> set[str]:
        """Return the other nodes with a live heartbeat. Raises on a Redis failure."""
        prefix = node_key("")
        found: set[str] = set()
        with trio.fail_after(5):
            async for key in self._redis.scan_iter(match=prefix + "*"):
                name = key.decode()[len(prefix):]
                if name != self.info.node:
                    found.add(name)
        return found

    async def leave(self) -> None:
        """Remove this node's heartbeat now (a clean shutdown), so edges need not wait."""
        try:
            with trio.fail_after(2):
                await self._redis.delete([node_key(self.info.node)])
        except _NO_ANSWER:
            pass


async def shared_secrets(redis: coredis.Redis[bytes], *, admin_token: str,
                         join_secret: str) -> tuple[str, str]:
    """Return the cluster's (admin token, join secret): this node's, if it is the first.

    Raises on a Redis failure.
    """
    with trio.fail_after(5):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(SECRETS, "admin-token", admin_token)
            pipe.hsetnx(SECRETS, "join-secret", join_secret)
            values = pipe.hmget(SECRETS, ["admin-token", "join-secret"])
        token, secret = await values
    assert token is not None and secret is not None
    return token.decode(), secret.decode()


async def rotate_admin_token(redis: coredis.Redis[bytes]) -> str:
    """Replace the cluster's admin token; return the new one. Raises on a Redis failure."""
    token = secrets.token_urlsafe(32)
    with trio.fail_after(5):
        await redis.hset(SECRETS, {"admin-token": token})
    return token
