"""What the daemon's log says at info level: one line per event, floods held back, no token.

A real daemon on a real port, real WebSocket clients; the log records are caught with
pytest's ``caplog`` from the ``roomctl`` logger tree, as ``roomctl serve`` would print
them. Each record carries its context in ``extra`` (``event``, ``room``, ``peer``...),
which is what these tests look at, besides the message.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

import daemon
from daemon.logs import JsonFormatter
from tests.conftest import ROOT, WAIT, Client, Server, closing, running_server
from tests.test_limits import open_with_origin


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="daemon")
    return caplog


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


@asynccontextmanager
async def connect(srv: Server, room: str, path: str | None = None) -> AsyncIterator[Client]:
    async with trio_websocket.open_websocket_url(
            srv.url + (path or f"/v1/rooms/{room}"), subprotocols=["roomctl.v1"],
            connect_timeout=WAIT, disconnect_timeout=WAIT) as ws:
        yield Client(ws, binary=False)


async def exceed_the_rate_limit(greedy: Client) -> int:
    """Say hello, then send requests until the daemon closes; return the close code."""
    await greedy.hello("greedy")
    with trio.fail_after(WAIT):
        for _ in range(20):
            try:
                await greedy.send({"type": "get-participants"})
            except trio_websocket.ConnectionClosed:
                break
        _, code = await closing(greedy)
    return code


async def test_rooms_kicks_and_tokens_get_one_line_each_and_no_token_is_logged(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(make_config()) as srv:
        async with connect(srv, "ops", path="/v1/admin") as admin:
            await admin.hello(None, token=srv.admin_token)
            assert (await admin.request({"type": "create-room", "room": "ops"}))["type"] == "room"
            issued = await admin.request({"type": "create-token", "room": "ops",
                                          "identity": "ci-bot", "grants": ["join", "post"]})
            async with connect(srv, "ops") as alice, \
                    connect(srv, "drop-in") as visitor:
                await alice.hello("alice")
                await visitor.hello("visitor")
                kicked = await admin.request({"type": "kick", "room": "ops",
                                              "participant_id": alice.session_id})
                assert kicked["type"] == "ok"
            assert (await admin.request({"type": "delete-room", "room": "ops"}))["type"] == "ok"

    created = events(caplog, "room-created")
    assert [(r.room, r.implicit) for r in created] == [("ops", False), ("drop-in", True)]
    [kick] = events(caplog, "kicked")
    assert (kick.room, kick.session) == ("ops", alice.session_id)
    [token_line] = events(caplog, "token-issued")
    assert (token_line.room, token_line.identity, token_line.grants) == \
        ("ops", "ci-bot", "join,post")
    assert token_line.getMessage().endswith("(grants join,post, valid 1 h)")  # not 3600 s
    [deleted] = events(caplog, "room-deleted")
    assert deleted.room == "ops"
    [stopped] = events(caplog, "stopped")
    assert stopped.getMessage().startswith("stopped after ")
    # The token itself is in no line and in no record's fields.
    token = issued["token"]
    for record in caplog.records:
        assert token not in record.getMessage()
        assert all(token not in str(value) for value in vars(record).values())
        assert srv.admin_token not in record.getMessage()


async def test_refused_tokens_are_logged_but_a_flood_costs_a_few_lines(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    flood = 60
    async with running_server(make_config(max_connections_per_address=0)) as srv:
        for n in range(flood):
            async with connect(srv, "lobby") as client:
                reply = await client.hello("mallory", token=f"forged-{n}")
                assert reply["code"] == "unauthorized"
                _, code = await closing(client)
                assert code == 4001

    lines = events(caplog, "token-refused")
    # A burst of 10, perhaps one more as the bucket refills while the flood goes on.
    assert 10 <= len(lines) <= 12
    assert all(r.peer.startswith("127.0.0.1:") for r in lines)
    assert lines[0].getMessage().endswith("not a valid token")
    assert not any("forged-" in r.getMessage() for r in caplog.records)
    # What was held back is counted, in the lines that passed after it and at the stop.
    reported = sum(r.suppressed for r in lines) + sum(
        r.suppressed for r in events(caplog, "suppressed"))
    assert len(lines) + reported == flood


async def test_a_hello_refused_by_a_private_room_is_logged(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(make_config(require_tokens=True)) as srv:
        async with connect(srv, "vault") as stranger:
            assert (await stranger.hello("stranger"))["code"] == "unauthorized"

    [refused] = events(caplog, "hello-refused")
    assert (refused.room, refused.code) == ("vault", "unauthorized")
    assert "needs a join token" in refused.getMessage()


async def test_a_rate_limit_close_is_logged_with_its_room_and_peer(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(rate_limit=1.0, rate_burst=1, max_rate_limited=3)
    async with running_server(config) as srv:
        async with connect(srv, "busy") as greedy:
            assert await exceed_the_rate_limit(greedy) == 1008

    [closed] = events(caplog, "closed-rate-limit")
    assert closed.room == "busy" and closed.session == greedy.session_id
    assert closed.peer.startswith("127.0.0.1:")
    assert "rate limit" in closed.getMessage()


async def test_a_room_removed_after_the_empty_timeout_is_logged(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(make_config(empty_timeout=0.0, grace=0.0)) as srv:
        async with connect(srv, "passing-by") as visitor:
            await visitor.hello("visitor")
        with trio.fail_after(WAIT):
            while not events(caplog, "room-expired"):
                await trio.sleep(0.02)

    [expired] = events(caplog, "room-expired")
    assert expired.room == "passing-by"


# --- the JSON lines a log pipeline reads --------------------------------------------------------


def as_json(record: logging.LogRecord) -> dict[str, Any]:
    """The line ``--log-format json`` writes for ``record``, parsed back."""
    line = JsonFormatter(node="node-1").format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def json_events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [as_json(record) for record in events(caplog, event)]


def common(line: dict[str, Any], event: str) -> None:
    """Every line: when, how important, what happened in words and by name, where."""
    assert list(line)[:6] == ["time", "level", "event", "message", "node", "logger"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
    assert (line["level"], line["event"], line["node"]) == ("info", event, "node-1")
    assert line["message"]


async def test_each_event_is_one_json_line_with_its_context(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture,
        tmp_path: pathlib.Path) -> None:
    config = make_config(rate_limit=1.0, rate_burst=1, max_rate_limited=2, memory=False)
    async with running_server(config) as srv:
        async with connect(srv, "ops", path="/v1/admin") as admin:
            await admin.hello(None, token=srv.admin_token)
            await admin.request({"type": "create-room", "room": "ops"})
            issued = await admin.request({"type": "create-token", "room": "ops",
                                          "identity": "ci-bot", "grants": ["join", "post"]})
            async with connect(srv, "ops") as alice:
                await alice.hello("alice")
                await admin.request({"type": "kick", "room": "ops",
                                     "participant_id": alice.session_id})
            async with connect(srv, "ops") as mallory:
                await mallory.hello("mallory", token="forged")
            async with connect(srv, "ops") as greedy:
                assert await exceed_the_rate_limit(greedy) == 1008
            assert await open_with_origin(srv, "http://evil.example") == 403
            await admin.request({"type": "delete-room", "room": "ops"})

    [started] = json_events(caplog, "started")
    common(started, "started")
    assert started["addresses"] == [f"127.0.0.1:{srv.port}"]
    assert started["data_dir"] == str(config.data_dir)
    assert started["store"] == str(config.data_dir / "roomctl.db")
    assert f"127.0.0.1:{srv.port}" in started["message"]
    assert str(config.data_dir) in started["message"]

    [created] = json_events(caplog, "room-created")
    common(created, "room-created")
    assert (created["room"], created["implicit"]) == ("ops", False)

    [token] = json_events(caplog, "token-issued")
    common(token, "token-issued")
    assert (token["room"], token["identity"], token["grants"]) == ("ops", "ci-bot", "join,post")

    [kicked] = json_events(caplog, "kicked")
    common(kicked, "kicked")
    assert (kicked["room"], kicked["session"]) == ("ops", alice.session_id)

    [refused] = json_events(caplog, "token-refused")
    common(refused, "token-refused")
    assert refused["peer"].startswith("127.0.0.1:") and refused["suppressed"] == 0

    [closed] = json_events(caplog, "closed-rate-limit")
    common(closed, "closed-rate-limit")
    assert (closed["room"], closed["session"]) == ("ops", greedy.session_id)
    assert isinstance(closed["connection"], int) and closed["peer"].startswith("127.0.0.1:")

    [origin] = json_events(caplog, "origin-refused")
    common(origin, "origin-refused")
    assert origin["peer"].startswith("127.0.0.1:") and "http://evil.example" in origin["message"]

    [deleted] = json_events(caplog, "room-deleted")
    common(deleted, "room-deleted")
    assert deleted["room"] == "ops"

    [begun] = json_events(caplog, "shutdown-begun")
    common(begun, "shutdown-begun")
    assert begun["clients"] == 0
    [stopped] = json_events(caplog, "stopped")
    common(stopped, "stopped")
    assert (stopped["clients"], stopped["flushed"]) == (0, True)
    # The shutdown's lines come last, in that order.
    order = [getattr(r, "event", None) for r in caplog.records]
    assert order.index("shutdown-begun") < order.index("stopped") == len(order) - 1

    # No token, in any field of any line.
    for record in caplog.records:
        line = JsonFormatter(node="n").format(record)
        assert issued["token"] not in line and srv.admin_token not in line
        assert "forged" not in line


async def test_a_refused_hello_is_a_json_line_with_its_code(
        make_config: Callable[..., daemon.Config], caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(make_config(require_tokens=True)) as srv:
        async with connect(srv, "vault") as stranger:
            assert (await stranger.hello("stranger"))["code"] == "unauthorized"

    [refused] = json_events(caplog, "hello-refused")
    common(refused, "hello-refused")
    assert (refused["room"], refused["code"]) == ("vault", "unauthorized")
    assert refused["peer"].startswith("127.0.0.1:") and isinstance(refused["connection"], int)


def test_a_line_with_no_event_an_exception_or_odd_values_is_still_one_json_object() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("daemon.x").makeRecord(
            "daemon.x", logging.ERROR, __file__, 1, "failed: %s", ("it",), sys.exc_info(),
            extra={"path": pathlib.Path("/x"), "room": None})
    line = as_json(record)

    assert (line["level"], line["event"], line["message"]) == ("error", "log", "failed: it")
    assert line["path"] == "/x" and "room" not in line
    assert "RuntimeError: boom" in line["exception"]


def _serve_stderr(*args: str, tty: bool, tmp_path: pathlib.Path) -> str:
    """Run ``roomctl serve ARGS`` until it listens, stop it; return what its stderr got.

    With ``tty`` its stderr is a pseudo-terminal, as when a person runs it.
    """
    import pty

    command = [sys.executable, "-m", "roomctl", "serve", "--port", "0", "--memory",
               "--data-dir", str(tmp_path / "data"), *args]
    if tty:
        controller, terminal = pty.openpty()
        stderr: Any = terminal
    else:
        stderr = subprocess.PIPE
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on ")
        proc.terminate()
        assert proc.wait(timeout=WAIT * 2) == 0
        if not tty:
            assert proc.stderr is not None
            return proc.stderr.read()
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(controller)
        return b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("args", "tty", "expected"), [
    ((), True, "text"),
    ((), False, "json"),
    (("--log-format", "json"), True, "json"),
    (("--log-format", "text"), False, "text"),
], ids=["auto-on-a-terminal", "auto-in-a-pipe", "json-on-a-terminal", "text-in-a-pipe"])
def test_log_format_auto_is_text_on_a_terminal_and_json_otherwise(
        tmp_path: pathlib.Path, args: tuple[str, ...], tty: bool, expected: str) -> None:
    lines = _serve_stderr(*args, tty=tty, tmp_path=tmp_path).strip().splitlines()

    assert len(lines) >= 4  # started, signal, shutdown begun, stopped
    if expected == "json":
        parsed = [json.loads(line) for line in lines]
        assert [p["event"] for p in parsed if p["event"] in ("started", "stopped")] == \
            ["started", "stopped"]
    else:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO daemon.server: listening on ",
                        lines[0]), lines[0]
        assert " INFO daemon.server: stopped after " in lines[-1]
