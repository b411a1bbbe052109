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
    """Every message of ``room``, read through ``node`` (as a hidden observer).

    Like any client, it reconnects when the room moves meanwhile (4014: its owner changed
    after a node or Redis came back), a few times."""
    for _ in range(20):
        try:
            return await _read_history(node, room)
        except trio_websocket.ConnectionClosed as exc:
            if exc.reason is None or exc.reason.code != 4014:
                raise
            await trio.sleep(0.2)
    return await _read_history(node, room)


async def _read_history(node: Node, room: str) -> list[dict[str, Any]]:
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


@dataclass
class Poster:
    """Posts ``count`` messages to ``room`` through whichever of ``nodes`` answers, as a
    careful client does: every message has an idempotency key, a dropped connection
    (4014 room moved, 1006, 1011...) is reconnected, and what was not acknowledged is
    sent again with its key. ``acked`` maps each text to the seq its ok gave."""

    nodes: list[Node]
    room: str
    name: str
    count: int
    window: int = 8
    acked: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)  # error codes seen
    reconnects: int = 0
    progressed: trio.Event = field(default_factory=trio.Event)
    where: str = ""  # what it does now, for a test's failure message

    # Messages are made as they are sent (count may be huge: "until stopped"); those sent
    # and not yet acknowledged go again first on the next connection, with their keys.
    made: int = 0
    unanswered: dict[str, None] = field(default_factory=dict)  # in order of first sending

    def _take(self, pending: list[str]) -> str | None:
        if pending:
            return pending.pop(0)
        if self.made >= self.count:
            return None
        text = f"{self.name}-{self.made}"
        self.made += 1
        self.unanswered[text] = None
        return text

    async def run(self, deadline: float = 120.0) -> None:
        with trio.fail_after(deadline):
            attempt = 0
            while len(self.acked) < self.count:
                node = self.nodes[attempt % len(self.nodes)]
                attempt += 1
                try:
                    self.where = f"connecting to {node.name}"
                    await self._session(node)
                except (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError,
                        OSError) as exc:
                    self.reconnects += 1
                    self.where = f"{node.name}: {exc!r}"[:200]
                    await trio.sleep(0.2)

    async def _session(self, node: Node) -> None:
        async with trio_websocket.open_websocket_url(
                f"{node.url}/v1/rooms/{self.room}", connect_timeout=WAIT,
                disconnect_timeout=1) as ws:
            await ws.send_message(_json({"type": "hello", "ref": "h", "name": self.name,
                                         "token": node.admin_token}))
            while True:
                welcome = _parse(await ws.get_message())
                if welcome.get("ref") == "h":
                    break
            if welcome["type"] != "welcome":
                self.refusals[welcome.get("code", "?")] = \
                    self.refusals.get(welcome.get("code", "?"), 0) + 1
                await trio.sleep(0.2)
                return
            self.where = f"posting through {node.name}"
            pending = list(self.unanswered)
            in_flight: set[str] = set()
            while True:
                while len(in_flight) < self.window:
                    text = self._take(pending)
                    if text is None:
                        break
                    in_flight.add(text)
                    await ws.send_message(_json({"type": "send-message", "text": text,
                                                 "key": text, "ref": text}))
                if not in_flight:
                    return  # every message made is acknowledged
                reply = _parse(await ws.get_message())
                ref = reply.get("ref")
                if ref not in in_flight:
                    continue
                in_flight.discard(ref)
                if reply["type"] == "ok":
                    self.acked[ref] = reply["seq"]
                    self.unanswered.pop(ref, None)
                    self.progressed.set()
                else:
                    self.refusals[reply["code"]] = self.refusals.get(reply["code"], 0) + 1
                    pending.insert(0, ref)
                    await trio.sleep(reply.get("retry_after") or 0.1)


def _json(frame: dict[str, Any]) -> str:
    import json

    return json.dumps(frame)


def _parse(data: str | bytes) -> dict[str, Any]:
    import json

    frame: dict[str, Any] = json.loads(data)
    return frame


def check_log(log: list[dict[str, Any]], posters: list[Poster]) -> None:
    """The log holds seqs 1..N without a gap, each message once, and every acknowledged
    message at the seq its ok gave."""
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))
    texts = [m["text"] for m in log]
    assert len(texts) == len(set(texts)), "a message was stored twice"
    stored = {m["text"]: m["seq"] for m in log}
    for poster in posters:
        for text, seq in poster.acked.items():
            assert stored.get(text) == seq, (text, seq, stored.get(text))
