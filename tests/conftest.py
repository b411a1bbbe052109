"""Shared fixtures: a real daemon on a real port, and real WebSocket clients.

``server`` starts ``daemon.serve`` inside the test's trio run on 127.0.0.1 port 0;
``connect`` opens real trio-websocket clients against it. Every wait is bounded.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import trio
import trio_websocket

import daemon
from daemon.config import read_admin_token
from tests.front_util import recorder, start_server  # noqa: F401 - fixtures for the front's tests

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAIT = 5.0  # seconds any single expected frame may take

# --- a hermetic environment ------------------------------------------------------------------
# No test may read or write the user's own state, config or home: a daemon the user ran
# (the README's first command) leaves an admin token in $XDG_STATE_HOME/roomctl, which a
# `roomctl` started by a test would otherwise present to the test's daemon. So the whole
# session, and every subprocess it starts, gets its own HOME and XDG directories, and no
# ROOMCTL_* variable from outside (tests set the ones they mean). ROOMCTL_TEST_* variables
# configure the suite itself and stay.
USER_HOME = pathlib.Path.home()
HERMETIC_ROOT = pathlib.Path(tempfile.mkdtemp(prefix="roomctl-tests-"))
_HERMETIC_DIRS = {
    "HOME": HERMETIC_ROOT / "home",
    "XDG_STATE_HOME": HERMETIC_ROOT / "state",
    "XDG_CONFIG_HOME": HERMETIC_ROOT / "config",
    "XDG_CACHE_HOME": HERMETIC_ROOT / "cache",
    "XDG_DATA_HOME": HERMETIC_ROOT / "share",
    "XDG_RUNTIME_DIR": HERMETIC_ROOT / "run",
}


def _make_hermetic() -> None:
    for name, path in _HERMETIC_DIRS.items():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ[name] = str(path)
    for name in [n for n in os.environ if n.startswith("ROOMCTL_")]:
        if not name.startswith("ROOMCTL_TEST_"):
            del os.environ[name]


_make_hermetic()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(HERMETIC_ROOT, ignore_errors=True)


class _Address:
    """ws:// and http:// base URLs of a daemon listening on ``host``:``port``."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Server(_Address):
    host: str
    port: int
    data_dir: pathlib.Path
    config: daemon.Config

    @property
    def admin_token(self) -> str:
        token = read_admin_token(self.data_dir)
        assert token
        return token


class Client:
    """A real WebSocket client speaking protocol v1 as dicts (JSON or MessagePack)."""

    _refs = itertools.count(1)

    def __init__(self, ws: trio_websocket.WebSocketConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.welcome: dict[str, Any] | None = None
        # Frames that arrived while request() waited for its reply, in order.
        self.pending: collections.deque[dict[str, Any]] = collections.deque()

    async def send(self, frame: dict[str, Any]) -> None:
        if self.binary:
            await self.ws.send_message(msgspec.msgpack.encode(frame))
        else:
            await self.ws.send_message(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        """Return the next frame (first those that ``request`` set aside)."""
        if self.pending:
            return self.pending.popleft()
        with trio.fail_after(timeout):
            data = await self.ws.get_message()
        if isinstance(data, bytes):
            frame: dict[str, Any] = msgspec.msgpack.decode(data)
        else:
            frame = json.loads(data)
        return frame

    async def recv_type(self, *types: str, timeout: float = WAIT) -> dict[str, Any]:
        """Return the next frame of one of ``types``, skipping others."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if frame["type"] in types:
                    return frame

    async def request(self, frame: dict[str, Any], timeout: float = WAIT) -> dict[str, Any]:
        """Send ``frame`` with a fresh ref and return the reply carrying that ref.

        Other frames that arrive meanwhile are kept for later ``recv`` calls.
        """
        ref = f"r{next(self._refs)}"
        await self.send({**frame, "ref": ref})
        skipped: list[dict[str, Any]] = []
        with trio.fail_after(timeout):
            while True:
                reply = await self.recv(timeout=timeout)
                if reply.get("ref") == ref:
                    self.pending.extendleft(reversed(skipped))
                    return reply
                skipped.append(reply)

    async def hello(self, name: str | None = "tester", **fields: Any) -> dict[str, Any]:
        reply = await self.request({"type": "hello", "name": name, **fields})
        if reply["type"] == "welcome":
            self.welcome = reply
            self.session_id = reply["session_id"]
            self.resume_token = reply["resume_token"]
        return reply

    async def no_frame(self, within: float = 0.3) -> None:
        """Assert nothing arrives for ``within`` seconds."""
        with trio.move_on_after(within):
            frame = await self.ws.get_message()
            raise AssertionError(f"unexpected frame: {frame!r}")


async def closing(client: Client, timeout: float = WAIT) -> tuple[list[dict[str, Any]], int]:
    """Return the frames that arrive until the connection closes, and its close code."""
    seen: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while True:
            try:
                seen.append(await client.recv(timeout=timeout))
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None
                return seen, exc.reason.code


@pytest.fixture
def make_config(tmp_path: pathlib.Path) -> Callable[..., daemon.Config]:
    def make(**overrides: Any) -> daemon.Config:
        fields: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "data_dir": tmp_path / "data",
                                  "memory": True}
        fields.update(overrides)
        return daemon.Config(**fields)

    return make


@asynccontextmanager
async def running_server(config: daemon.Config, apps: Any = None) -> AsyncIterator[Server]:
    """Run a daemon for the duration of the block; cancelling it shuts it down gracefully."""
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(daemon.serve, config, apps)
        yield Server(host, port, config.data_dir, config)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def server(make_config: Callable[..., daemon.Config]) -> AsyncIterator[Server]:
    async with running_server(make_config()) as srv:
        yield srv


@pytest.fixture
def connect(server: Server) -> Callable[..., Any]:
    """``async with connect("room") as client:`` opens a real WebSocket to ``server``."""

    @asynccontextmanager
    async def open_client(room: str = "lobby", *, binary: bool = False,
                          path: str | None = None, target: Server | None = None
                          ) -> AsyncIterator[Client]:
        srv = target or server
        url = srv.url + (path or f"/v1/rooms/{room}")
        subprotocols = ["roomctl.v1.msgpack"] if binary else ["roomctl.v1"]
        async with trio_websocket.open_websocket_url(
            url, subprotocols=subprotocols, connect_timeout=WAIT, disconnect_timeout=WAIT
        ) as ws:
            yield Client(ws, binary)

    return open_client


@dataclass
class ServeProcess(_Address):
    """A real ``roomctl serve`` subprocess."""

    proc: subprocess.Popen[str]
    host: str
    port: int
    data_dir: pathlib.Path
    secure: bool = False  # it serves https and wss (--tls-cert/--tls-key)

    @property
    def url(self) -> str:
        return f"{'wss' if self.secure else 'ws'}://{self.host}:{self.port}"

    @property
    def http(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"

    @property
    def admin_token(self) -> str:
        token = read_admin_token(self.data_dir)
        assert token
        return token


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (for a daemon restarted on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_serve(data_dir: pathlib.Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 15.0) -> ServeProcess:
    """Start ``roomctl serve --port 0`` and wait for its ``listening on`` line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomctl", "serve", "--port", "0", "--data-dir", str(data_dir),
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )
    assert proc.stdout is not None
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError("roomctl serve printed nothing in time")
    line = proc.stdout.readline().strip()
    scheme, _, hostport = line.removeprefix("listening on ").partition("://")
    if not line.startswith("listening on ") or scheme not in ("http", "https"):
        proc.kill()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {proc.stderr.read()}")
    host, _, port = hostport.rpartition(":")
    return ServeProcess(proc, host.strip("[]"), int(port), data_dir, secure=scheme == "https")


@pytest.fixture
def serve_process(tmp_path: pathlib.Path) -> Iterator[Callable[..., ServeProcess]]:
    """Factory for ``roomctl serve`` subprocesses; all are killed at teardown."""
    started: list[ServeProcess] = []

    def start(*args: str, data_dir: pathlib.Path | None = None, **kw: Any) -> ServeProcess:
        sp = start_serve(data_dir or tmp_path / "data", *args, **kw)
        started.append(sp)
        return sp

    yield start
    for sp in started:
        if sp.proc.poll() is None:
            sp.proc.kill()
        sp.proc.wait(timeout=10)
