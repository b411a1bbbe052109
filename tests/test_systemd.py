"""systemd: the notify protocol against a test notify socket, and the unit the daemon prints.

The service manager's side is played by a unix datagram socket the test binds (a path,
and an abstract ``@`` name), as systemd binds its own: the daemon is a real ``roomctl
serve`` process with ``NOTIFY_SOCKET`` (and ``WATCHDOG_USEC``) in its environment. The
printed unit is checked with ``systemd-analyze verify`` where systemd is installed (it is
not running here: only its offline checks are used).
"""

from __future__ import annotations

import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import trio
import trio_websocket

from daemon.notify import Notifier
from tests.cli_util import run_cli
from tests.conftest import ROOT, ServeProcess

WAIT = 10.0


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[
        tuple[str, socket.socket]]:
    """A notify socket as systemd makes it: NOTIFY_SOCKET's value, and the bound socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        name = f"roomctl-test-{secrets.token_hex(6)}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(WAIT)
    yield address, sock
    sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    """The next datagram, as its KEY=value lines."""
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


def receive_until(sock: socket.socket, key: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Datagrams until one carrying ``key``: that one, and those before it."""
    before = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        message = receive(sock)
        if key in message:
            return message, before
        before.append(message)
    raise AssertionError(f"no {key} in time; got {before}")


def test_ready_status_watchdog_and_stopping(
        serve_process: Callable[..., ServeProcess], manager: tuple[str, socket.socket]) -> None:
    address, sock = manager
    sp = serve_process(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})

    # READY=1 comes once it accepts connections: the listening line was printed first,
    # and the daemon answers now.
    ready = receive(sock)
    assert ready["READY"] == "1" and ready["MAINPID"] == str(sp.proc.pid)
    assert ready["STATUS"] == (f"listening on 127.0.0.1:{sp.port}; 0 rooms, 0 participants, "
                               "0 connections")
    with socket.create_connection((sp.host, sp.port), timeout=WAIT):
        pass
    # The watchdog is pinged at half the interval systemd asked for: 0.1 s.
    started = time.monotonic()
    pings = 0
    while pings < 5:
        message = receive(sock)
        pings += message.get("WATCHDOG") == "1"
    assert time.monotonic() - started < 3.0

    sp.proc.send_signal(signal.SIGTERM)
    stopping, _ = receive_until(sock, "STOPPING")
    assert stopping["STOPPING"] == "1"
    assert stopping["STATUS"].startswith("shutting down")
    assert sp.proc.wait(timeout=WAIT) == 0


async def test_status_follows_rooms_and_connections(
        serve_process: Callable[..., ServeProcess], manager: tuple[str, socket.socket]) -> None:
    address, sock = manager
    sp = serve_process(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"})
    await trio.to_thread.run_sync(receive, sock)  # READY=1
    wanted = "1 room, 1 participant, 1 connection"

    def status_until_wanted() -> str:
        seen = ""
        deadline = time.monotonic() + WAIT
        while not seen.endswith(wanted) and time.monotonic() < deadline:
            seen = receive(sock).get("STATUS", seen)
        return seen

    # A visitor's connection makes a room and a participant; the status catches up.
    async with trio_websocket.open_websocket_url(
            f"{sp.url}/v1/rooms/ops", subprotocols=["roomctl.v1"], connect_timeout=WAIT,
            disconnect_timeout=WAIT) as ws:
        await ws.send_message('{"type": "hello", "name": "alice"}')
        with trio.fail_after(WAIT):
            await ws.get_message()
        seen = await trio.to_thread.run_sync(status_until_wanted)
    assert seen.endswith(wanted), seen


def test_no_notify_socket_no_datagram_and_a_bad_one_is_ignored() -> None:
    assert Notifier.from_environment({}) is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "relative/path"}) is None
    # WATCHDOG_PID naming another process: the variables were inherited, not for us.
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000",
                                          "WATCHDOG_PID": "1"})
    assert notifier is not None and notifier.watchdog_interval is None
    notifier.close()


def test_a_vanished_manager_does_not_stop_the_daemon(tmp_path: pathlib.Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.send(READY="1") is False  # ENOENT: logged once, never raised
    assert notifier.send(STATUS="x") is False
    notifier.close()


# --- the unit ---------------------------------------------------------------------------------


def printed_unit(*args: str, env: dict[str, str] | None = None) -> str:
    result = run_cli("serve", *args, "--print-systemd-unit", env=env)
    assert result.rc == 0, result.err
    return result.out


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_is_a_hardened_notify_service(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "roomctl.toml"
    config.write_text("shutdown_timeout = 20.0\n")
    unit = directives(printed_unit("--config", str(config)))

    assert unit["Type"] == ["notify"]
    assert unit["DynamicUser"] == ["yes"] and unit["StateDirectory"] == ["roomctl"]
    assert unit["Environment"][0] == "XDG_STATE_HOME=%S"  # the data dir: /var/lib/roomctl
    for hardening in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                      "RestrictSUIDSGID", "LockPersonality"):
        assert unit[hardening] == ["yes"], hardening
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["CapabilityBoundingSet"] == [""]  # no capability at all on port 8750
    # It runs this very roomctl, with the config file, and waits long enough for a stop.
    [exec_start] = unit["ExecStart"]
    assert exec_start.endswith(f"serve --config {config}")
    assert exec_start.split()[0] in (sys.executable, shutil.which("roomctl"),
                                     os.path.abspath(sys.executable))
    assert unit["TimeoutStopSec"] == ["50s"]  # 20 s for clients, 20 s for the store, margin


def test_a_privileged_port_gets_just_the_capability_to_bind_it() -> None:
    unit = directives(printed_unit("--port", "443"))
    assert unit["CapabilityBoundingSet"] == unit["AmbientCapabilities"] == \
        ["CAP_NET_BIND_SERVICE"]
    assert unit["PrivateUsers"] == ["no"]
    assert unit["ExecStart"][0].endswith(" serve --port 443")


def test_options_given_are_passed_on_and_variables_are_not(tmp_path: pathlib.Path) -> None:
    unit = directives(printed_unit(
        "--host", "0.0.0.0", "--no-auto-create", "--memory", "--grace", "30",
        "--allowed-origin", "https://a.example.org", "--allowed-origin", "https://b.example.org",
        "--tls-cert", "cert.pem", "--tls-key", "/k.pem", "--log-level", "debug"))
    [exec_start] = unit["ExecStart"]
    assert exec_start.split(" serve ", 1)[1] == (
        f"--host 0.0.0.0 --memory --grace 30 --no-auto-create --tls-cert "
        f"{pathlib.Path.cwd() / 'cert.pem'} --tls-key /k.pem --allowed-origin "
        "https://a.example.org --allowed-origin https://b.example.org --log-level debug")
    assert "--max-text" not in printed_unit(env={"ROOMCTL_MAX_TEXT": "10"})


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package has it)")
    return found


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: pathlib.Path) -> None:
    analyze = _systemd_analyze()
    path = tmp_path / "roomctl.service"
    path.write_text(printed_unit())
    # --man=no: roomctl(1) is in this repository, not installed where man looks.
    result = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # an unknown or misspelled directive is only a warning


def test_systemd_analyze_verify_can_fail(tmp_path: pathlib.Path) -> None:
    analyze = _systemd_analyze()
    path = tmp_path / "roomctl.service"
    path.write_text(printed_unit().replace("NoNewPrivileges=", "NoNewPrivilegs="))
    result = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert "Unknown key 'NoNewPrivilegs'" in result.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: pathlib.Path) -> None:
    analyze = _systemd_analyze()
    path = tmp_path / "roomctl.service"
    path.write_text(printed_unit())
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    found = re.search(r"Overall exposure level for roomctl.service: (\d+\.\d+) (\w+)",
                      result.stdout)
    assert found is not None, result.stdout + result.stderr
    # systemd's scale: 0 to 10, "OK" up to 2.0 (a plain unit scores 9.6, UNSAFE).
    assert float(found.group(1)) <= 2.0, result.stdout
