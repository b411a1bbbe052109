"""Helpers for the browser tests: real Chromium (Debian's) driven by Playwright's sync API.

Playwright's async API would need asyncio, and these tests run under pytest-trio, so the
browser tests are plain ``def`` tests using the sync API, and the daemon runs as a
``roomctl serve`` subprocess. Every wait here is bounded and polls for its condition.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, WebSocketRoute, expect
from playwright.sync_api import sync_playwright as _sync_playwright

from tests.conftest import ROOT

CHROMIUM = pathlib.Path(os.environ.get("ROOMCTL_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    # Chromium runs as root in CI containers, with no GPU.
    "--no-sandbox",
    "--disable-gpu",
    # Keep Chromium off the network: no QUIC, no background fetches, no updates.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A fake camera (a moving test pattern) and microphone (a beep), granted without asking.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Host candidates with real addresses (not mDNS names, which an aiortc peer cannot
    # resolve and which would multicast on the network), loopback included.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
]
WAIT = 20.0  # seconds for any one expected outcome on a loaded 2-core machine
WAIT_MS = WAIT * 1000

expect.set_options(timeout=WAIT_MS)


def artifacts_dir() -> pathlib.Path:
    """Return (creating it) where screenshots go: $ROOMCTL_TEST_ARTIFACTS or tests/artifacts."""
    path = pathlib.Path(os.environ.get("ROOMCTL_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_chromium() -> None:
    """Fail (in CI) or skip (locally) when Debian's Chromium is not installed."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    require_chromium()
    with _sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=WAIT_MS
    )
    yield browser
    browser.close()


def wait_until(page: Page, probe: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``probe`` until it returns something truthy; return that, or fail saying ``what``.

    Polls through ``page.wait_for_timeout`` so that Playwright keeps dispatching events
    (WebSocket routes, console messages) while the test waits.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}"
            )
        page.wait_for_timeout(150)


def is_local_address(address: str) -> bool:
    """Return whether ``address`` belongs to this machine (binding to it succeeds).

    Traffic between two such addresses never leaves the host: Linux routes it through
    the loopback device.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


@dataclass
class SocketGate:
    """Controls the page's WebSockets (through Playwright's WebSocket routing).

    While ``open``, each WebSocket the page opens is connected to the real daemon and
    passes every frame through unchanged. ``cut()`` drops the current ones (the daemon
    sees the connection close, the page sees it drop) and refuses new ones until
    ``reopen()``.
    """

    open: bool = True
    live: list[tuple[WebSocketRoute, WebSocketRoute]] = field(default_factory=list)
    refused: int = 0

    def route(self, ws: WebSocketRoute) -> None:
        if not self.open:
            self.refused += 1
            ws.close(code=4000, reason="test gate closed")
            return
        server = ws.connect_to_server()
        self.live.append((ws, server))

    def cut(self) -> None:
        self.open = False
        for page_side, server_side in self.live:
            # Browsers let a page close with 1000 or 3000-4999 only; 4000 is not one of
            # roomctl's codes, so the page treats it as a plain drop.
            server_side.close(code=4000, reason="test cut")
            page_side.close(code=4000, reason="test cut")
        self.live.clear()

    def reopen(self) -> None:
        self.open = True


class RoomPage:
    """One person in a browser context, on the room page."""

    def __init__(self, context: BrowserContext, base_url: str, room: str, name: str,
                 gate: SocketGate | None = None, fragment: str = "") -> None:
        self.context = context
        self.name = name
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", self._console)
        if gate is not None:
            self.page.route_web_socket(f"**/v1/rooms/{room}", gate.route)
        self.page.goto(f"{base_url}/r/{room}{fragment}")

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def join(self, *, media: bool = True) -> RoomPage:
        page = self.page
        page.get_by_label("Your name").fill(self.name)
        media_box = page.get_by_label("Use my camera and microphone")
        if media_box.is_checked() != media:
            media_box.click()
        page.get_by_role("button", name="Join room").click()
        wait_until(page, lambda: self.state()["connection"] == "open", f"{self.name} to join")
        return self

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate("window.roomctl.state()")
        return result

    def stats(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = self.page.evaluate("window.roomctl.stats()")
        return result

    def send(self, text: str) -> None:
        box = self.page.get_by_label("Chat message")
        box.fill(text)
        box.press("Enter")

    def messages(self) -> list[tuple[str, str]]:
        """Return (sender, text) of every message shown, in order."""
        rows: list[tuple[str, str]] = self.page.eval_on_selector_all(
            "#messages .message",
            "rows => rows.map(r => [r.querySelector('.sender').textContent,"
            " r.querySelector('.text').textContent])",
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]

    def person(self, name: str) -> Any:
        """The participant list entry of ``name``."""
        return self.page.locator(f'#people li[data-name="{name}"]')

    def tile(self, name: str) -> Any:
        return self.page.locator(f'#tiles figure[data-name="{name}"]')

    def frames_from(self, peer_id: str) -> int:
        return int(self.stats().get(peer_id, {}).get("framesDecoded", 0))

    def wait_for_video_from(self, peer_id: str, who: str, more_than: int = 0) -> int:
        """Wait until more than ``more_than`` frames from ``peer_id`` were decoded."""
        return int(wait_until(
            self.page,
            lambda: (n := self.frames_from(peer_id)) > more_than and n,
            f"{self.name} to decode more than {more_than} frames of {who}'s video",
        ))

    def assert_video_flows_from(self, peer_id: str, who: str) -> tuple[int, int]:
        """Wait for decoded frames from ``peer_id`` and for the count to rise further."""
        first = self.wait_for_video_from(peer_id, who)
        second = self.wait_for_video_from(peer_id, who, more_than=first + 10)
        return first, second


def expect_message(page: RoomPage, sender: str, text: str) -> None:
    """Wait until ``page`` shows ``text`` from ``sender``."""
    exact = re.compile(f"^{re.escape(text)}$")
    row = page.page.locator("#messages .message").filter(
        has=page.page.locator(".text", has_text=exact)
    )
    expect(row.locator(".sender")).to_have_text(sender)


__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "WAIT",
    "RoomPage",
    "SocketGate",
    "artifacts_dir",
    "browser",
    "expect",
    "expect_message",
    "is_local_address",
    "playwright",
    "require_chromium",
    "wait_until",
]
