"""`roomctl serve` as a real subprocess: its listening line, env vars, signals, kill -9."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import trio
import trio_websocket

from tests.conftest import ROOT, ServeProcess

WAIT = 10.0


async def _client(url: str) -> Any:
    return trio_websocket.open_websocket_url(url, subprotocols=["roomctl.v1"], connect_timeout=WAIT,
                                             disconnect_timeout=WAIT)


async def _recv(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        frame: dict[str, Any] = json.loads(await ws.get_message())
        return frame


async def _reply(ws: trio_websocket.WebSocketConnection, ref: str) -> dict[str, Any]:
    while True:
        frame = await _recv(ws)
        if frame.get("ref") == ref:
            return frame


def test_listening_line_and_env_vars(serve_process: Callable[..., ServeProcess],
                                     tmp_path: pathlib.Path) -> None:
    # ROOMCTL_HOST is honoured (::1 is loopback too); the line brackets IPv6 addresses.
    sp = serve_process(env={"ROOMCTL_HOST": "127.0.0.1", "ROOMCTL_GRACE": "5"})
    assert sp.host == "127.0.0.1" and sp.port > 0
    out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", sp.http + "/healthz"],
                         capture_output=True, text=True, timeout=WAIT)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200"
    assert json.loads(body)["status"] == "ok"
    token_file = sp.data_dir / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_bad_log_level_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "roomctl", "serve", "--log-level", "loud", "--data-dir",
         str(tmp_path)], capture_output=True, text=True, timeout=WAIT, cwd=ROOT)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_port_in_use_is_one_line_and_exit_1(serve_process: Callable[..., ServeProcess],
                                            tmp_path: pathlib.Path) -> None:
    sp = serve_process()
    out = subprocess.run(
        [sys.executable, "-m", "roomctl", "serve", "--port", str(sp.port), "--data-dir",
         str(tmp_path / "other")], capture_output=True, text=True, timeout=WAIT, cwd=ROOT)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    # One line that names the address, so the person knows which port to change.
    [line] = out.stderr.splitlines()
    assert line == (f"roomctl serve: cannot listen on 127.0.0.1:{sp.port}: Address already in "
                    "use (another process is listening there)")


async def test_sigterm_closes_clients_with_1001_and_exits_0(
        serve_process: Callable[..., ServeProcess]) -> None:
    sp = serve_process()
    async with await _client(sp.url + "/v1/rooms/ops") as ws:
        await ws.send_message(json.dumps({"type": "hello", "name": "a", "ref": "h"}))
        assert (await _reply(ws, "h"))["type"] == "welcome"
        await ws.send_message(json.dumps({"type": "send-message", "text": "x", "ref": "m"}))
        assert (await _reply(ws, "m"))["seq"] == 1
        sp.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            while True:
                try:
                    await ws.get_message()
                except trio_websocket.ConnectionClosed as closed:
                    assert closed.reason.code == 1001
                    break
    code = await trio.to_thread.run_sync(lambda: sp.proc.wait(timeout=WAIT))
    assert code == 0
    # Its last words, at the default log level: it stopped, and whether the store was
    # flushed; as a JSON line, since its stderr is a pipe (--log-format auto).
    assert sp.proc.stderr is not None
    last = json.loads(sp.proc.stderr.read().splitlines()[-1])
    assert (last["level"], last["event"], last["logger"]) == ("info", "stopped", "daemon.server")
    assert last["message"].startswith("stopped after ")
    assert last["message"].endswith("; connections closed: 1; store flushed")


async def test_acknowledged_messages_survive_kill_9(
        serve_process: Callable[..., ServeProcess], tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "durable"
    acked: list[tuple[int, str]] = []
    for round_ in range(3):
        sp = serve_process(data_dir=data_dir)
        async with await _client(sp.url + "/v1/rooms/durable") as ws:
            await ws.send_message(json.dumps({"type": "hello", "name": "w", "ref": "h"}))
            assert (await _reply(ws, "h"))["type"] == "welcome"
            # Pipeline many sends, then kill -9 while acknowledgements are still arriving.
            for i in range(200):
                await ws.send_message(json.dumps(
                    {"type": "send-message", "text": f"r{round_}-{i}", "ref": f"{round_}-{i}"}))
            try:
                with trio.fail_after(WAIT):
                    while True:
                        frame = await _recv(ws)
                        if frame["type"] == "ok" and frame.get("seq"):
                            acked.append((frame["seq"], frame["ref"]))
                            if sum(1 for _, r in acked if r.startswith(f"{round_}-")) == 50:
                                os.kill(sp.proc.pid, signal.SIGKILL)
            except trio_websocket.ConnectionClosed:
                pass
        await trio.to_thread.run_sync(functools.partial(sp.proc.wait, timeout=WAIT))
        assert sp.proc.returncode == -signal.SIGKILL
    assert len(acked) >= 150

    sp = serve_process(data_dir=data_dir)
    async with await _client(sp.url + "/v1/rooms/durable") as ws:
        await ws.send_message(json.dumps({"type": "hello", "name": "r", "ref": "h"}))
        await _reply(ws, "h")
        stored: list[dict[str, Any]] = []
        after = 0
        while True:
            await ws.send_message(json.dumps(
                {"type": "get-messages", "after": after, "limit": 1000, "ref": f"g{after}"}))
            page = await _reply(ws, f"g{after}")
            stored += page["messages"]
            if not page["has_more"]:
                break
            after = stored[-1]["seq"]
    seqs = [m["seq"] for m in stored]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence numbers have gaps or duplicates"
    by_seq = {m["seq"]: m["text"] for m in stored}
    for seq, ref in acked:
        round_, i = ref.split("-")
        assert by_seq.get(seq) == f"r{round_}-{i}", f"acknowledged message {ref} (seq {seq}) lost"


def test_a_second_daemon_on_the_same_data_dir_is_refused(
        serve_process: Callable[..., ServeProcess], tmp_path: pathlib.Path) -> None:
    first = serve_process()
    out = subprocess.run(
        [sys.executable, "-m", "roomctl", "serve", "--port", "0", "--data-dir",
         str(first.data_dir)], capture_output=True, text=True, timeout=WAIT, cwd=ROOT)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"roomctl serve: data directory {first.data_dir} is in use by another roomctl serve "
        f"(pid {first.proc.pid})"
    ]
    assert first.proc.poll() is None  # the first one is unaffected
