"""``roomctl load-test``: a short real run, and faults planted between it and the daemon.

The daemon is real (in this process, on a real port); ``roomctl load-test`` runs as a real
subprocess. To show that the test finds what it claims to find, a WebSocket proxy sits
between them and tampers with what the daemon sends one client: it drops one delivery,
sends one twice, or swaps two; the load test must count exactly that and exit 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

import daemon
from tests.cli_util import one_error_line, run_cli
from tests.conftest import ROOT, Server, running_server

RUN_LIMIT = 60.0
# A tamperer gets (the client's name from its hello, a frame from the daemon) and returns
# the frames to pass on in its place.
Tamper = Callable[[str, dict[str, Any]], list[dict[str, Any]]]


async def load_test(url: str, srv: Server, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``roomctl load-test --json`` against ``url``; return its status, report, stderr."""
    command = [sys.executable, "-m", "roomctl", "load-test", "--url", url, "--data-dir",
               str(srv.data_dir), "--duration", "1", "--rate", "20", "--timeout", "5",
               "--json", *args]
    with trio.fail_after(RUN_LIMIT):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                      check=False, cwd=ROOT)
    stderr = done.stderr.decode()
    assert done.stdout, stderr
    return done.returncode, json.loads(done.stdout), stderr


@asynccontextmanager
async def tampering_proxy(srv: Server, tamper: Tamper) -> AsyncIterator[str]:
    """A WebSocket proxy to ``srv`` passing frames through ``tamper``; yields its URL."""

    async def handle(request: trio_websocket.WebSocketRequest) -> None:
        async with trio_websocket.open_websocket_url(
                srv.url + request.path, subprotocols=list(request.proposed_subprotocols),
                connect_timeout=5, disconnect_timeout=5) as upstream:
            downstream = await request.accept(subprotocol=upstream.subprotocol)
            name = ""

            async def client_to_daemon() -> None:
                nonlocal name
                while True:
                    message = await downstream.get_message()
                    if not name and isinstance(message, str):
                        name = json.loads(message).get("name") or "-"
                    await upstream.send_message(message)

            async def daemon_to_client() -> None:
                while True:
                    frame = json.loads(await upstream.get_message())
                    for passed in tamper(name, frame):
                        await downstream.send_message(json.dumps(passed))

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client_to_daemon)
                    nursery.start_soon(daemon_to_client)
            except* trio_websocket.ConnectionClosed:
                pass
            await downstream.aclose()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handle, "127.0.0.1", 0,
                                     None)
        yield f"http://127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


def planted(kind: str, role: str, fault: str) -> Tamper:
    """A tamperer planting ``fault`` at the 3rd frame of type ``kind`` to the first ``role``.

    ``drop`` it, send it ``twice``, or ``swap`` it with the 4th.
    """
    count = 0
    victim: str | None = None
    held: list[dict[str, Any]] = []

    def tamper(name: str, frame: dict[str, Any]) -> list[dict[str, Any]]:
        nonlocal count, victim
        if frame.get("type") != kind or not name.startswith(role):
            return [frame]
        victim = victim or name
        if name != victim:
            return [frame]
        count += 1
        if count == 3:
            if fault == "drop":
                return []
            if fault == "twice":
                return [frame, frame]
            held.append(frame)
            return []
        if count == 4 and held:
            return [frame, held.pop()]
        return [frame]

    return tamper


@pytest.fixture
async def srv(make_config: Callable[..., daemon.Config]) -> AsyncIterator[Server]:
    async with running_server(make_config()) as server:
        yield server


async def test_a_short_run_passes_and_counts_every_delivery(srv: Server) -> None:
    rc, report, stderr = await load_test(srv.http, srv, "--rooms", "2", "--posters", "2",
                                         "--watchers", "3", "--callers", "3")

    assert rc == 0, stderr
    assert report["passed"] is True
    assert report["connections"] == {"made": 16, "failed": 0, "planned": 16}
    messages = report["messages"]
    # 2 rooms of 2 posters at 20/s for 1 s (each starts within its first interval).
    assert messages["sent"] == messages["acknowledged"] >= 2 * 2 * 15
    assert messages["delivered"] == 3 * messages["acknowledged"]  # every watcher, each one
    assert (messages["lost"], messages["duplicated"], messages["out_of_order"]) == (0, 0, 0)
    relays = report["relays"]
    assert relays["sent"] == relays["delivered"] > 0
    assert report["errors"] == {}
    for name in ("ack_latency", "delivery_latency"):
        summary = report[name]
        assert summary["count"] > 0
        assert 0 < summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"] < 5
    # The rooms were made for the run and are gone again.
    async with trio_websocket.open_websocket_url(srv.url + "/v1/admin",
                                                 subprotocols=["roomctl.v1"]) as admin:
        await admin.send_message(json.dumps({"type": "hello", "token": srv.admin_token}))
        await admin.get_message()
        await admin.send_message(json.dumps({"type": "list-rooms", "ref": "l"}))
        listed = json.loads(await admin.get_message())
    assert listed["rooms"] == []


@pytest.mark.parametrize(("kind", "role", "fault", "section", "field"), [
    ("message-posted", "watcher", "drop", "messages", "lost"),
    ("message-posted", "watcher", "twice", "messages", "duplicated"),
    ("message-posted", "watcher", "swap", "messages", "out_of_order"),
    ("ice-candidate", "caller", "drop", "relays", "lost"),
])
async def test_a_planted_fault_is_found_and_fails_the_run(
        srv: Server, kind: str, role: str, fault: str, section: str, field: str) -> None:
    async with tampering_proxy(srv, planted(kind, role, fault)) as url:
        rc, report, _ = await load_test(url, srv, "--posters", "1", "--watchers", "2",
                                        "--callers", "2" if role == "caller" else "0")

    assert rc == 1
    assert report["passed"] is False
    assert report[section][field] == 1
    faults = {name: report[section][name] for name in ("lost", "duplicated", "out_of_order")}
    assert sum(faults.values()) == 1, faults  # exactly the planted one, nothing else
    assert report["connections"]["failed"] == 0 and report["errors"] == {}


def test_a_target_off_the_loopback_is_refused_without_allow_remote() -> None:
    result = run_cli("load-test", "--url", "http://192.0.2.1:8750")
    assert result.rc == 2
    line = one_error_line(result)
    assert "is not on this machine's loopback" in line and "--allow-remote" in line


@pytest.mark.parametrize("args", [
    ["--rooms", "0"],
    ["--rate", "0"],
    ["--duration", "2h"],
    ["--posters", "0", "--callers", "0"],
    ["--rooms", "1000", "--watchers", "20"],
    ["--posters", "600", "--watchers", "600"],
], ids=" ".join)
def test_the_run_is_bounded(args: list[str]) -> None:
    result = run_cli("load-test", "--url", "http://127.0.0.1:9", *args)
    assert result.rc == 2, result
    one_error_line(result)
