"""The web page the daemon serves: its HTTP side, and the room page in real Chromium.

The first tests speak plain HTTP to an in-process daemon: pages, static files, security
headers, the lobby's room list. The browser tests drive Debian's Chromium with a fake
camera and microphone (Playwright's sync API) against a ``roomctl serve`` subprocess,
with real WebRTC between the pages, and check what a person would see.
"""

from __future__ import annotations

import http.client
import json
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
import trio
import trio_websocket
from playwright.sync_api import Browser, BrowserContext

from daemon.config import read_admin_token
from daemon.tokens import Authority, ensure_join_secret
from protocol import limits
from tests.browser_util import (
    WAIT,
    RoomPage,
    SocketGate,
    artifacts_dir,
    browser,  # noqa: F401 (fixture)
    expect,
    expect_message,
    is_local_address,
    playwright,  # noqa: F401 (fixture)
    wait_until,
)
from tests.conftest import ROOT, ServeProcess, Server

# --- plain HTTP --------------------------------------------------------------------------------


def _fetch(server: Server, path: str, method: str = "GET",
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


async def fetch(server: Server, path: str, method: str = "GET",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Return status, headers (lower-case names) and body of one real HTTP request."""
    with trio.fail_after(WAIT):
        return await trio.to_thread.run_sync(_fetch, server, path, method, headers)


class _PageScan(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block, and what the page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.inline_code: list[str] = []
        self.assets: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in attributes:
            if name.startswith("on") or name == "style":
                self.inline_code.append(f"<{tag} {name}>")
        if tag == "style":
            self.inline_code.append("<style>")
        if tag == "script":
            self.scripts.append(attributes.get("src"))
            self._in_script = True
        for name in ("src", "href"):
            value = attributes.get(name)
            if value and value.startswith("/static/"):
                self.assets.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_code.append("<script> with a body")


def _check_security_headers(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["connect-src"][0] == "'self'"
    # Only the daemon's own origin, as ws:/wss:, besides 'self'.
    assert all(re.fullmatch(r"wss?://127\.0\.0\.1:\d+", s) for s in directives["connect-src"][1:])
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("path", ["/", "/r/demo", "/r/Team.Standup_2-b"])
async def test_pages_are_html_with_a_strict_content_security_policy(
    server: Server, path: str
) -> None:
    status, headers, body = await fetch(server, path)
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    _check_security_headers(headers)
    scan = _PageScan()
    scan.feed(body.decode())
    assert scan.inline_code == []
    assert scan.scripts and all(src and src.startswith("/static/js/") for src in scan.scripts)
    # Nothing from another origin: every script, style and icon is the daemon's own.
    assert b"http://" not in body and b"https://" not in body.replace(b"http://www.w3.org", b"")


async def test_the_pages_room_name_rule_is_the_protocols(server: Server) -> None:
    # One rule: the page imports it from a module the daemon makes from protocol.limits,
    # and no script carries a room-name pattern of its own.
    status, _, body = await fetch(server, "/static/js/limits.js")
    assert status == 200
    pattern = re.search(rb"ROOM_NAME = new RegExp\((\".*?\")\)", body)
    assert pattern is not None and json.loads(pattern.group(1)) == limits.ROOM_NAME_PATTERN
    for script in ("lobby.js", "room.js"):
        source = (await fetch(server, f"/static/js/{script}"))[2]
        assert b"from './limits.js'" in source and b"A-Za-z0-9" not in source


async def test_every_asset_the_pages_load_is_served_with_its_type_and_an_etag(
    server: Server,
) -> None:
    assets: set[str] = set()
    for page in ("/", "/r/demo"):
        scan = _PageScan()
        scan.feed((await fetch(server, page))[2].decode())
        assets.update(scan.assets)
    # The modules the entry points import, found by reading them like a browser would.
    pending = [a for a in assets if a.endswith(".js")]
    while pending:
        _, _, source = await fetch(server, pending.pop())
        for module in re.findall(rb"from '\./([\w-]+\.js)'", source):
            path = "/static/js/" + module.decode()
            if path not in assets:
                assets.add(path)
                pending.append(path)
    assert {"/static/css/room.css", "/static/js/room.js", "/static/js/lobby.js",
            "/static/js/connection.js", "/static/js/mesh.js", "/static/js/limits.js"} <= assets
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
             ".svg": "image/svg+xml"}
    for asset in sorted(assets):
        status, headers, body = await fetch(server, asset)
        assert status == 200, asset
        assert headers["content-type"] == types[asset[asset.rfind("."):]], asset
        assert headers["cache-control"] == "no-cache"
        _check_security_headers(headers)
        assert body
        etag = headers["etag"]
        status, headers, body = await fetch(server, asset, headers={"If-None-Match": etag})
        assert (status, body, headers["etag"]) == (304, b"", etag), asset
        status, headers, body = await fetch(server, asset, method="HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 0


@pytest.mark.parametrize("path", [
    "/static/../web.py",
    "/static/%2e%2e/web.py",
    "/static/js/..%2f..%2fweb.py",
    "/static/js/../../server.py",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/js/",
    "/static/",
    "/static/js/room.js%00.html",
    "/static/js/room.js/..",
])
async def test_paths_outside_the_static_files_are_refused(server: Server, path: str) -> None:
    status, headers, body = await fetch(server, path)
    assert status == 404
    assert b"import" not in body and b"root:" not in body
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("path", ["/r/-starts-with-dash", "/r/has%20space", "/r/", "/r/a/b",
                                  "/r/" + "x" * 65, "/r/%2e%2e"])
async def test_a_room_page_with_an_invalid_name_says_why(server: Server, path: str) -> None:
    status, headers, body = await fetch(server, path)
    assert status == 404
    assert headers["content-type"] == "text/html; charset=utf-8"
    _check_security_headers(headers)
    assert b"Not found" in body


async def test_page_paths_take_only_get_and_head(server: Server) -> None:
    # (POST /v1/rooms creates a room: the HTTP API's, tests/test_http_api.py.)
    for path in ("/", "/r/demo", "/static/js/room.js"):
        status, headers, _ = await fetch(server, path, method="POST")
        assert status == 405, path
        assert headers["allow"] == "GET, HEAD"


async def test_the_lobby_lists_only_public_rooms(
    server: Server, connect: Callable[..., Any]
) -> None:
    async with connect(path="/v1/admin") as admin:
        await admin.hello("admin", token=server.admin_token)
        for room, meta in (("town-square", {"public": True, "topic": "Everyone welcome"}),
                           ("back-office", {"topic": "Private"}),
                           ("atrium", {"public": True})):
            reply = await admin.request({"type": "create-room", "room": room, "meta": meta})
            assert reply["type"] == "room"
            assert reply["room"]["meta"]["public"] is meta.get("public", False)
    async with connect("town-square") as person:
        await person.hello("ada")
        status, headers, body = await fetch(server, "/v1/rooms")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert json.loads(body) == {"rooms": [
        {"name": "atrium", "topic": "", "participants": 0},
        {"name": "town-square", "topic": "Everyone welcome", "participants": 1},
    ], "next": None}
    # A page at a time, by name.
    status, _, body = await fetch(server, "/v1/rooms?limit=1")
    assert json.loads(body) == {"rooms": [{"name": "atrium", "topic": "", "participants": 0}],
                                "next": "atrium"}
    status, _, body = await fetch(server, "/v1/rooms?limit=1&after=atrium")
    assert [room["name"] for room in json.loads(body)["rooms"]] == ["town-square"]


async def test_other_paths_keep_their_json_answers(server: Server) -> None:
    status, _, body = await fetch(server, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = await fetch(server, "/nowhere")
    assert (status, json.loads(body)) == (404, {"error": {"code": "not-found",
                                                          "message": "not found"}})
    status, _, _ = await fetch(server, "/v1/admin")
    assert status == 426


async def test_the_access_check_answers_as_a_hello_would_and_takes_the_token_from_a_header(
    server: Server, connect: Callable[..., Any]
) -> None:
    async with connect(path="/v1/admin") as admin:
        await admin.hello("admin", token=server.admin_token)
        for room, private in (("vault", True), ("annex", True), ("square", False)):
            reply = await admin.request({"type": "create-room", "room": room,
                                         "private": private})
            assert reply["type"] == "room"
    signer = Authority(ensure_join_secret(server.data_dir), admin_token=lambda: "x")

    def token(room: str, **kw: Any) -> str:
        return signer.issue(room=room, identity="eve", name=None, grants=["join"],
                            ttl=kw.get("ttl", 600), now=kw.get("now", time.time()))[0]

    async def access(room: str, bearer: str | None = None, query: str = "") -> Any:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        status, headers_, body = await fetch(server, f"/v1/rooms/{room}/access{query}",
                                             headers=headers)
        assert status == 200 and headers_["cache-control"] == "no-store"
        return json.loads(body)

    assert await access("square") == {"room": "square", "private": False, "admitted": True}
    assert await access("not-yet") == {"room": "not-yet", "private": False, "admitted": True}
    assert await access("vault") == {
        "room": "vault", "private": True, "admitted": False, "code": "unauthorized",
        "message": "room 'vault' needs a join token"}
    assert (await access("vault", token("vault")))["admitted"] is True
    assert (await access("vault", server.admin_token))["admitted"] is True
    expired = await access("vault", token("vault", ttl=60, now=time.time() - 3600))
    assert (expired["admitted"], expired["code"], expired["message"]) == \
        (False, "unauthorized", "the token has expired")
    other = await access("vault", token("annex"))
    assert (other["admitted"], other["code"]) == (False, "forbidden")
    assert "for room 'annex'" in other["message"]
    # A token in the URL is not read (URLs end up in logs and histories).
    assert (await access("vault", query=f"?token={token('vault')}"))["admitted"] is False
    _, _, body = await fetch(server, "/metrics")
    assert re.search(r"^roomctl_refused_tokens_total 1(\.0)?$", body.decode(), re.M)


# --- in Chromium ---------------------------------------------------------------------------------


@pytest.fixture
def daemon_url(serve_process: Callable[..., ServeProcess]) -> str:
    return serve_process().http


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Callable[[], BrowserContext]]:  # noqa: F811
    """A factory of fresh browser contexts (one per person); all closed at teardown."""
    opened: list[BrowserContext] = []

    def new_context(**options: Any) -> BrowserContext:
        options.setdefault("viewport", {"width": 1280, "height": 760})
        context = browser.new_context(**options)
        opened.append(context)
        return context

    yield new_context
    for context in opened:
        context.close()


def _peer_id(page: RoomPage, name: str) -> str:
    return str(page.person(name).get_attribute("data-id"))


def test_two_pages_see_and_hear_each_other_and_chat(
    contexts: Callable[..., BrowserContext], daemon_url: str
) -> None:
    alice = RoomPage(contexts(), daemon_url, "demo", "alice").join()
    bob = RoomPage(contexts(), daemon_url, "demo", "bob").join()
    expect(alice.person("bob")).to_be_visible()
    expect(bob.person("alice")).to_be_visible()
    alice_id, bob_id = _peer_id(bob, "alice"), _peer_id(alice, "bob")

    # Video both ways: framesDecoded from getStats rises on each side.
    alice_frames = alice.assert_video_flows_from(bob_id, "bob")
    bob_frames = bob.assert_video_flows_from(alice_id, "alice")
    for page, peer in ((alice, bob_id), (bob, alice_id)):
        stats = page.stats()[peer]
        assert stats["state"] == "connected"
        assert stats["audioBytesReceived"] > 0  # the fake microphone's beeps arrive too
        # The media path never leaves this machine (addresses it owns go through lo).
        assert is_local_address(stats["localAddress"]), stats
        assert is_local_address(stats["remoteAddress"]), stats

    # Chat both ways, typed and sent with Enter.
    alice.send("hello bob")
    expect_message(bob, "alice", "hello bob")
    bob.send("hi alice, the build is green")
    expect_message(alice, "bob", "hi alice, the build is green")
    expect(alice.page.locator("#messages .message.mine")).to_have_count(1)

    # Topic and status set on one page show on the other.
    alice.page.get_by_role("button", name="Edit topic").click()
    alice.page.get_by_label("Topic", exact=True).fill("Release planning")
    alice.page.get_by_label("Topic", exact=True).press("Enter")
    expect(bob.page.locator("#topic")).to_have_text("Release planning")
    bob.page.get_by_label("Your status").select_option("busy")
    bob.page.get_by_label("Status message").fill("in a meeting")
    bob.page.get_by_label("Status message").press("Enter")
    expect(alice.person("bob").locator(".detail")).to_have_text("Busy \u2014 in a meeting")

    # A pin made on one page shows on the other.
    bob.page.locator("#messages .message").first.hover()
    bob.page.locator("#messages .message").first.get_by_role("button", name="Pin message").click()
    expect(alice.page.locator("#pins")).to_contain_text("alice: hello bob")

    alice.page.wait_for_timeout(300)  # let the tiles settle for the picture
    shot = artifacts_dir() / "two-person-room.png"
    alice.page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # Muting: the other page's participant list and tile say so.
    alice.page.get_by_role("button", name="Turn camera off").click()
    alice.page.get_by_role("button", name="Mute microphone").click()
    expect(bob.person("alice").get_by_role("img", name="Camera off")).to_be_visible()
    expect(bob.person("alice").get_by_role("img", name="Microphone muted")).to_be_visible()
    expect(bob.tile("alice")).to_have_class(re.compile(r"\bvideo-off\b"))
    expect(bob.tile("alice").get_by_role("img", name="Microphone muted")).to_be_visible()
    expect(alice.page.get_by_role("button", name="Turn camera on")).to_be_visible()
    # The camera is really released, and the peer connection is kept.
    assert alice.page.evaluate("window.roomctl.state().videoMuted") is True
    before = bob.frames_from(alice_id)
    bob.page.wait_for_timeout(1500)
    assert bob.frames_from(alice_id) - before <= 3  # nothing but what was in flight

    # ... and turning it back on restores the video without a new negotiation.
    alice.page.get_by_role("button", name="Turn camera on").click()
    expect(bob.person("alice").get_by_role("img", name="Camera on")).to_be_visible()
    bob.wait_for_video_from(alice_id, "alice", more_than=bob.frames_from(alice_id) + 10)
    assert bob.stats()[alice_id]["serial"] == 1
    assert alice.errors == [] and bob.errors == []
    print(f"frames decoded: alice {alice_frames}, bob {bob_frames}")


def test_a_page_without_camera_joins_receive_only(
    contexts: Callable[..., BrowserContext], daemon_url: str
) -> None:
    alice = RoomPage(contexts(), daemon_url, "quiet", "alice").join()
    carol = RoomPage(contexts(), daemon_url, "quiet", "carol").join(media=False)
    alice_id, carol_id = _peer_id(carol, "alice"), _peer_id(alice, "carol")
    carol.assert_video_flows_from(alice_id, "alice")
    expect(carol.page.get_by_role("button", name="Unmute microphone")).to_be_disabled()
    expect(carol.page.get_by_role("button", name="Turn camera on")).to_be_disabled()
    expect(alice.person("carol").get_by_role("img", name="Camera off")).to_be_visible()
    expect(alice.person("carol").get_by_role("img", name="Microphone muted")).to_be_visible()
    expect(alice.tile("carol")).to_have_class(re.compile(r"\bvideo-off\b"))
    assert alice.stats()[carol_id]["state"] == "connected"
    assert alice.frames_from(carol_id) == 0
    carol.send("I can see you, no camera here")
    expect_message(alice, "carol", "I can see you, no camera here")


def test_the_room_page_works_at_phone_width_and_from_the_keyboard(
    contexts: Callable[..., BrowserContext], daemon_url: str
) -> None:
    phone = contexts(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = RoomPage(phone, daemon_url, "pocket", "dana")
    # Keyboard only: the name field has focus, Enter submits the join form.
    page.page.keyboard.type("dana")
    page.page.keyboard.press("Enter")
    wait_until(page.page, lambda: page.state()["connection"] == "open", "dana to join")
    unlabeled = page.page.evaluate("""() => [...document.querySelectorAll(
        'button, input, select, textarea')].filter(c => c.offsetParent !== null).filter(c =>
        !(c.labels && c.labels.length) && !c.getAttribute('aria-label') &&
        !c.getAttribute('aria-labelledby') && !c.textContent.trim()).map(c => c.outerHTML)""")
    assert unlabeled == []
    width = page.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways at phone width ({width}px)"
    box = page.page.get_by_label("Chat message")
    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    assert page.messages() == []  # Shift+Enter is a new line, not a send
    box.press("Enter")
    expect(page.page.locator("#messages .text")).to_have_text("first line\nsecond line")
    expect(box).to_have_value("")
    page.page.screenshot(path=str(artifacts_dir() / "phone-room.png"), full_page=True)


def _create_rooms(daemon: ServeProcess, rooms: dict[str, dict[str, Any]]) -> None:
    """Create rooms through the admin endpoint with the daemon's admin token."""
    token = read_admin_token(daemon.data_dir)

    async def main() -> None:
        with trio.fail_after(WAIT):
            async with trio_websocket.open_websocket_url(
                f"{daemon.url}/v1/admin", subprotocols=["roomctl.v1"]
            ) as ws:
                await ws.send_message(json.dumps({"type": "hello", "token": token, "ref": "h"}))
                assert json.loads(await ws.get_message())["type"] == "welcome"
                for room, meta in rooms.items():
                    await ws.send_message(json.dumps({"type": "create-room", "room": room,
                                                      "meta": meta, "ref": room}))
                    assert json.loads(await ws.get_message())["type"] == "room"

    trio.run(main)


def test_the_lobby_lists_public_rooms_and_opens_them(
    contexts: Callable[..., BrowserContext], serve_process: Callable[..., ServeProcess]
) -> None:
    daemon = serve_process()
    _create_rooms(daemon, {"town-square": {"public": True, "topic": "Everyone welcome"},
                           "back-office": {"topic": "Not listed"}})
    page = contexts().new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{daemon.http}/")
    entry = page.get_by_role("link", name=re.compile("town-square"))
    expect(entry).to_contain_text("Everyone welcome")
    expect(entry).to_contain_text("0 people")
    expect(page.get_by_role("listitem")).to_have_count(1)  # back-office is not public

    page.get_by_label("Room name").fill("no spaces please")
    page.get_by_label("Room name").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("letters, digits")
    assert page.url == f"{daemon.http}/"

    entry.click()
    page.wait_for_url(f"{daemon.http}/r/town-square")
    expect(page.get_by_role("heading", name="Join town-square")).to_be_visible()
    page.go_back()
    page.get_by_label("Room name").fill("fresh.room-2")
    page.get_by_label("Room name").press("Enter")
    page.wait_for_url(f"{daemon.http}/r/fresh.room-2")
    expect(page.get_by_role("heading", name="Join fresh.room-2")).to_be_visible()
    assert errors == []


# --- reconnecting --------------------------------------------------------------------------------


def _post_messages(url: str, room: str, texts: list[str]) -> list[int]:
    """Post ``texts`` with a real WebSocket client (a hidden observer); return their seqs."""

    async def main() -> list[int]:
        seqs = []
        with trio.fail_after(WAIT):
            async with trio_websocket.open_websocket_url(
                f"{url}/v1/rooms/{room}", subprotocols=["roomctl.v1"]
            ) as ws:
                await ws.send_message(json.dumps({"type": "hello", "name": "poster",
                                                  "hidden": True, "ref": "h"}))
                assert json.loads(await ws.get_message())["type"] == "welcome"
                for n, text in enumerate(texts):
                    await ws.send_message(json.dumps({"type": "send-message", "text": text,
                                                      "ref": f"m{n}"}))
                    while (reply := json.loads(await ws.get_message())).get("ref") != f"m{n}":
                        pass
                    assert reply["type"] == "ok", reply
                    seqs.append(reply["seq"])
        return seqs

    return trio.run(main)


def test_a_dropped_connection_resumes_the_session_and_keeps_the_call(
    contexts: Callable[..., BrowserContext], serve_process: Callable[..., ServeProcess]
) -> None:
    daemon = serve_process()
    gate = SocketGate()
    alice = RoomPage(contexts(), daemon.http, "resume", "alice", gate=gate).join()
    bob = RoomPage(contexts(), daemon.http, "resume", "bob").join()
    alice_id, bob_id = _peer_id(bob, "alice"), _peer_id(alice, "bob")
    alice.assert_video_flows_from(bob_id, "bob")
    bob.send("before the drop")
    expect_message(alice, "bob", "before the drop")
    session = alice.state()["sessionId"]

    gate.cut()
    expect(bob.person("alice").locator(".detail")).to_have_text("Reconnecting\u2026")
    wait_until(alice.page, lambda: alice.state()["connection"] == "reconnecting",
               "alice's page to notice the drop")
    missed = [f"missed {n}" for n in range(5)]
    _post_messages(daemon.url, "resume", missed)
    bob.send("also missed")
    # Media is peer to peer: the call goes on while the signaling is down.
    frames = alice.frames_from(bob_id)
    alice.wait_for_video_from(bob_id, "bob", more_than=frames + 10)
    alice.send("typed while offline")
    expect(alice.page.locator("#compose-hint")).to_have_text("1 waiting to be sent")
    wait_until(alice.page, lambda: gate.refused >= 1, "alice's page to try to reconnect")

    gate.reopen()
    wait_until(alice.page, lambda: alice.state()["welcomes"] == 2, "alice to resume")
    state = alice.state()
    assert state["sessionId"] == session  # the same session, resumed
    expect(bob.person("alice").locator(".detail")).to_have_text("Online")
    for text in missed:
        expect_message(alice, "poster", text)
    expect_message(alice, "bob", "also missed")
    expect_message(bob, "alice", "typed while offline")
    expect_message(alice, "alice", "typed while offline")
    state = alice.state()
    assert state["seqs"] == list(range(1, 9)), state
    assert state["caughtUp"] >= 6
    assert len(alice.messages()) == 8
    # The same peer connection as before the drop, still carrying video.
    stats = alice.stats()[bob_id]
    assert (stats["serial"], stats["state"]) == (1, "connected")
    assert bob.stats()[alice_id]["serial"] == 1
    alice.wait_for_video_from(bob_id, "bob", more_than=alice.frames_from(bob_id) + 10)
    assert alice.errors == []


def test_a_daemon_restart_inside_the_grace_period_loses_no_message(
    contexts: Callable[..., BrowserContext], serve_process: Callable[..., ServeProcess],
    tmp_path: Any,
) -> None:
    data_dir = tmp_path / "data"
    first = serve_process(data_dir=data_dir)
    gate = SocketGate()
    alice = RoomPage(contexts(), first.http, "sturdy", "alice", gate=gate).join(media=False)
    _post_messages(first.url, "sturdy", ["one", "two", "three"])
    for text in ("one", "two", "three"):
        expect_message(alice, "poster", text)
    old_session = alice.state()["sessionId"]

    # Hold the page off while the daemon restarts, so that messages arrive while it is away.
    gate.open = False
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=WAIT) == 0
    wait_until(alice.page, lambda: alice.state()["connection"] == "reconnecting",
               "alice's page to notice the daemon going away")
    second = serve_process("--port", str(first.port), data_dir=data_dir)
    assert second.port == first.port
    _post_messages(second.url, "sturdy", [f"while away {n}" for n in range(4)])
    gate.reopen()

    wait_until(alice.page, lambda: alice.state()["welcomes"] >= 2, "alice to reconnect")
    for n in range(4):
        expect_message(alice, "poster", f"while away {n}")
    state = alice.state()
    assert state["sessionId"] != old_session  # the restart ended the old session
    assert state["seqs"] == list(range(1, 8)), state
    assert len(alice.messages()) == 7
    expect(alice.person("alice")).to_be_visible()
    alice.send("back again")
    expect_message(alice, "alice", "back again")
    assert alice.state()["seqs"] == list(range(1, 9))
    assert alice.errors == []


# --- with the roomctl command line ----------------------------------------------------------


def _roomctl(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roomctl", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_roomctl_post_tail_and_who_meet_the_page(
    contexts: Callable[..., BrowserContext], serve_process: Callable[..., ServeProcess]
) -> None:
    daemon = serve_process()
    alice = RoomPage(contexts(), daemon.http, "mixed", "alice").join()

    posted = _roomctl("post", "mixed", "hello from the shell", "--url", daemon.http)
    assert posted.returncode == 0, posted.stderr
    expect_message(alice, "roomctl", "hello from the shell")

    alice.send("hello from the browser")
    expect_message(alice, "alice", "hello from the browser")
    tail = _roomctl("tail", "mixed", "--json", "--no-follow", "--url", daemon.http)
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(m["seq"], m["sender"], m["text"]) for m in lines] == [
        (1, "roomctl", "hello from the shell"), (2, "alice", "hello from the browser")]
    assert lines[1]["sender_id"] == alice.state()["sessionId"]

    alice.page.get_by_role("button", name="Turn camera off").click()
    expect(alice.page.get_by_role("button", name="Turn camera on")).to_be_visible()

    def alice_in_who() -> dict[str, Any] | None:
        who = _roomctl("who", "mixed", "--json", "--url", daemon.http)
        assert who.returncode == 0, who.stderr
        people = {person["name"]: person for person in json.loads(who.stdout)}
        person = people["alice"]
        return dict(person) if person["media"]["video_muted"] else None

    person = wait_until(alice.page, alice_in_who, "roomctl who to show alice's camera off")
    assert person["media"] == {"audio_muted": False, "video_muted": True}
    assert person["in_call"] is True and person["live"] is True

    # Removed by an administrator: the page says so, and does not come back on its own.
    kicked = _roomctl("kick", "mixed", "alice", "--url", daemon.http,
                      "--data-dir", str(daemon.data_dir))
    assert kicked.returncode == 0, kicked.stderr
    expect(alice.page.get_by_role("alert")).to_have_text(
        "An administrator removed you from the room.")
    alice.page.wait_for_timeout(1000)
    assert alice.state()["connection"] == "closed"
    assert alice.state()["welcomes"] == 1
    who = _roomctl("who", "mixed", "--json", "--url", daemon.http)
    assert json.loads(who.stdout) == []


def _counter(daemon: ServeProcess, name: str) -> float:
    with urllib.request.urlopen(f"{daemon.http}/metrics", timeout=WAIT) as response:
        text = response.read().decode()
    found = re.search(rf"^roomctl_{name}_total (\S+)$", text, re.M)
    assert found, name
    return float(found.group(1))


def _no_way_to_chat(page: RoomPage) -> None:
    """Assert the page offers nothing to type into or press but the way back."""
    for selector in ("#join-form", "#room-screen", "#compose-text", "#people", "#topic-edit",
                     "#status-form"):
        expect(page.page.locator(selector)).to_be_hidden()
    expect(page.page.get_by_role("link", name="Back to the lobby")).to_be_visible()
    assert page.page.evaluate("window.roomctl.screen()") == "invite-screen"
    assert page.state()["welcomes"] == 0


def test_an_invitation_link_carries_the_join_token_of_a_private_room(
    contexts: Callable[..., BrowserContext], serve_process: Callable[..., ServeProcess]
) -> None:
    daemon = serve_process("--require-tokens")
    eve = RoomPage(contexts(), daemon.http, "private", "eve")
    # Without a token: a page that says what is needed, at once; no empty room, no form.
    expect(eve.page.get_by_role("heading", name="This room needs an invitation link")) \
        .to_be_visible()
    expect(eve.page.locator("#invite-reason")).to_have_text(
        "\u201cprivate\u201d is a private room: only people with an invitation link can join it.")
    _no_way_to_chat(eve)
    eve.page.screenshot(path=str(artifacts_dir() / "invitation-needed.png"))
    assert _counter(daemon, "connections_accepted") == 0  # it did not even try

    made = _roomctl("token", "create", "--room", "private", "--identity", "alice",
                    "--name", "alice", "--url", daemon.http, "--data-dir", str(daemon.data_dir))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    alice = RoomPage(contexts(), daemon.http, "private", "alice", fragment=f"#token={token}")
    assert alice.page.url == f"{daemon.http}/r/private"  # the token left the address bar
    alice.join(media=False)
    expect(alice.person("alice")).to_be_visible()
    alice.send("only invited people here")
    expect_message(alice, "alice", "only invited people here")


@pytest.mark.parametrize("kind", ["expired", "other-room"])
def test_an_invitation_link_that_cannot_be_used_says_why(
    contexts: Callable[..., BrowserContext], serve_process: Callable[..., ServeProcess],
    kind: str,
) -> None:
    daemon = serve_process("--require-tokens")
    signer = Authority(ensure_join_secret(daemon.data_dir), admin_token=lambda: "x")
    if kind == "expired":
        token = signer.issue(room="private", identity="late", name=None, grants=["join"],
                             ttl=60, now=time.time() - 3600)[0]
        title, reason = "This invitation link has expired", "the token has expired"
    else:
        token = signer.issue(room="elsewhere", identity="lost", name=None, grants=["join"],
                             ttl=600, now=time.time())[0]
        title, reason = "This invitation link does not open this room", "for room 'elsewhere'"
    page = RoomPage(contexts(), daemon.http, "private", "late", fragment=f"#token={token}")

    expect(page.page.get_by_role("heading", name=title)).to_be_visible()
    expect(page.page.locator("#invite-reason")).to_contain_text(reason)
    expect(page.page.locator("#invite-hint")).to_contain_text("new invitation link")
    _no_way_to_chat(page)
    # The refused token is forgotten, so a new link opened in this tab is the one used.
    assert page.page.evaluate("sessionStorage.length") == 0
    assert page.errors == []


def test_a_hello_refused_at_the_door_ends_on_the_invitation_page(
    contexts: Callable[..., BrowserContext], serve_process: Callable[..., ServeProcess]
) -> None:
    daemon = serve_process("--require-tokens")
    context = contexts()
    # The one stand-in: the access check answers 502, as a proxy that does not know the
    # path might. The page then offers to join, and the real daemon's refusal decides.
    context.route("**/v1/rooms/private/access",
                  lambda route: route.fulfill(status=502, body="bad gateway"))
    eve = RoomPage(context, daemon.http, "private", "eve")
    eve.page.get_by_label("Your name").fill("eve")
    eve.page.get_by_label("Use my camera and microphone").uncheck()
    eve.page.get_by_role("button", name="Join room").click()

    expect(eve.page.get_by_role("heading", name="This room needs an invitation link")) \
        .to_be_visible()
    _no_way_to_chat(eve)
    expect(eve.page.locator("#conn-state")).to_have_text("")  # no "Reconnecting..." either
    assert _counter(daemon, "refused_hellos") == 1


class _Lines:
    """Collects a subprocess's stdout lines on a thread, so the test can poll them."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def events(self, kind: str) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == kind:
                    found.append(event)
        return found


def test_a_page_and_roomctl_join_decode_each_others_video(
    contexts: Callable[..., BrowserContext], serve_process: Callable[..., ServeProcess]
) -> None:
    daemon = serve_process()
    alice = RoomPage(contexts(), daemon.http, "hybrid", "alice").join()
    alice_id = alice.state()["sessionId"]
    join = subprocess.Popen(
        [sys.executable, "-m", "roomctl", "join", "hybrid", "--name", "robot",
         "--video", "testsrc", "--audio", "sine", "--json", "--stats-interval", "1s",
         "--allow-loopback", "--url", daemon.http],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT,
    )
    out = _Lines(join.stdout)
    try:
        expect(alice.person("robot")).to_be_visible()
        robot_id = _peer_id(alice, "robot")
        # The page decodes roomctl join's test pattern...
        alice.assert_video_flows_from(robot_id, "roomctl join")
        stats = alice.stats()[robot_id]
        assert is_local_address(stats["localAddress"]), stats
        assert is_local_address(stats["remoteAddress"]), stats

        # ... and roomctl join decodes the page's fake camera.
        def join_decoded(more_than: int) -> int:
            counts = [e["video_frames_in"] for e in out.events("stats") if e["peer"] == alice_id]
            return max(counts, default=0) if max(counts, default=0) > more_than else 0

        first = wait_until(alice.page, lambda: join_decoded(0),
                           "roomctl join to decode the page's video")
        wait_until(alice.page, lambda: join_decoded(first + 10),
                   "roomctl join's decoded frame count to rise")
        expect(alice.person("robot").get_by_role("img", name="Camera on")).to_be_visible()
    finally:
        join.send_signal(signal.SIGINT)
        try:
            join.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            join.kill()
            join.wait(timeout=WAIT)
        stderr = join.stderr.read() if join.stderr else ""
    assert join.returncode == 0, stderr[-3000:]
    expect(alice.person("robot")).to_have_count(0)
    assert alice.errors == []


# --- several nodes ----------------------------------------------------------------------------


def test_two_pages_on_two_nodes_of_a_cluster_see_each_other_and_chat(
    contexts: Callable[..., BrowserContext], tmp_path: pathlib.Path
) -> None:
    """Two ``roomctl serve --redis`` nodes on one real Redis; alice's page is served by
    node a, bob's by node b (forwarded to the room's owner): video and chat both ways."""
    from tests.cluster_util import running_cluster

    with running_cluster(tmp_path, "a", "b") as cluster:
        a, b = cluster.nodes["a"], cluster.nodes["b"]
        alice = RoomPage(contexts(), a.http, "nodes", "alice").join()
        bob = RoomPage(contexts(), b.http, "nodes", "bob").join()
        expect(alice.person("bob")).to_be_visible()
        expect(bob.person("alice")).to_be_visible()
        alice_id, bob_id = _peer_id(bob, "alice"), _peer_id(alice, "bob")
        alice.assert_video_flows_from(bob_id, "bob")
        bob.assert_video_flows_from(alice_id, "alice")
        alice.send("hello from node a")
        expect_message(bob, "alice", "hello from node a")
        bob.send("and back from node b")
        expect_message(alice, "bob", "and back from node b")
        owner = cluster.redis.cli("GET", "{r:nodes}:lease").rpartition(" ")[0]
        assert owner == "a"  # alice came first: bob's page went through node b to a
