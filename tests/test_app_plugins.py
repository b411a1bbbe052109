"""Apps from outside: an installed app package, and ``--app module:factory``.

``echo-app`` is a real distribution: the test builds its wheel (a zip, as any build backend
would make it; no build tool runs here, so nothing is fetched), pip installs it into a
directory of the test's own, and ``roomctl serve`` started with that directory on its
Python path finds it through the ``roomctl.apps`` entry point, exactly as chat is found.
Nothing is installed into the test's own environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import zipfile
from collections.abc import Callable
from typing import Any

import trio
import trio_websocket

from tests.conftest import ROOT, WAIT, ServeProcess

ECHO_APP = '''
import msgspec

from daemon.apps.api import App, Context, handles
from protocol import Event, Request
from protocol.messages import Hello


class Shout(Request, tag="shout", frozen=True, kw_only=True):
    text: str


class Echoed(Event, tag="echoed", frozen=True, kw_only=True):
    text: str


class EchoMeta(msgspec.Struct, frozen=True, kw_only=True):
    pass


class EchoApp(App[EchoMeta, None]):
    name = "echo"
    room_meta_type = EchoMeta
    events = (Echoed,)

    def admit(self, ctx: Context, hello: Hello) -> None:
        return None

    @handles(Shout)
    def shout(self, ctx: Context, request: Shout) -> None:
        ctx.broadcast(Echoed(text=request.text.upper()))
        ctx.ok()


def make(config):
    assert config.port is not None  # the daemon's Config is passed to a factory that takes one
    return EchoApp()
'''


def build_wheel(directory: pathlib.Path, *, module: str, source: str,
                entry_point: str) -> pathlib.Path:
    """Write a wheel of one module with a ``roomctl.apps`` entry point; return its path."""
    dist, version = "echo_app", "1.0"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}.py": source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: echo-app\nVersion: {version}\n"
                            .encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[roomctl.apps]\n{entry_point}\n".encode(),
    }
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pip_install(wheel: pathlib.Path, target: pathlib.Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)


async def shout_in_an_echo_room(sp: ServeProcess) -> dict[str, Any]:
    async with trio_websocket.open_websocket_url(sp.url + "/v1/admin") as admin:
        await admin.send_message(json.dumps({"type": "hello", "token": sp_admin_token(sp)}))
        await admin.get_message()
        await admin.send_message(json.dumps({"type": "create-room", "room": "hall",
                                             "app": "echo", "ref": "c"}))
        created = json.loads(await admin.get_message())
        assert created["type"] == "room" and created["room"]["app"] == "echo", created
    async with trio_websocket.open_websocket_url(sp.url + "/v1/rooms/hall") as ws:
        await ws.send_message(json.dumps({"type": "hello", "ref": "h"}))
        assert json.loads(await ws.get_message())["type"] == "welcome"
        await ws.send_message(json.dumps({"type": "shout", "text": "hello", "ref": "s"}))
        with trio.fail_after(WAIT):
            echoed: dict[str, Any] = json.loads(await ws.get_message())
    return echoed


def sp_admin_token(sp: ServeProcess) -> str:
    return (sp.data_dir / "admin-token").read_text().strip()


async def test_an_installed_app_package_is_served_beside_chat(
        tmp_path: pathlib.Path, serve_process: Callable[..., ServeProcess]) -> None:
    wheel = build_wheel(tmp_path, module="echo_app", source=ECHO_APP,
                        entry_point="echo = echo_app:make")
    site = tmp_path / "site"
    pip_install(wheel, site)
    assert (site / "echo_app-1.0.dist-info" / "entry_points.txt").exists()

    sp = serve_process("--memory", env={"PYTHONPATH": str(site)})
    assert await shout_in_an_echo_room(sp) == {"type": "echoed", "text": "HELLO"}
    # Chat is still there, and still the app of rooms made by joining them.
    async with trio_websocket.open_websocket_url(sp.url + "/v1/rooms/visit") as ws:
        await ws.send_message(json.dumps({"type": "hello", "ref": "h"}))
        assert json.loads(await ws.get_message())["room"]["app"] == "chat"


async def test_app_option_loads_a_module_factory_from_the_path(
        tmp_path: pathlib.Path, serve_process: Callable[..., ServeProcess]) -> None:
    (tmp_path / "my_echo.py").write_text(ECHO_APP)
    sp = serve_process("--memory", "--app", "my_echo:make",
                       env={"PYTHONPATH": str(tmp_path)})
    assert await shout_in_an_echo_room(sp) == {"type": "echoed", "text": "HELLO"}


def test_an_app_that_cannot_load_stops_serve_with_one_line(tmp_path: pathlib.Path) -> None:
    (tmp_path / "broken_app.py").write_text("def make():\n    return 42\n")
    cases = {
        "no_such_module:make": "ModuleNotFoundError",
        "broken_app:nothing": "broken_app has no nothing",
        "broken_app:make": "returned int, not an App",
        "daemon.apps.chat:from_config": "an app named 'chat' is already loaded",
        "justamodule": "give it as module:factory",
    }
    for spec, reason in cases.items():
        out = subprocess.run(
            [sys.executable, "-m", "roomctl", "serve", "--memory", "--port", "0",
             "--data-dir", str(tmp_path / "data"), "--app", spec],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
            env={**os.environ, "PYTHONPATH": str(tmp_path)})
        assert out.returncode == 1, (spec, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("roomctl serve: --app"), out.stderr
        assert reason in lines[0], (spec, lines[0])
