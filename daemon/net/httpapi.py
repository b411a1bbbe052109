"""The HTTP API: REST over JSON under ``/v1/``, beside each room's WebSocket path.

Theory of operation
-------------------
Every operation is a short conversation in the WebSocket protocol, held by the daemon
with itself: a ``daemon.net.loopback.Loopback`` connection, served by ``serve_client``
(the daemon's one entry for a client of a room or of the admin endpoint, which with
several nodes serves it where the room is), says ``hello`` with the request's bearer token
and sends the requests the operation needs; the answers become the HTTP response. So the
HTTP API has no rule of its own: who may do what, the limits and the errors are the
protocol's, decided by the engine, and an HTTP post is acknowledged exactly when a
WebSocket one is: once it is on disk.

* Room management (list, create, show, update, delete, kick, join tokens) speaks to the
  admin endpoint, as ``roomctl room ...`` does.
* History, participants and posts speak to the room as a hidden *sender* (``hello``
  with ``subscribe: false``): it is never listed and hears nothing but its answers, and
  needs no grant to enter, only each request's (``read``, ``post``).
* The event stream (Server-Sent Events) is a hidden observer (``read``) whose frames
  become events: after a ``Last-Event-ID`` it first pages through the history after
  that seq, then follows the room, printing each message once, by seq, as ``roomctl
  tail`` does, so a client that reconnects loses nothing and sees nothing twice.

Limits: a request body is bounded by the front (``max_body_bytes``); an operation by
``REQUEST_TIMEOUT`` (503 after it). Requests of a client address are rate limited like a
WebSocket's (``rate``/``burst``; the admin token is exempt), in one bucket per address
that outlives connections (``ADDRESSES`` of them at most, the least recently seen
forgotten first); a body of lines waits for its tokens, within the timeout, rather than
fail halfway. An event stream's backlog is the connection's output queue: a reader too
slow for it is closed as a slow consumer, and resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import collections
import functools
import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import parse_qsl

import msgspec
import trio

from daemon.core.access import Access
from daemon.net.front import HttpRequest, HttpResponse, ResponseChannel
from daemon.net.loopback import Loopback
from daemon.net.ratelimit import RateLimit, TokenBucket
from daemon.net.transport import Closed, Transport
from protocol import CloseCode, ErrorCode, Grant, ProtocolError, WireFormat
from protocol import admin as adm
from protocol import http as api
from protocol.chat import GetMessages, MessagePosted, Messages, SendMessage
from protocol.limits import (
    MAX_DISPLAY_NAME,
    MAX_MESSAGE_TEXT,
    MAX_PAGE,
    ROOM_NAME_PATTERN,
    ROOM_NAME_RULE,
    DisplayName,
    RoomName,
)
from protocol.local import ROOMS_PATH, room_path
from protocol.messages import (
    Error,
    GetParticipants,
    Hello,
    Ok,
    Participants,
    Reply,
    Request,
    Welcome,
)

__all__ = ["ENDPOINTS", "REQUEST_TIMEOUT", "Endpoint", "HttpApi", "Param"]

REQUEST_TIMEOUT = 30.0  # seconds one operation may take, a body of lines included
ADDRESSES = 4096  # client addresses whose rate-limit buckets are kept
DEFAULT_ROOM_PAGE = 100
DEFAULT_NAME = "api"  # a post's sender name without a name or a join token's identity
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_TEXT = "text/plain"
_EVENTS = "text/event-stream"
_encode = msgspec.json.Encoder().encode

T = TypeVar("T")


class ServeClient(Protocol):
    """``Daemon.serve_client``: serve one client connection of ``room`` (None: admin)."""

    def __call__(self, transport: Transport, fmt: WireFormat, peer: tuple[str, int], *,
                 room: str | None) -> Awaitable[None]: ...


# --- the endpoints, as a table (the OpenAPI document and the man page's are made from it) ----


@dataclass(frozen=True)
class Param:
    """A parameter of an endpoint: in its path, its query, or a header."""

    name: str
    where: Literal["path", "query", "header"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One operation: method and path, what the token needs, its bodies and its answer."""

    method: str
    path: str  # with {room} and {participant} where they go
    operation: str  # the OpenAPI operationId
    summary: str
    needs: str  # what the bearer token must grant, as roomctl-http(7)'s table says
    handler: str  # the HttpApi method that serves it
    status: int  # of a success
    answer: type | None = None  # the success body's type (None: no body, or a stream)
    body: type | None = None
    body_types: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    content: str = _JSON  # the success body's media type


_ROOM = Param("room", "path", "The room's name.", {"type": "string",
                                                   "pattern": ROOM_NAME_PATTERN}, True)
_PARTICIPANT = Param("participant", "path", "A participant's id (see participants).",
                     required=True)
_SEQ = {"type": "integer", "minimum": 0}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
_ADMIN = "the admin token"
_ROOM_ADMIN = "the admin token, or a join token with admin for the room"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", ROOMS_PATH, "listRooms",
             "List the rooms by name, a page at a time (without a token: the public rooms, "
             "as the lobby lists them).",
             _ROOM_ADMIN + " (which lists that room alone); none for the public rooms",
             "_list_rooms", 200, api.RoomPage,
             params=(Param("after", "query", "Rooms whose names sort after this one.",
                           {"type": "string", "pattern": ROOM_NAME_PATTERN}),
                     Param("limit", "query", f"At most this many (default "
                                             f"{DEFAULT_ROOM_PAGE}).", _LIMIT))),
    Endpoint("POST", ROOMS_PATH, "createRoom", "Create a room.", _ADMIN, "_create_room", 201,
             api.RoomView, api.NewRoom, (_JSON, _FORM)),
    Endpoint("GET", ROOMS_PATH + "/{room}", "getRoom", "Show a room and its participants.",
             _ROOM_ADMIN, "_get_room", 200, api.RoomView, params=(_ROOM,)),
    Endpoint("PATCH", ROOMS_PATH + "/{room}", "updateRoom",
             "Change a room's topic, participant limit, public or private access.",
             _ROOM_ADMIN, "_update_room", 200, api.RoomView, api.RoomChanges, (_JSON, _FORM),
             (_ROOM,)),
    Endpoint("DELETE", ROOMS_PATH + "/{room}", "deleteRoom",
             "Delete a room and its history; its connections are closed.", _ROOM_ADMIN,
             "_delete_room", 204, params=(_ROOM,)),
    Endpoint("POST", ROOMS_PATH + "/{room}/messages", "postMessages",
             "Post a message (JSON or form: text), or each line of a text/plain body; "
             "answered once all are on disk.", "post", "_post_messages", 201,
             api.PostResult, api.NewMessage, (_JSON, _FORM, _TEXT),
             (_ROOM, Param("name", "query", "The sender name shown (also a body field)."),
              Param("Idempotency-Key", "header",
                    "Makes a retry safe: a post with a key used in this room within 24 h "
                    "stores nothing and answers with the first one's seq.",
                    {"type": "string", "minLength": 1, "maxLength": api.MAX_KEY_HEADER}))),
    Endpoint("GET", ROOMS_PATH + "/{room}/messages", "getMessages",
             "Page through the history by seq, oldest first.", "read (join includes it)",
             "_get_messages", 200, api.MessagePage,
             params=(_ROOM, Param("after", "query", "Messages after this seq.", _SEQ),
                     Param("before", "query", "The last ones before this seq.", _SEQ),
                     Param("limit", "query", "At most this many (default 100).", _LIMIT))),
    Endpoint("GET", ROOMS_PATH + "/{room}/events", "streamEvents",
             "Follow the room's messages as Server-Sent Events (id: the seq).",
             "read (or join and hidden: it watches unseen)", "_events", 200, content=_EVENTS,
             params=(_ROOM, Param("Last-Event-ID", "header",
                                  "Resume: first the messages after this seq.", _SEQ),
                     Param("after", "query", "As Last-Event-ID, which wins over it.",
                           _SEQ))),
    Endpoint("GET", ROOMS_PATH + "/{room}/participants", "getParticipants",
             "List the room's participants (hidden observers never appear).",
             "read (join includes it)", "_participants", 200, api.ParticipantList,
             params=(_ROOM,)),
    Endpoint("DELETE", ROOMS_PATH + "/{room}/participants/{participant}", "kick",
             "Remove a participant at once; its connection is closed (4009).", _ROOM_ADMIN,
             "_kick", 204, params=(_ROOM, _PARTICIPANT)),
    Endpoint("POST", ROOMS_PATH + "/{room}/tokens", "createToken",
             "Sign a join token for the room.", _ADMIN, "_create_token", 201,
             api.IssuedToken, api.NewToken, (_JSON, _FORM), (_ROOM,)),
    Endpoint("GET", "/v1/whoami", "whoami", "What the request's token is and grants.",
             "any token, or none", "_whoami", 200, api.TokenInfo),
    Endpoint("GET", "/v1/openapi.json", "openapi", "This API as an OpenAPI 3.1 document.",
             "nothing", "_openapi", 200, content="application/json"),
)
"""Every endpoint of the API. ``GET /v1/rooms/{room}/access``, ``GET /healthz`` and
``GET /metrics`` are the server's own (see ``daemon.server``)."""


def _pattern(path: str) -> re.Pattern[str]:
    # Any segment matches {room}, so that a bad name is answered as one (400), not as a
    # path the API does not have.
    regex = re.escape(path).replace(r"\{room\}", "(?P<room>[^/]+)") \
        .replace(r"\{participant\}", "(?P<participant>[^/]{1,64})")
    return re.compile(f"^{regex}$")


_ROOM_NAME = re.compile(ROOM_NAME_PATTERN)
_ROUTES: tuple[tuple[re.Pattern[str], Endpoint], ...] = tuple(
    (_pattern(endpoint.path), endpoint) for endpoint in ENDPOINTS)


# --- errors -------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: the status, the protocol's code and a message for people."""

    def __init__(self, status: int, code: ErrorCode, message: str, *,
                 retry_after: float | None = None, grant: Grant | None = None,
                 line: int | None = None, messages: list[api.PostedMessage] | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.detail = api.ErrorDetail(code=code, message=message, retry_after=retry_after,
                                      grant=grant, line=line)
        self.messages = messages
        self.headers = headers

    @classmethod
    def of(cls, code: ErrorCode, message: str, **details: Any) -> ApiError:
        """Return the error for a protocol error code, with the status that code gets."""
        return cls(api.HTTP_STATUS.get(code, 500), code, message, **details)

    def response(self) -> HttpResponse:
        headers = self.headers
        if self.status == 401 and not any(n == "WWW-Authenticate" for n, _ in headers):
            headers += (("WWW-Authenticate", "Bearer"),)
        if self.detail.retry_after is not None:
            # Whole seconds, rounded up: a client that waits as told is never early.
            headers += (("Retry-After", str(max(1, -int(-self.detail.retry_after // 1)))),)
        return _answer(self.status, api.ErrorBody(error=self.detail, messages=self.messages),
                       headers)


def _refused(error: Error, *, line: int | None = None,
             messages: list[api.PostedMessage] | None = None) -> ApiError:
    return ApiError.of(error.code, error.message, retry_after=error.retry_after,
                       grant=error.grant, line=line, messages=messages)


_CLOSED_CODES: dict[int, ErrorCode] = {
    CloseCode.UNAUTHORIZED: ErrorCode.UNAUTHORIZED,
    CloseCode.FORBIDDEN: ErrorCode.FORBIDDEN,
    CloseCode.ROOM_NOT_FOUND: ErrorCode.NOT_FOUND,
    CloseCode.ROOM_DELETED: ErrorCode.NOT_FOUND,
    CloseCode.ROOM_FULL: ErrorCode.ROOM_FULL,
    CloseCode.KICKED: ErrorCode.CONFLICT,
}


def _closed(closed: Closed) -> ApiError:
    """The error for a connection the daemon closed before it answered."""
    code = _CLOSED_CODES.get(closed.code, ErrorCode.UNAVAILABLE)
    reason = closed.reason or f"the connection closed ({closed.code})"
    return ApiError.of(code, reason, retry_after=1.0 if code is ErrorCode.UNAVAILABLE else None)


def _answer(status: int, body: Any = None,
            headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    data = b"" if body is None else _encode(body) + b"\n"
    return HttpResponse(status, data, headers=(("Cache-Control", "no-store"), *headers))


# --- reading requests -----------------------------------------------------------------------------


def bearer_token(request: HttpRequest) -> str | None:
    """Return the token of ``Authorization: Bearer TOKEN``, None without the header.

    Raises ApiError (401) for another kind of credentials.
    """
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, ErrorCode.UNAUTHORIZED,
                       "the Authorization header must be 'Bearer TOKEN'",
                       headers=(("WWW-Authenticate", "Bearer"),))
    return token.strip()


def _media_type(request: HttpRequest) -> str:
    """Return the body's media type; raise ApiError (415) for a charset other than UTF-8."""
    header = request.headers.get("content-type", "")
    kind, *params = (part.strip() for part in header.split(";"))
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
                "utf-8", "utf8", "us-ascii"):
            raise ApiError(415, ErrorCode.BAD_REQUEST, f"the body must be UTF-8, not {value}")
    return kind.lower()


def _text_of(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "the body is not valid UTF-8") from None


def _form(body: bytes, kind: type[Any]) -> dict[str, Any]:
    """Return a form's fields; repeated ones (and a list field's commas) become lists."""
    lists = {info.encode_name for info in msgspec.structs.fields(kind)
             if typing.get_origin(info.type) is list}
    fields: dict[str, Any] = {}
    for name, value in parse_qsl(_text_of(body), keep_blank_values=True):
        if name in lists:
            fields.setdefault(name, []).extend(v for v in value.split(",") if v)
        elif name in fields:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"the form gives {name} twice")
        else:
            fields[name] = value
    return fields


_AT_FIELD = re.compile(r" - at `\$\.(?P<field>[A-Za-z_]+)`$")


def _in_words(exc: msgspec.ValidationError, kind: type) -> str:
    """Return a decoder's refusal of a body as the field's rule in words when the field's
    type says it ("name: 1-64 letters, digits, ..."), else the decoder's message."""
    found = _AT_FIELD.search(str(exc))
    if found is not None:
        hint = typing.get_type_hints(kind, include_extras=True).get(found["field"])
        for candidate in (hint, *typing.get_args(hint)):
            for meta in getattr(candidate, "__metadata__", ()):
                if isinstance(meta, msgspec.Meta) and meta.description:
                    return f"{found['field'].replace('_', ' ')}: {meta.description}"
    return str(exc)


def _decode_body(request: HttpRequest, kind: type[T], accepted: Sequence[str]) -> T:
    """Return the JSON (or form) body as ``kind``; raise ApiError 400 or 415."""
    media = _media_type(request)
    try:
        if media == _JSON or (not media and not request.body):
            return msgspec.json.decode(request.body or b"{}", type=kind)
        if media == _FORM and _FORM in accepted:
            return msgspec.convert(_form(request.body, kind), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"invalid body: {_in_words(exc, kind)}"
                       ) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"malformed JSON: {exc}") from None
    raise ApiError(415, ErrorCode.BAD_REQUEST,
                   f"the body must be {' or '.join(accepted)}, not {media or 'untyped'}")


def _query_int(request: HttpRequest, name: str, *, low: int, high: int | None = None,
               default: int | None = None) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        span = f"{low} to {high}" if high is not None else f"{low} or more"
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"{name} must be a whole number, {span}")
    return value


def _valid(value: Any, kind: Any, what: str) -> Any:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"{what}: {exc}") from None


# --- rate limits per client address ---------------------------------------------------------


class AddressLimits:
    """One token bucket per client address, kept across its connections (bounded)."""

    def __init__(self, limit: RateLimit, size: int = ADDRESSES) -> None:
        self.limit = limit
        self.size = size
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def take(self, address: str, now: float) -> float:
        """Take a token for one request; return 0, or the seconds to wait for one."""
        if not self.limit.enabled:
            return 0.0
        bucket = self._buckets.pop(address, None)
        if bucket is None:
            bucket = TokenBucket(self.limit.rate, self.limit.burst, now)
            while len(self._buckets) >= self.size:
                self._buckets.popitem(last=False)
        self._buckets[address] = bucket
        return 0.0 if bucket.take(now) else max(bucket.wait(), 0.001)


# --- the API -----------------------------------------------------------------------------------


class HttpApi:
    """Answers the HTTP API's requests (see the module docstring).

    ``serve_client`` serves the API's own connections; ``check_token`` says what a token
    proves (``daemon.tokens.Authority.check``: it raises ProtocolError for a bad one),
    for ``/v1/whoami`` and to exempt the admin token from rate limits; ``keepalive``:
    seconds between the comments that keep an idle event stream open (0: none).
    """

    def __init__(self, serve_client: ServeClient, check_token: Callable[[str | None], Access],
                 *, rate_limit: RateLimit, keepalive: float = 30.0) -> None:
        self._serve_client = serve_client
        self._check_token = check_token
        self._limits = AddressLimits(rate_limit)
        self.keepalive = keepalive
        self._openapi_json: bytes | None = None
        self._streams = 0  # event streams running
        self._no_streams = trio.Event()
        self._no_streams.set()

    async def streams_ended(self) -> None:
        """Return once no event stream runs (at shutdown: each ends its response whole
        once the daemon has closed its connection)."""
        await self._no_streams.wait()

    async def respond(self, request: HttpRequest) -> HttpResponse | None:
        """Answer ``request`` if its path is the API's; None otherwise.

        ``GET /v1/rooms`` without an Authorization header is the lobby's (None here).
        """
        matched = [(m, e) for pattern, e in _ROUTES if (m := pattern.match(request.path))]
        if not matched:
            return None
        method = "GET" if request.method == "HEAD" else request.method
        for match, endpoint in matched:
            if endpoint.method != method or (endpoint.content == _EVENTS
                                             and request.method == "HEAD"):
                continue
            if endpoint.handler == "_list_rooms" and "authorization" not in request.headers:
                return None
            handler = getattr(self, endpoint.handler)
            room = match.groupdict().get("room")
            if room is not None and not _ROOM_NAME.match(room):
                return ApiError(400, ErrorCode.BAD_REQUEST, f"bad room name {room[:80]!r}: "
                                f"{ROOM_NAME_RULE}").response()
            try:
                with trio.move_on_after(REQUEST_TIMEOUT if endpoint.content != _EVENTS
                                        else float("inf")) as deadline:
                    response: HttpResponse = await handler(request, match.groupdict())
                if deadline.cancelled_caught:
                    raise ApiError.of(ErrorCode.UNAVAILABLE, f"no answer within "
                                      f"{REQUEST_TIMEOUT:g} s", retry_after=1.0)
            except ApiError as exc:
                return exc.response()
            return response
        allowed = sorted({e.method for _, e in matched} | ({"HEAD"} if any(
            e.method == "GET" and e.content != _EVENTS for _, e in matched) else set()))
        return ApiError(405, ErrorCode.BAD_REQUEST,
                        f"{request.method} is not allowed here; use {', '.join(allowed)}",
                        headers=(("Allow", ", ".join(allowed)),)).response()

    # --- conversations with the daemon -----------------------------------------------------

    @asynccontextmanager
    async def _connection(self, request: HttpRequest, room: str | None,
                          hello: Hello) -> AsyncIterator[tuple[Loopback, Welcome]]:
        """Open a connection to ``room`` (None: the admin endpoint) and say ``hello``.

        Yields it once welcomed; raises ApiError for a refusal, or if the daemon closes
        the connection before the block is done.
        """
        loopback = Loopback()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(
                    self._serve_client, loopback, WireFormat.JSON, request.peer, room=room))
                try:
                    with trio.move_on_after(REQUEST_TIMEOUT) as waited:
                        welcome = await loopback.request(
                            msgspec.structs.replace(hello, ref=loopback.next_ref()))
                    if waited.cancelled_caught:
                        raise ApiError.of(ErrorCode.UNAVAILABLE, "no welcome within "
                                          f"{REQUEST_TIMEOUT:g} s", retry_after=1.0)
                    if isinstance(welcome, Error):
                        raise _refused(welcome)
                    assert isinstance(welcome, Welcome), welcome
                    yield loopback, welcome
                except Closed as exc:
                    raise _closed(exc) from None
                finally:
                    loopback.close()
        except BaseExceptionGroup as group:
            # The nursery wraps what the block raised; callers expect it bare.
            leaves = list(_leaves(group))
            chosen = next((leaf for leaf in leaves if isinstance(leaf, ApiError)),
                          leaves[0] if len(leaves) == 1 else None)
            if chosen is None:
                raise
            raise chosen from None

    async def _ask(self, loopback: Loopback, frame: Request) -> Reply:
        """Send one request and return its answer; raise ApiError for an ``error``."""
        reply = await loopback.request(msgspec.structs.replace(frame, ref=loopback.next_ref()))
        if isinstance(reply, Error):
            raise _refused(reply)
        return reply

    async def _admin(self, request: HttpRequest, frame: Request) -> Reply:
        """One request on the admin endpoint with the request's token."""
        token = bearer_token(request)
        self._limit(request, token)
        async with self._connection(request, None, Hello(token=token)) as (loopback, _):
            return await self._ask(loopback, frame)

    def _room_hello(self, request: HttpRequest, *, name: str | None = None,
                    subscribe: bool = False) -> Hello:
        """The hello of the API's connections to a room: hidden, never creating it."""
        return Hello(token=bearer_token(request), name=name, hidden=True, subscribe=subscribe,
                     create=False)

    def _access_of(self, token: str | None) -> Access | None:
        try:
            return self._check_token(token)
        except ProtocolError:
            return None  # the connection's hello is refused with the reason

    def _limit(self, request: HttpRequest, token: str | None) -> None:
        """Take a request's token from its address's bucket, or raise ApiError (429)."""
        access = self._access_of(token)
        if access is not None and access.is_admin:
            return
        wait = self._limits.take(request.peer[0], trio.current_time())
        if wait:
            limit = self._limits.limit
            raise ApiError.of(ErrorCode.RATE_LIMITED,
                              f"over {limit.rate:g} requests per second (bursts of "
                              f"{limit.burst}); retry in {wait:.2f} s", retry_after=wait)

    async def _paced(self, request: HttpRequest, exempt: bool) -> None:
        """Wait for the next request's token from the address's bucket (a body of lines)."""
        if exempt:
            return
        # Each wait is the time the bucket says its next token takes, not a poll; another
        # request from the address may take that token first, hence the loop.
        while wait := self._limits.take(request.peer[0], trio.current_time()):  # noqa: ASYNC110
            await trio.sleep(wait)

    # --- room management (the admin endpoint) -------------------------------------------

    async def _list_rooms(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        after = request.query.get("after") or None
        if after is not None:
            _valid(after, RoomName, "after")
        limit = _query_int(request, "limit", low=1, high=MAX_PAGE, default=DEFAULT_ROOM_PAGE)
        reply = await self._admin(request, adm.ListRooms(after=after, limit=limit))
        assert isinstance(reply, adm.RoomList)
        return _answer(200, api.RoomPage(rooms=reply.rooms, next=reply.next))

    async def _create_room(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        body = _decode_body(request, api.NewRoom, (_JSON, _FORM))
        reply = await self._admin(request, adm.CreateRoom(
            room=body.name, app=body.app, meta=_settings(body), if_missing=body.if_missing,
            private=body.private))
        assert isinstance(reply, adm.RoomDetails)
        return _answer(201, api.RoomView(room=reply.room, participants=reply.participants),
                       (("Location", room_path(body.name)),))

    async def _get_room(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        reply = await self._admin(request, adm.GetRoom(room=params["room"]))
        assert isinstance(reply, adm.RoomDetails)
        return _answer(200, api.RoomView(room=reply.room, participants=reply.participants))

    async def _update_room(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        body = _decode_body(request, api.RoomChanges, (_JSON, _FORM))
        private = None if body.private is msgspec.UNSET else body.private
        reply = await self._admin(request, adm.UpdateRoom(
            room=params["room"], meta=_settings(body), private=private))
        assert isinstance(reply, adm.RoomDetails)
        return _answer(200, api.RoomView(room=reply.room, participants=reply.participants))

    async def _delete_room(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        await self._admin(request, adm.DeleteRoom(room=params["room"]))
        return _answer(204)

    async def _kick(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        await self._admin(request, adm.Kick(room=params["room"],
                                            participant_id=params["participant"]))
        return _answer(204)

    async def _create_token(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        body = _decode_body(request, api.NewToken, (_JSON, _FORM))
        reply = await self._admin(request, adm.CreateToken(
            room=params["room"], identity=body.identity, name=body.name, grants=body.grants,
            ttl=body.ttl))
        assert isinstance(reply, adm.TokenIssued)
        return _answer(201, api.IssuedToken(token=reply.token, room=reply.room,
                                            identity=reply.identity, grants=reply.grants,
                                            expires_at=reply.expires_at))

    # --- a room's messages and participants ----------------------------------------------

    async def _post_messages(self, request: HttpRequest,
                             params: dict[str, str]) -> HttpResponse:
        room = params["room"]
        lines, name = _messages_of(request)
        key = _idempotency_key(request)
        keys = [key if key is None or len(lines) == 1 else f"{key}/{line}"
                for line, _ in lines]
        token = bearer_token(request)
        access = self._access_of(token)
        exempt = access is not None and access.is_admin
        if name is None:  # (a join token's own name wins over any)
            name = (access.identity[:MAX_DISPLAY_NAME] if access is not None and access.identity
                    else DEFAULT_NAME)
        self._limit(request, token)
        hello = self._room_hello(request, name=name)
        async with self._connection(request, room, hello) as (loopback, _):
            refs = [f"m{line}" for line, _ in lines]
            waiting = loopback.expect(*refs)
            for number, ((_, text), ref, message_key) in enumerate(zip(lines, refs, keys,
                                                                       strict=True)):
                if number:
                    await self._paced(request, exempt)
                loopback.send(SendMessage(ref=ref, text=text, key=message_key))
            posted: list[api.PostedMessage] = []
            refusal: tuple[int, Error] | None = None
            for (line, _), ref in zip(lines, refs, strict=True):
                await loopback.wait_for(ref, waiting[ref])
                reply = loopback.answer(ref)
                if isinstance(reply, Ok) and reply.seq is not None:
                    posted.append(api.PostedMessage(seq=reply.seq, at=reply.at or 0.0,
                                                    line=line))
                elif isinstance(reply, Error) and refusal is None:
                    refusal = (line, reply)
        if refusal is not None:
            line, error = refusal
            raise _refused(error, line=line if len(lines) > 1 else None,
                           messages=posted or None)
        last = posted[-1]
        return _answer(201, api.PostResult(room=room, seq=last.seq, at=last.at,
                                           messages=posted))

    async def _get_messages(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        after = _query_int(request, "after", low=0)
        before = _query_int(request, "before", low=0)
        limit = _query_int(request, "limit", low=1, high=MAX_PAGE, default=100)
        assert limit is not None
        self._limit(request, bearer_token(request))
        async with self._connection(request, params["room"],
                                    self._room_hello(request)) as (loopback, _):
            reply = await self._ask(loopback, GetMessages(after=after, before=before,
                                                          limit=limit))
        assert isinstance(reply, Messages)
        return _answer(200, api.MessagePage(room=params["room"], messages=reply.messages,
                                            has_more=reply.has_more))

    async def _participants(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        self._limit(request, bearer_token(request))
        async with self._connection(request, params["room"],
                                    self._room_hello(request)) as (loopback, _):
            reply = await self._ask(loopback, GetParticipants())
        assert isinstance(reply, Participants)
        return _answer(200, api.ParticipantList(room=params["room"],
                                                participants=reply.participants))

    # --- the event stream ------------------------------------------------------------------

    async def _events(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        room = params["room"]
        resume = request.headers.get("last-event-id", "").strip()
        if resume:
            if not resume.isdigit():
                raise ApiError(400, ErrorCode.BAD_REQUEST,
                               "Last-Event-ID must be a message's seq (a whole number)")
            after: int | None = int(resume)
        else:
            after = _query_int(request, "after", low=0)
        token = bearer_token(request)
        self._limit(request, token)

        async def stream(channel: ResponseChannel) -> None:
            self._streams += 1
            if self._no_streams.is_set():
                self._no_streams = trio.Event()
            try:
                async with self._connection(request, room, self._room_hello(
                        request, subscribe=True)) as (loopback, _):
                    await channel.start(200, _EVENTS, (
                        ("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")))
                    await channel.send(f": events of room {room}\nretry: 1000\n\n".encode())
                    await channel.finish(await self._follow(loopback, channel, after))
            except ApiError as exc:
                if channel.state == "new":
                    await channel.respond(exc.response())
                else:
                    await channel.finish(f": closed: {exc.detail.message}\n\n".encode())
            finally:
                self._streams -= 1
                if not self._streams:
                    self._no_streams.set()

        return HttpResponse(200, stream=stream)

    async def _follow(self, loopback: Loopback, channel: ResponseChannel,
                      after: int | None) -> bytes:
        """Write the room's messages as events: the history after ``after`` (if given),
        then each new one; every seq once, in order. When the daemon closes the room's
        connection, return the comment that says why, for the end of the response."""
        last = -1 if after is None else after
        if after is not None:
            cursor = after
            while True:
                page = await self._ask(loopback, GetMessages(after=cursor, limit=MAX_PAGE))
                assert isinstance(page, Messages)
                chunk = bytearray()
                for message in page.messages:
                    if message.seq > last:
                        last = message.seq
                        chunk += _event(message)
                if chunk:
                    await channel.send(bytes(chunk))
                if not page.has_more or not page.messages:
                    break
                cursor = page.messages[-1].seq
        while True:
            with trio.move_on_after(self.keepalive or float("inf")) as idle:
                try:
                    event = await loopback.next_event()
                except Closed as closed:
                    reason = closed.reason or f"code {closed.code}"
                    return f": closed ({closed.code}): {reason}\n\n".encode()
            if idle.cancelled_caught:
                await channel.send(b": ping\n\n")
                continue
            if isinstance(event, MessagePosted) and event.message.seq > last:
                last = event.message.seq
                await channel.send(_event(event.message))

    # --- who the caller is, and the API itself --------------------------------------------

    async def _whoami(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        token = bearer_token(request)
        if token is None:
            return _answer(200, api.TokenInfo(kind="none", grants=[]))
        try:
            access = self._check_token(token)
        except ProtocolError as exc:
            raise ApiError.of(exc.code, exc.message) from None
        grants = sorted(access.grants)
        if access.is_admin:
            return _answer(200, api.TokenInfo(kind="admin", grants=grants))
        return _answer(200, api.TokenInfo(kind="join", grants=grants, room=access.room,
                                          identity=access.identity, name=access.name,
                                          expires_at=access.expires_at))

    async def _openapi(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        if self._openapi_json is None:
            from daemon.net.openapi import document

            self._openapi_json = _encode(document(ENDPOINTS)) + b"\n"
        return HttpResponse(200, self._openapi_json, headers=(("Cache-Control", "no-cache"),))


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """Yield the exceptions inside ``exc``, however deeply nurseries grouped them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _event(message: Any) -> bytes:
    """One message as a Server-Sent Event: its seq as the id, the message as JSON data."""
    return b"id: %d\nevent: message\ndata: %s\n\n" % (message.seq, _encode(message))


def _settings(body: api.NewRoom | api.RoomChanges) -> dict[str, Any] | None:
    """The app settings of a room body: ``meta``, and the chat app's own fields on top."""
    settings = dict(body.meta or {})
    for name in ("topic", "max_participants", "public"):
        value = getattr(body, name)
        if value is not msgspec.UNSET:
            settings[name] = value
    return settings or None


def _idempotency_key(request: HttpRequest) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not 0 < len(key) <= api.MAX_KEY_HEADER or not key.isprintable():
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"Idempotency-Key must be 1 to {api.MAX_KEY_HEADER} printable "
                       "characters")
    return key


def _messages_of(request: HttpRequest) -> tuple[list[tuple[int, str]], str | None]:
    """Return the messages a post's body holds (each with its line number) and the sender
    name; raise ApiError: 400 (nothing to post), 413 (a message over the limit), 415."""
    name = request.query.get("name") or None
    if _media_type(request) == _TEXT:
        lines = [(number, line.rstrip("\r"))
                 for number, line in enumerate(_text_of(request.body).split("\n"), 1)]
        messages = [(number, line) for number, line in lines if line.strip()]
        if not messages:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "nothing to post: the body has no "
                                                       "line with text")
    else:
        body = _decode_body(request, _LenientMessage, (_JSON, _FORM, _TEXT))
        name = body.name or name
        messages = [(1, body.text)]
    for number, text in messages:
        if len(text) > MAX_MESSAGE_TEXT:
            raise ApiError(413, ErrorCode.TOO_LARGE,
                           f"{'line ' + str(number) + ': ' if len(messages) > 1 else ''}"
                           f"the message is {len(text)} characters; the limit is "
                           f"{MAX_MESSAGE_TEXT}", line=number if len(messages) > 1 else None)
    if name is not None:
        _valid(name, DisplayName, "name")
    return messages, name


class _LenientMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``api.NewMessage`` without the length bound, so that a text over it is told as
    413 (too large), not as a malformed body."""

    text: typing.Annotated[str, msgspec.Meta(min_length=1)]
    name: str | None = None
