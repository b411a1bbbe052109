"""Joining a cluster at start: Redis reached and checked, the shared secrets in place.

``open_cluster`` connects to the Redis of ``Config.redis``, refuses one that would
acknowledge writes before fsyncing them (``daemon.cluster.redis.check_durability``), and
makes this node's data directory hold the cluster's admin token and join-token secret
(the first node to start stores its own; later ones adopt them), so that a local
``roomctl`` reads the right admin token and a token from any node works on all of them.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import coredis
import trio

from daemon.cluster.nodes import NodeInfo, Nodes, shared_secrets
from daemon.cluster.ownership import Ownership
from daemon.cluster.redis import UNREACHABLE, RedisSetupError, check_durability, client, describe
from daemon.cluster.store import RedisWriter
from daemon.config import Config, write_secret_file
from protocol.local import ADMIN_TOKEN_FILE, JOIN_SECRET_FILE

log = logging.getLogger(__name__)



@dataclass
class ClusterParts:
    """What a node runs on: its Redis client, writer, leases and heartbeat."""

    redis: coredis.Redis[bytes]
    writer: RedisWriter
    ownership: Ownership
    nodes: Nodes


@asynccontextmanager
async def open_cluster(config: Config, version: str) -> AsyncIterator[ClusterParts]:
    """Yield this node's cluster parts for the block; Redis is closed after it.

    Raises RedisSetupError (one line) when Redis cannot be reached at start or would not
    keep acknowledged writes.
    """
    assert config.redis is not None
    url = config.redis
    redis = client(url)
    # The client's connections run in tasks of its own; a cancellation of this block
    # (SIGTERM) would tear them down before the daemon has released its rooms and
    # written its last batch. So cancelling from outside cancels only ``body``, and the
    # client closes after the block, whatever ended it.
    async with _outside_cancellation_cancels() as body, redis:
        with body:
            yield await _join(redis, config, version)


async def _join(redis: coredis.Redis[bytes], config: Config, version: str) -> ClusterParts:
    assert config.redis is not None
    url = config.redis
    try:
        with trio.fail_after(10):
            await redis.ping()
            await check_durability(redis, url, relaxed=config.redis_durability == "relaxed")
            await _share_secrets(redis, config)
    except RedisSetupError:
        raise
    except trio.TooSlowError:
        raise RedisSetupError(f"cannot reach Redis at {describe(url)}: no answer in 10 s"
                              ) from None
    except UNREACHABLE as exc:
        raise RedisSetupError(f"cannot reach Redis at {describe(url)}: "
                              f"{exc or type(exc).__name__}") from None
    node = config.node_name()
    ownership = Ownership(redis, node, ttl=config.redis_lease)
    writer = RedisWriter(redis, owner_of=ownership.owner_of, on_fenced=lambda room: None)
    nodes = Nodes(redis, NodeInfo(node=node, version=version, started_at=time.time(),
                                  address=f"{config.host}:{config.port}"),
                  # Three missed heartbeats make a node dead: well within a lease.
                  interval=config.redis_lease / 5)
    log.info("node %s joined the cluster on %s", node, describe(url),
             extra={"event": "cluster-joined", "node": node, "redis": describe(url)})
    return ClusterParts(redis, writer, ownership, nodes)


@asynccontextmanager
async def _outside_cancellation_cancels() -> AsyncIterator[trio.CancelScope]:
    """Shield the block from cancellation from outside; yield the scope it cancels instead."""
    scope = trio.CancelScope()

    async def relay() -> None:
        try:
            await trio.sleep_forever()
        finally:
            scope.cancel()

    async with trio.open_nursery() as guard:
        guard.start_soon(relay)
        with trio.CancelScope(shield=True):
            yield scope
        guard.cancel_scope.cancel()


async def _share_secrets(redis: coredis.Redis[bytes], config: Config) -> None:
    """Make the data directory hold the cluster's secrets (this node's, if it is first)."""
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    local_token = _read(data_dir / ADMIN_TOKEN_FILE) or secrets.token_urlsafe(32)
    local_secret = _read(data_dir / JOIN_SECRET_FILE) or secrets.token_hex(32)
    token, secret = await shared_secrets(redis, admin_token=local_token,
                                         join_secret=local_secret)
    for name, value in ((ADMIN_TOKEN_FILE, token), (JOIN_SECRET_FILE, secret)):
        if _read(data_dir / name) != value:
            write_secret_file(data_dir / name, value + "\n")


async def sync_admin_token(redis: coredis.Redis[bytes], config: Config) -> None:
    """Copy the cluster's admin token (rotated on some node) into this node's file."""
    from daemon.cluster.keys import SECRETS

    with trio.fail_after(5):
        token = await redis.hget(SECRETS, "admin-token")
    if token is not None:
        value = token.decode()
        if _read(config.data_dir / ADMIN_TOKEN_FILE) != value:
            write_secret_file(config.data_dir / ADMIN_TOKEN_FILE, value + "\n")
            log.info("the cluster's admin token changed", extra={"event": "admin-token"})


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
