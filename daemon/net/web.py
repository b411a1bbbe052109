"""The web page: the lobby, the room page, their static files and the lobby's room list.

Everything the browser needs ships inside the ``daemon`` package (``daemon/net/static``): plain
HTML, CSS and JavaScript modules, no build step, nothing fetched from elsewhere. The files
are read once, when this module is imported, into a table keyed by URL path; a request can
only ever name an entry of that table, so no path (``..``, encoded slashes, symlinks) can
reach another file.

Every response carries the same security headers: a Content-Security-Policy that allows
scripts, styles, images and connections (including the WebSocket, ``ws:``/``wss:`` to the
same host) only from the daemon's own origin and no inline script or style, no framing,
no referrer, no MIME sniffing. Static files are revalidated on every load (``no-cache``
with an ``ETag``), so a daemon upgrade never leaves a browser running stale modules.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import escape
from importlib import resources
from typing import Final

import msgspec

from daemon.net.front import HttpRequest, HttpResponse, error_body
from protocol import limits, local
from protocol.messages import RoomInfo

__all__ = ["PUBLIC_ROOMS_PATH", "StaticFile", "load_static", "respond"]

PUBLIC_ROOMS_PATH: Final = local.ROOMS_PATH
STATIC_PREFIX: Final = "/static/"
_ROOM_PAGE = re.compile(r"^/r/([^/]*)$")
# The same rule as protocol.limits.RoomName, so the page never offers a room the daemon refuses.
_ROOM_NAME = re.compile(limits.ROOM_NAME_PATTERN)
# A Host header that is only a host name or address and a port; anything else stays out of
# the policy (a header value must never be able to add directives).
_SAFE_HOST = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")

_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
}

_BASE_HEADERS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    # The room page asks for the camera and microphone; nothing else on the origin may.
    ("Permissions-Policy", "camera=(self), microphone=(self), geolocation=(), payment=()"),
)
_ALLOW = (("Allow", "GET, HEAD"),)


@dataclass(frozen=True)
class StaticFile:
    """One file of ``daemon/net/static``, ready to send."""

    body: bytes
    content_type: str
    etag: str


def load_static() -> dict[str, StaticFile]:
    """Return every file under ``daemon/net/static`` keyed by its URL path (``/static/...``).

    Files with an extension the page does not use are left out, so they can never be
    served with a guessed content type. Raises OSError when the package data is unreadable.
    """
    files: dict[str, StaticFile] = {}
    root = resources.files("daemon.net") / "static"

    def walk(folder: resources.abc.Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
                continue
            suffix = "." + entry.name.rpartition(".")[2] if "." in entry.name else ""
            content_type = _CONTENT_TYPES.get(suffix)
            if content_type is None:
                continue
            body = entry.read_bytes()
            digest = hashlib.blake2b(body, digest_size=12).hexdigest()
            files[f"{prefix}{entry.name}"] = StaticFile(body, content_type, f'"{digest}"')

    if root.is_dir():
        walk(root, STATIC_PREFIX)
    files[LIMITS_MODULE] = _limits_module()
    return files


LIMITS_MODULE: Final = f"{STATIC_PREFIX}js/limits.js"


def _limits_module() -> StaticFile:
    """The page's copy of the protocol's rules, made from ``protocol.limits`` at start-up.

    The page checks a room name before it navigates or connects; generating the module
    keeps that rule the protocol's own instead of a third hand-written regex.
    """
    encode = msgspec.json.encode
    body = (
        "// Made by the daemon from protocol/limits.py and protocol/local.py: do not edit.\n"
        f"export const ROOM_NAME = new RegExp({encode(limits.ROOM_NAME_PATTERN).decode()});\n"
        f"export const ROOM_NAME_RULE = {encode(limits.ROOM_NAME_RULE).decode()};\n"
        f"export const ROOMS_PATH = {encode(local.ROOMS_PATH).decode()};\n"
        f"export const MAX_MESSAGE_TEXT = {limits.MAX_MESSAGE_TEXT};\n"
        f"export const MAX_DISPLAY_NAME = {limits.MAX_DISPLAY_NAME};\n"
    ).encode()
    digest = hashlib.blake2b(body, digest_size=12).hexdigest()
    return StaticFile(body, _CONTENT_TYPES[".js"], f'"{digest}"')


_STATIC: Final = load_static()
_json_encode = msgspec.json.Encoder().encode


def content_security_policy(host: str | None) -> str:
    """Return the page's CSP: only the daemon's own origin, no inline code, no framing.

    ``host`` (the request's Host header) names the WebSocket origin explicitly for
    browsers whose ``'self'`` does not cover ``ws:``; an unsafe value is left out.
    """
    connect = "'self'"
    if host and _SAFE_HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "font-src 'self'",
        "media-src 'self' blob: mediastream:",
        f"connect-src {connect}",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


def _headers(request: HttpRequest, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    csp = ("Content-Security-Policy", content_security_policy(request.headers.get("host")))
    return (csp, *_BASE_HEADERS, *extra)


def _file(request: HttpRequest, file: StaticFile) -> HttpResponse:
    cache = (("Cache-Control", "no-cache"), ("ETag", file.etag))
    if _etag_matches(request.headers.get("if-none-match", ""), file.etag):
        return HttpResponse(304, headers=_headers(request, *cache))
    return HttpResponse(200, file.body, content_type=file.content_type,
                        headers=_headers(request, *cache))


def _etag_matches(header: str, etag: str) -> bool:
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _not_found_page(request: HttpRequest, message: str) -> HttpResponse:
    body = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>Not found · roomctl</title>"
        "<link rel=\"icon\" href=\"/static/icon.svg\" type=\"image/svg+xml\">"
        "<link rel=\"stylesheet\" href=\"/static/css/room.css\"></head>"
        "<body class=\"lobby-page\"><main class=\"lobby-main\"><section class=\"card\">"
        f"<h1>Not found</h1><p>{escape(message)}</p>"
        "<p><a href=\"/\">Back to the lobby</a></p></section></main></body></html>"
    ).encode()
    return HttpResponse(404, body, content_type="text/html; charset=utf-8",
                        headers=_headers(request, ("Cache-Control", "no-cache")))


def public_rooms(rooms: Iterable[RoomInfo]) -> list[dict[str, object]]:
    """Return the lobby's entries, by name: rooms whose app metadata says ``public``.

    A private room is never listed, whatever its metadata says (under ``require_tokens``
    every room is private, so the list is empty): whoever reads this list showed no token.
    """
    listed = []
    for info in rooms:
        meta = info.meta
        if getattr(meta, "public", False) is True and not info.private:
            listed.append({"name": info.name, "topic": str(getattr(meta, "topic", "") or ""),
                           "participants": info.participants})
    listed.sort(key=lambda entry: str(entry["name"]))
    return listed


def _public_page(request: HttpRequest, listed: list[dict[str, object]]) -> HttpResponse:
    """A page of the public rooms: ``limit`` (1 to 1000, default all) after ``after``."""
    after = request.query.get("after") or ""
    limit_text = request.query.get("limit") or ""
    limit = int(limit_text) if limit_text.isdigit() else None
    if limit_text and (limit is None or not 1 <= limit <= limits.MAX_PAGE):
        body = error_body(400, f"limit must be a whole number, 1 to {limits.MAX_PAGE}")
        return HttpResponse(400, body, headers=_headers(request, ("Cache-Control", "no-store")))
    page = [entry for entry in listed if str(entry["name"]) > after]
    following = None
    if limit is not None and len(page) > limit:
        page = page[:limit]
        following = str(page[-1]["name"])
    body = _json_encode({"rooms": page, "next": following}) + b"\n"
    return HttpResponse(200, body, headers=_headers(request, ("Cache-Control", "no-store")))


def respond(request: HttpRequest, rooms: Callable[[], Iterable[RoomInfo]]) -> HttpResponse | None:
    """Answer a request for the web page, or return None when the path is not the page's.

    ``rooms`` is called (only for the lobby's list) to get every room. Paths owned here:
    ``/`` (the lobby), ``/r/{room}`` (the room page), ``/static/...`` (their files) and
    ``GET /v1/rooms`` without a token (the public rooms as JSON, a page at a time with
    ``after`` and ``limit``; with a token the HTTP API lists rooms). Other methods than GET
    and HEAD get 405;
    an invalid room name or an unknown static file gets 404.
    """
    path = request.path
    owned = (path == "/" or path == PUBLIC_ROOMS_PATH or path.startswith(STATIC_PREFIX)
             or path.startswith("/r/"))
    if not owned:
        return None
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(405, error_body(405, "method not allowed"),
                            headers=_headers(request, *_ALLOW))
    if path == PUBLIC_ROOMS_PATH:
        return _public_page(request, public_rooms(rooms()))
    if path == "/":
        return _file(request, _STATIC[STATIC_PREFIX + "lobby.html"])
    match = _ROOM_PAGE.match(path)
    if match is not None:
        if not _ROOM_NAME.match(match.group(1)):
            return _not_found_page(
                request,
                "Room names are 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit.",
            )
        return _file(request, _STATIC[STATIC_PREFIX + "room.html"])
    file = _STATIC.get(path)
    if file is None:
        if path.startswith(STATIC_PREFIX):
            return HttpResponse(404, error_body(404, "not found"),
                                headers=_headers(request, ("Cache-Control", "no-cache")))
        return _not_found_page(request, "There is no page here.")
    return _file(request, file)
