"""The daemon's serving loop over a Transport that is not a socket.

``Daemon.serve_connection`` sees only ``daemon.net.transport.Transport``: batches of
messages in, framed bytes out through a ``Sink``. Here the transport is a bounded memory
channel in and a list of writes out, the shape a connection served on behalf of another
node will have, and the daemon is a real one (engine, chat app, store writer on an
in-memory SQLite) without its TCP front. What each peer receives is read back by parsing
the sink's writes as WebSocket frames with wsproto's client-side parser.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import wsproto.frame_protocol as fp

from daemon.apps.chat import ChatApp
from daemon.config import AdminTokenFile, Config
from daemon.net.transport import Closed
from daemon.server import Daemon
from daemon.store import Store, StoreWriter
from protocol import WireFormat

WAIT = 5.0


class ListSink:
    """A Sink that keeps every write; corked writes leave as one on uncork."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.stall_timeout = 10.0
        self.on_stall: Any = None
        self._cork: list[bytes] | None = None

    @property
    def pending(self) -> int:
        return 0

    @property
    def corked(self) -> bool:
        return self._cork is not None

    def write(self, data: bytes) -> None:
        if self._cork is not None:
            self._cork.append(data)
        else:
            self.writes.append(data)

    def cork(self) -> None:
        if self._cork is None:
            self._cork = []

    def uncork(self) -> None:
        held, self._cork = self._cork, None
        if held:
            self.writes.append(b"".join(held))

    def discard_pending(self) -> None:
        self._cork = None

    def frames(self, since: int = 0) -> list[dict[str, Any]]:
        parser = fp.FrameProtocol(client=True, extensions=[])
        parser.receive_bytes(b"".join(self.writes[since:]))
        return [json.loads(f.payload) for f in parser.received_frames()]


class ChannelTransport:
    """Messages from a bounded channel (one batch: all that is there), output to a ListSink."""

    def __init__(self) -> None:
        self.inbox, self._receiver = trio.open_memory_channel[str](16)
        self.out = ListSink()
        self.closed_with: tuple[int, str] | None = None

    async def receive(self) -> list[str | bytes]:
        try:
            batch: list[str | bytes] = [await self._receiver.receive()]
        except trio.EndOfChannel:
            raise Closed(1000, "the channel ended") from None
        while True:
            try:
                batch.append(self._receiver.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return batch

    async def aclose(self, code: int, reason: str = "") -> None:
        self.closed_with = (code, reason)

    def keepalive(self, now: float, interval: float, timeout: float) -> bool:
        return True

    def send(self, *frames: dict[str, Any]) -> None:
        for frame in frames:
            self.inbox.send_nowait(json.dumps(frame))


@asynccontextmanager
async def a_daemon(tmp_path: pathlib.Path) -> AsyncIterator[tuple[Daemon, trio.Nursery]]:
    config = Config(host="127.0.0.1", port=0, data_dir=tmp_path, memory=True, rate_limit=0)
    writer = StoreWriter(Store.open(None))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        daemon = Daemon(config, [ChatApp()], nursery, writer, AdminTokenFile(tmp_path))
        nursery.start_soon(daemon.flush_corked)
        yield daemon, nursery
        nursery.cancel_scope.cancel()


async def settle() -> None:
    # Enough scheduler passes for every batch, and the flusher after them, to run.
    for _ in range(20):
        await trio.lowlevel.checkpoint()


async def joined(daemon: Daemon, nursery: trio.Nursery, name: str) -> ChannelTransport:
    transport = ChannelTransport()
    nursery.start_soon(lambda: daemon.serve_connection(transport, WireFormat.JSON,
                                                       ("10.0.0.1", 1), room="hall"))
    transport.send({"type": "hello", "name": name, "ref": "h"})
    with trio.fail_after(WAIT):
        while not any(f["type"] == "welcome" for f in transport.out.frames()):
            await trio.sleep(0.01)
    return transport


async def test_the_serving_loop_runs_a_session_over_any_transport(
        tmp_path: pathlib.Path) -> None:
    async with a_daemon(tmp_path) as (daemon, nursery):
        alice = await joined(daemon, nursery, "alice")
        bob = await joined(daemon, nursery, "bob")
        alice.send({"type": "send-message", "text": "over a channel", "ref": "m"})
        with trio.fail_after(WAIT):
            while not any(f["type"] == "message-posted" for f in bob.out.frames()):
                await trio.sleep(0.01)
        [ok] = [f for f in alice.out.frames() if f.get("ref") == "m"]
        assert (ok["type"], ok["seq"]) == ("ok", 1) and ok["at"] > 0, ok
        alice.send({"type": "leave", "ref": "bye"})
        with trio.fail_after(WAIT):
            while alice.closed_with is None:
                await trio.sleep(0.01)
        assert alice.closed_with == (1000, "left the room")
        bob.inbox.close()  # the other end went away
        with trio.fail_after(WAIT):
            while daemon.connections:
                await trio.sleep(0.01)


async def test_what_one_batch_sends_a_peer_leaves_in_one_write(tmp_path: pathlib.Path) -> None:
    async with a_daemon(tmp_path) as (daemon, nursery):
        alice = await joined(daemon, nursery, "alice")
        bob = await joined(daemon, nursery, "bob")
        await settle()
        before = len(bob.out.writes)
        alice.send(*[{"type": "set-media-state", "audio_muted": n % 2 == 1,
                      "video_muted": True} for n in range(5)])
        await settle()
        assert len(bob.out.writes) == before + 1
        assert [f["type"] for f in bob.out.frames(before)] == ["participant-updated"] * 5


async def test_joins_ready_together_reach_each_peer_in_one_write(
        tmp_path: pathlib.Path) -> None:
    async with a_daemon(tmp_path) as (daemon, nursery):
        people = [await joined(daemon, nursery, name) for name in ("ann", "ben", "cy", "di")]
        ann, ben, cy, di = people
        ann.send({"type": "join"})
        await settle()
        before = len(ann.out.writes)
        # Three joins ready in the same scheduler pass, on three connections.
        for transport in (ben, cy, di):
            transport.send({"type": "join"})
        await settle()
        assert len(ann.out.writes) == before + 1
        added = [f for f in ann.out.frames(before) if f["type"] == "add-peer"]
        assert len(added) == 3 and all(f["participant"]["in_call"] for f in added)
