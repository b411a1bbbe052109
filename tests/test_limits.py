"""Every configurable limit, and admin-token rotation, against a real daemon.

The token bucket (``daemon.net.ratelimit``) is checked with plain numbers for a clock; the
rest runs a real daemon on 127.0.0.1 with small limits and real WebSocket clients, or the
real ``roomctl serve`` where the command line is what is being tested. Participants per
room and rooms per daemon are the join-token suite's (``daemon.core.engine``).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

import daemon
from daemon.config import AdminTokenFile, read_admin_token
from daemon.net.ratelimit import RateLimit, RequestLimiter, TokenBucket, Verdict
from tests.conftest import ROOT, WAIT, Client, ServeProcess, Server, closing, running_server

Connect = Callable[..., Any]


# --- the token bucket, with numbers for a clock --------------------------------------------


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, capacity=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait() == pytest.approx(0.1)
    assert not bucket.take(100.05)  # half a token
    assert bucket.take(100.1)
    # A long quiet spell refills it to its capacity, never beyond.
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]


def test_a_clock_that_steps_back_mints_no_tokens() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1, now=50.0)
    assert bucket.take(50.0)
    assert not bucket.take(10.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


def test_refusals_are_counted_and_persistent_abuse_is_closed() -> None:
    limit = RateLimit(rate=2.0, burst=4, max_refused=3, window=10.0)
    limiter = RequestLimiter(limit, now=0.0)
    verdicts = [limiter.check(0.0) for _ in range(8)]
    assert verdicts == [Verdict.ALLOW] * 4 + [Verdict.REFUSE] * 3 + [Verdict.CLOSE]
    assert limiter.retry_after() == pytest.approx(0.5)


def test_a_client_that_slows_down_when_told_is_never_closed() -> None:
    limit = RateLimit(rate=2.0, burst=5, max_refused=3, window=10.0)
    limiter = RequestLimiter(limit, now=0.0)
    now, gap, refused = 0.0, 0.01, 0
    for _ in range(300):  # a minute and more
        verdict = limiter.check(now)
        assert verdict is not Verdict.CLOSE
        if verdict is Verdict.REFUSE:
            refused += 1
            now += limiter.retry_after()
            gap = 1 / limit.rate  # from now on, no faster than allowed
        else:
            now += gap
    assert refused == 1


def test_refusals_are_forgiven_over_the_window() -> None:
    limiter = RequestLimiter(RateLimit(rate=1.0, burst=1, max_refused=2, window=10.0), now=0.0)
    assert limiter.check(0.0) is Verdict.ALLOW
    assert [limiter.check(0.0), limiter.check(0.0)] == [Verdict.REFUSE, Verdict.REFUSE]
    # Ten seconds later both refusals are forgotten (and the bucket is full again).
    assert limiter.check(10.0) is Verdict.ALLOW
    assert [limiter.check(10.0), limiter.check(10.0)] == [Verdict.REFUSE, Verdict.REFUSE]
    assert limiter.check(10.0) is Verdict.CLOSE


def test_a_disabled_limit_has_no_limiter() -> None:
    assert not RateLimit(rate=0).enabled
    with pytest.raises(ValueError):
        RequestLimiter(RateLimit(rate=0), now=0.0)


# --- requests per second, on a real daemon --------------------------------------------------


@asynccontextmanager
async def welcomed(connect: Connect, srv: Server, name: str, room: str = "limits",
                   **hello: Any) -> AsyncIterator[Client]:
    async with connect(room, target=srv) as client:
        welcome = await client.hello(name, **hello)
        assert welcome["type"] == "welcome", welcome
        yield client


async def burst(client: Client, count: int) -> list[dict[str, Any]]:
    """Send ``count`` requests at once (pipelined); return their replies in order."""
    for i in range(count):
        await client.send({"type": "get-participants", "ref": f"b{i}"})
    replies: dict[str, dict[str, Any]] = {}
    with trio.fail_after(WAIT):
        while len(replies) < count:
            frame = await client.recv()
            if str(frame.get("ref", "")).startswith("b"):
                replies[frame["ref"]] = frame
    return [replies[f"b{i}"] for i in range(count)]


async def test_requests_over_the_rate_are_refused_and_a_persistent_flood_is_closed(
        make_config: Callable[..., daemon.Config], connect: Connect) -> None:
    config = make_config(rate_limit=10.0, rate_burst=20, max_rate_limited=15)
    async with running_server(config) as srv, welcomed(connect, srv, "bystander") as bystander, \
            welcomed(connect, srv, "flooder") as flooder:
        replies = await burst(flooder, 25)
        allowed = sum(r["type"] == "participants" for r in replies)
        assert 20 <= allowed <= 22  # the burst, and what refilled while it arrived
        refused = replies[allowed:]
        assert {r["code"] for r in refused} == {"rate-limited"}
        # How long to wait is a field, not only words: 0.1 s refills one request at 10/s.
        assert all(0 < r["retry_after"] <= 0.11 for r in refused), refused
        # After waiting as told, requests go through again.
        await trio.sleep(max(r["retry_after"] for r in refused) + 0.2)
        assert (await flooder.request({"type": "get-participants"}))["type"] == "participants"
        # Keeping at it: about 15 refusals later the daemon hangs up (1008).
        for i in range(40):
            await flooder.send({"type": "get-participants", "ref": f"f{i}"})
        frames, code = await closing(flooder)
        assert code == 1008
        assert sum(f.get("code") == "rate-limited" for f in frames) >= 10
        # The rest of the room never noticed.
        assert (await bystander.request({"type": "send-message", "text": "still here"}))["seq"]
        metrics = await http_get(srv, "/metrics")
        assert "roomctl_rate_limit_closes_total 1" in metrics


async def test_the_admin_tokens_connections_are_not_rate_limited(
        make_config: Callable[..., daemon.Config], connect: Connect) -> None:
    async with running_server(make_config(rate_limit=5.0, rate_burst=5)) as srv, \
            welcomed(connect, srv, "integration", token=srv.admin_token) as integration:
        replies = await burst(integration, 60)
        assert {r["type"] for r in replies} == {"participants"}


async def test_a_rate_limit_of_zero_turns_it_off(
        make_config: Callable[..., daemon.Config], connect: Connect) -> None:
    async with running_server(make_config(rate_limit=0.0, rate_burst=1)) as srv, \
            welcomed(connect, srv, "anyone") as client:
        assert {r["type"] for r in await burst(client, 50)} == {"participants"}


# --- connections per client address ----------------------------------------------------------


async def http_get(srv: Server | ServeProcess, path: str, *, source: str | None = None,
                   timeout: float = WAIT) -> str:
    """Return the body of GET ``path`` (any status), over a fresh TCP connection."""
    with trio.fail_after(timeout):
        stream = await open_from(srv.host, srv.port, source)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                  .encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data.decode(errors="replace")


async def read_all(stream: trio.SocketStream, timeout: float = WAIT) -> bytes:
    """Return what arrives on ``stream`` until the peer closes it (a reset ends it too)."""
    data = b""
    async with stream:
        with trio.fail_after(timeout):
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
    return data


async def open_from(host: str, port: int, source: str | None) -> trio.SocketStream:
    """Open a TCP connection to ``host``:``port`` from the loopback address ``source``."""
    if source is None:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def test_connections_beyond_the_per_address_limit_are_refused_at_once(
        make_config: Callable[..., daemon.Config], connect: Connect) -> None:
    async with running_server(make_config(max_connections_per_address=3)) as srv:
        async with welcomed(connect, srv, "a", room="r1"), welcomed(connect, srv, "b", room="r1"), \
                welcomed(connect, srv, "c", room="r1"):
            # A fourth from the same address is turned away at once with 429, before
            # anything it sends is read.
            started = trio.current_time()
            answer = await read_all(await open_from(srv.host, srv.port, None))
            assert trio.current_time() - started < 2.0
            assert answer.startswith(b"HTTP/1.1 429 "), answer
            # Another address is not affected.
            assert '"status":"ok"' in await http_get(srv, "/healthz", source="127.0.0.2")
        # Closing them frees the slots.
        with trio.fail_after(WAIT):
            while '"status":"ok"' not in await http_get(srv, "/healthz"):
                await trio.sleep(0.05)
        metrics = await http_get(srv, "/metrics")
        assert "roomctl_address_limit_refusals_total 1" in metrics


# --- idle connections: pings -------------------------------------------------------------------


async def raw_websocket(srv: Server, path: str) -> tuple[trio.SocketStream, bytes]:
    """Open a WebSocket by hand (a client that will not answer pings).

    Returns the stream and what already came after the handshake response.
    """
    stream = await trio.open_tcp_stream(srv.host, srv.port)
    await stream.send_all(
        f"GET {path} HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    with trio.fail_after(WAIT):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, head.split(b"\r\n\r\n", 1)[1]


def masked_text(payload: bytes) -> bytes:
    """A client-to-server text frame (mask 0, which is legal and leaves bytes as they are)."""
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def test_a_peer_that_stops_answering_pings_is_closed_and_others_are_kept(
        make_config: Callable[..., daemon.Config], connect: Connect) -> None:
    config = make_config(ping_interval=0.2, ping_timeout=0.4, close_timeout=0.5)
    async with running_server(config) as srv, welcomed(connect, srv, "alive") as alive:
        dead, _ = await raw_websocket(srv, "/v1/rooms/limits")
        async with dead:
            await dead.send_all(masked_text(b'{"type":"hello","name":"ghost"}'))
            joined = await alive.recv_type("participant-joined")
            assert joined["participant"]["live"] is True
            ghost = joined["participant"]["id"]
            # The ghost reads nothing and answers no ping: within interval + timeout (plus a
            # sweep), it is dropped and the room sees it go not live.
            started = trio.current_time()
            update = await alive.recv_type("participant-updated", timeout=WAIT)
            took = trio.current_time() - started
            assert update["participant"]["id"] == ghost
            assert update["participant"]["live"] is False
            assert took < 3.0  # interval + timeout + a sweep, with room for a loaded machine
        # The live client answered every ping (trio-websocket does so by itself) and is kept,
        # well past several intervals.
        await trio.sleep(1.0)
        assert (await alive.request({"type": "get-participants"}))["type"] == "participants"
        metrics = await http_get(srv, "/metrics")
        assert "roomctl_ping_timeouts_total 1" in metrics


async def test_the_ping_timeout_close_code_is_1011(
        make_config: Callable[..., daemon.Config]) -> None:
    config = make_config(ping_interval=0.1, ping_timeout=0.2, close_timeout=0.5)
    async with running_server(config) as srv:
        stream, data = await raw_websocket(srv, "/v1/rooms/limits")
        async with stream:
            with trio.fail_after(WAIT):
                while chunk := await stream.receive_some(4096):
                    data += chunk
        # A ping (0x89) came first, unanswered; then a close frame (0x88) with 1011.
        assert data[0] == 0x89
        close_at = data.index(b"\x88")
        assert int.from_bytes(data[close_at + 2:close_at + 4], "big") == 1011
        assert b"keepalive ping timeout" in data


async def test_no_pings_with_an_interval_of_zero(
        make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config(ping_interval=0.0, ping_timeout=0.1)) as srv:
        stream, data = await raw_websocket(srv, "/v1/rooms/limits")
        async with stream:
            await stream.send_all(masked_text(b'{"type":"hello","name":"quiet"}'))
            with trio.move_on_after(0.6):
                while b'"welcome"' not in data:
                    data += await stream.receive_some(4096)
                data = await stream.receive_some(4096)
                raise AssertionError(f"unexpected bytes: {data!r}")


# --- the Origin check -----------------------------------------------------------------------


async def open_with_origin(srv: Server, origin: str | None) -> int | None:
    """Open a WebSocket carrying ``origin``; return the HTTP status if it is refused."""
    headers = [("Origin", origin)] if origin is not None else []
    try:
        async with trio_websocket.open_websocket_url(
                srv.url + "/v1/rooms/o", extra_headers=headers,
                connect_timeout=WAIT, disconnect_timeout=WAIT) as ws:
            await ws.send_message(json.dumps({"type": "hello", "name": "b", "ref": "h"}))
            with trio.fail_after(WAIT):
                assert json.loads(await ws.get_message())["type"] == "welcome"
    except trio_websocket.ConnectionRejected as exc:
        return exc.status_code
    return None


async def test_browser_origins_other_than_the_daemons_own_are_refused(
        make_config: Callable[..., daemon.Config]) -> None:
    async with running_server(make_config()) as srv:
        own = f"http://{srv.host}:{srv.port}"
        assert await open_with_origin(srv, None) is None  # CLI, scripts: no Origin at all
        assert await open_with_origin(srv, own) is None
        assert await open_with_origin(srv, f"https://{srv.host}:{srv.port}") is None
        assert await open_with_origin(srv, "http://evil.example") == 403
        assert await open_with_origin(srv, f"http://localhost:{srv.port}") == 403
        assert await open_with_origin(srv, "null") == 403
        assert await open_with_origin(srv, own + "/path\x7f") == 403
        metrics = await http_get(srv, "/metrics")
        assert "roomctl_origins_refused_total 4" in metrics


async def test_allowed_origins_are_accepted(make_config: Callable[..., daemon.Config]) -> None:
    config = make_config(allowed_origins=("https://chat.example.org",))
    async with running_server(config) as srv:
        assert await open_with_origin(srv, "https://chat.example.org") is None
        assert await open_with_origin(srv, "HTTPS://Chat.Example.org:443") is None
        assert await open_with_origin(srv, "http://chat.example.org") == 403
    async with running_server(make_config(allowed_origins=("*",))) as srv:
        assert await open_with_origin(srv, "http://anything.example") is None


# --- chat text and names ------------------------------------------------------------------


async def test_text_and_names_over_the_configured_limits_are_too_large(
        make_config: Callable[..., daemon.Config], connect: Connect) -> None:
    async with running_server(make_config(max_text=10, max_name=5)) as srv, \
            connect("chat", target=srv) as client:
        refused = await client.hello("sixsix")
        assert refused["type"] == "error" and refused["code"] == "too-large"
        assert "at most 5" in refused["message"]
        assert (await client.hello("five5"))["type"] == "welcome"  # the connection stayed
        too_long = await client.request({"type": "send-message", "text": "x" * 11})
        assert too_long["code"] == "too-large" and "at most 10" in too_long["message"]
        assert (await client.request({"type": "send-message", "text": "é" * 10}))["seq"] == 1
        renamed = await client.request({"type": "set-name", "name": "toolong"})
        assert renamed["code"] == "too-large"
        page = await client.request({"type": "get-messages"})
        assert [m["text"] for m in page["messages"]] == ["é" * 10]


def test_chat_limits_cannot_exceed_the_protocols() -> None:
    with pytest.raises(ValueError):
        daemon.ChatApp(max_text=4001)
    with pytest.raises(ValueError):
        daemon.ChatApp(max_name=0)


# --- frame size and handshake time --------------------------------------------------------


async def test_frame_size_and_handshake_time_are_configurable(
        make_config: Callable[..., daemon.Config], connect: Connect) -> None:
    config = make_config(max_frame_bytes=2048, handshake_timeout=0.3)
    async with running_server(config) as srv:
        async with connect("f", target=srv) as client:
            await client.hello("big")
            await client.send_raw(json.dumps({"type": "send-message", "text": "x" * 2100}))
            assert (await closing(client))[1] == 1009
        async with connect("f", target=srv) as silent:
            started = trio.current_time()
            assert (await closing(silent))[1] == 4008
            assert trio.current_time() - started < 0.3 + 1.0


# --- roomctl serve: the options and their variables ----------------------------------------


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roomctl", "serve", *args], capture_output=True,
                          text=True, timeout=30, cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [
    ["--tls-cert", "cert.pem"],
    ["--tls-key", "key.pem"],
    ["--allowed-origin", "ftp://files.example"],
    ["--allowed-origin", "https://example.org/app"],
    ["--ping-timeout", "0"],
    ["--max-text", "4001"],
    ["--max-frame-bytes", "100"],
    ["--rate-burst", "0"],
], ids=" ".join)
def test_bad_limit_options_are_usage_errors(
        args: list[str], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The real entry point, in this process (a subprocess per case costs seconds here).
    from roomctl.cli import main

    monkeypatch.setattr(sys, "argv",
                        ["roomctl", "serve", "--data-dir", str(tmp_path), "--port", "0", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    assert exited.value.code == 2, out.err
    assert out.err.startswith("roomctl: ") and len(out.err.strip().splitlines()) == 1, out.err
    assert out.out == ""


async def test_serve_takes_the_limits_from_its_variables(
        serve_process: Callable[..., ServeProcess]) -> None:
    sp = serve_process("--memory", env={
        "ROOMCTL_MAX_TEXT": "8", "ROOMCTL_RATE_LIMIT": "1", "ROOMCTL_RATE_BURST": "3",
        "ROOMCTL_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "ROOMCTL_MAX_CONNECTIONS_PER_ADDRESS": "100"})
    async with trio_websocket.open_websocket_url(
            sp.url + "/v1/rooms/env", extra_headers=[("Origin", "https://b.example")],
            connect_timeout=WAIT, disconnect_timeout=WAIT) as ws:
        client = Client(ws, binary=False)
        assert (await client.hello("env"))["type"] == "welcome"
        assert (await client.request({"type": "send-message", "text": "9" * 9}))["code"] \
            == "too-large"
        codes = [r.get("code") for r in await burst(client, 6)]
        # Three tokens, one taken by the message above, one more maybe refilled since.
        assert codes[:2] == [None, None] and codes[3:] == ["rate-limited"] * 3


# --- the admin token: rotation ----------------------------------------------------------------


async def admin_hello(url: str, token: str) -> tuple[str, int | None]:
    """Say hello on /v1/admin with ``token``; return the reply's type and any close code."""
    async with trio_websocket.open_websocket_url(
            url + "/v1/admin", connect_timeout=WAIT, disconnect_timeout=WAIT) as ws:
        await ws.send_message(json.dumps({"type": "hello", "token": token, "ref": "h"}))
        with trio.fail_after(WAIT):
            reply = json.loads(await ws.get_message())
            if reply["type"] == "welcome":
                return reply["type"], None
            try:
                await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                return reply["code"], exc.reason.code if exc.reason else None
    raise AssertionError("the connection stayed open after an error")


async def test_a_running_daemon_takes_a_rotated_admin_token_without_a_restart(
        serve_process: Callable[..., ServeProcess]) -> None:
    sp = serve_process("--memory")
    old = read_admin_token(sp.data_dir)
    assert old is not None
    assert await admin_hello(sp.url, old) == ("welcome", None)
    out = await trio.to_thread.run_sync(
        lambda: run_serve("--rotate-admin-token", "--data-dir", str(sp.data_dir)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"new admin token in {sp.data_dir / 'admin-token'}"
    new = read_admin_token(sp.data_dir)
    assert new is not None and new != old
    assert (sp.data_dir / "admin-token").stat().st_mode & 0o777 == 0o600
    assert await admin_hello(sp.url, old) == ("unauthorized", 4001)
    assert await admin_hello(sp.url, new) == ("welcome", None)
    assert sp.proc.poll() is None  # the same daemon, still serving


def test_rotating_needs_no_daemon_and_makes_the_directory(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "fresh"
    out = run_serve("--rotate-admin-token", "--data-dir", str(data_dir))
    assert out.returncode == 0
    assert read_admin_token(data_dir)
    assert data_dir.stat().st_mode & 0o777 == 0o700


def test_the_token_file_is_reread_only_when_replaced(tmp_path: pathlib.Path) -> None:
    tokens = AdminTokenFile(tmp_path)
    first = tokens.current()
    assert tokens.current() == first
    (tmp_path / "admin-token").write_text("hand-made\n")
    assert tokens.current() == "hand-made"
    # A vanished or emptied file keeps the last good token rather than locking everyone out.
    (tmp_path / "admin-token").unlink()
    assert tokens.current() == "hand-made"
    (tmp_path / "admin-token").write_text("")
    assert tokens.current() == "hand-made"
