"""Several real ``roomctl serve --redis`` nodes on one real redis-server, for the cluster tests.

Each node is a subprocess on its own port and data directory, logging (JSON lines) to a
file of its own rather than a pipe nobody reads. Nodes can be killed (SIGKILL), paused
(SIGSTOP/SIGCONT) and started again on the same data directory and node id.
"""

from __future__ import annotations

import os
import pathlib
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio_websocket

from tests.conftest import ROOT, WAIT, Client
from tests.redis_util import RedisServer, running_redis


@dataclass
class Node:
    name: str
    data_dir: pathlib.Path
    log: pathlib.Path
    args: tuple[str, ...]
    proc: subprocess.Popen[str] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    redis: RedisServer
    root: pathlib.Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> Node:
        """Start node ``name`` (again, on the same port, data and id, if it ran before)."""
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = Node(name, self.root / name, self.root / f"{name}.log",
                                           args)
        port = str(node.port) if node.port else "0"
        log = node.log.open("a")
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "roomctl", "serve", "--port", port, "--data-dir",
             str(node.data_dir), "--redis", self.redis.url, "--node-id", name,
             "--log-format", "json", *node.args],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=dict(os.environ))
        log.close()
        assert node.proc.stdout is not None
        ready, _, _ = select.select([node.proc.stdout], [], [], 20)
        line = node.proc.stdout.readline().strip() if ready else ""
        if not line.startswith("listening on "):
            node.proc.kill()
            raise AssertionError(f"node {name} did not start: {line!r}\n"
                                 + node.log.read_text()[-3000:])
        node.port = int(line.rpartition(":")[2])
        return node

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        node = self.nodes[name]
        assert node.proc is not None
        node.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            node.proc.wait(timeout=30)

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
                node.proc.wait(timeout=30)

    def log_of(self, name: str) -> str:
        return self.nodes[name].log.read_text()


@contextmanager
def running_cluster(root: pathlib.Path, *names: str, args: tuple[str, ...] = ()
                    ) -> Iterator[Cluster]:
    """Run a redis-server and a node per name for the block."""
    with running_redis(root / "redis") as redis:
        cluster = Cluster(redis, root)
        try:
            for name in names:
                cluster.start(name, *args)
            yield cluster
        finally:
            cluster.stop_all()


@asynccontextmanager
async def client(node: Node, room: str, *, binary: bool = False) -> AsyncIterator[Client]:
    """A real WebSocket client of ``room`` on ``node``."""
    subprotocols = ["roomctl.v1.msgpack"] if binary else ["roomctl.v1"]
    async with trio_websocket.open_websocket_url(
            f"{node.url}/v1/rooms/{room}", subprotocols=subprotocols, connect_timeout=WAIT,
            disconnect_timeout=WAIT) as ws:
        yield Client(ws, binary)


@asynccontextmanager
async def admin(node: Node) -> AsyncIterator[Client]:
    async with trio_websocket.open_websocket_url(
            f"{node.url}/v1/admin", connect_timeout=WAIT, disconnect_timeout=WAIT) as ws:
        admin_client = Client(ws, False)
        welcome = await admin_client.request({"type": "hello", "token": node.admin_token})
        assert welcome["type"] == "welcome", welcome
        yield admin_client


async def history(node: Node, room: str) -> list[dict[str, Any]]:
    """Every message of ``room``, read through ``node`` (as a hidden observer)."""
    messages: list[dict[str, Any]] = []
    async with client(node, room) as observer:
        welcome = await observer.hello(None, hidden=True, token=node.admin_token, create=False)
        assert welcome["type"] == "welcome", welcome
        after = 0
        while True:
            page = await observer.request({"type": "get-messages", "after": after,
                                           "limit": 1000})
            messages += page["messages"]
            if not page["has_more"]:
                return messages
            after = page["messages"][-1]["seq"]


async def eventually(check: Any, timeout: float = 15.0, every: float = 0.1) -> Any:
    """Poll ``await check()`` until it returns something truthy; return it."""
    with trio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(every)
