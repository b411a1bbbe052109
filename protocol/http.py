"""The HTTP API's bodies (``/v1/...``, beside each room's WebSocket path): what a request
sends and what a response carries, and the HTTP status of each error code.

Pure data, like the frames. The daemon decodes request bodies into these types and
encodes its answers from them, and the OpenAPI document it serves (``/v1/openapi.json``)
is made from them with ``msgspec.json.schema_components``, so the published schema is
the code's own. Request bodies refuse unknown fields: a misspelt ``max_participant``
is an error, not silently nothing. Fields only ever get added, with defaults.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from protocol.admin import DEFAULT_GRANTS
from protocol.chat import ChatMessage
from protocol.errors import ErrorCode
from protocol.limits import (
    MAX_IDEMPOTENCY_KEY,
    AppName,
    DisplayName,
    Identity,
    MaxParticipants,
    MessageText,
    RoomName,
    TokenTtl,
    TopicText,
)
from protocol.messages import Grant, Participant, RoomInfo

# Several messages posted at once (a text/plain body of lines) get keys derived from the
# request's Idempotency-Key ("KEY/1", "KEY/2"...), which must fit the protocol's bound.
MAX_KEY_HEADER = MAX_IDEMPOTENCY_KEY - 8

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ROOM_FULL: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.LIMIT_REACHED: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
}
"""The status an error code is answered with (429 and 503 also carry ``Retry-After``).

A few refusals are the HTTP layer's own and carry a code too: 405 (``bad-request``: a
method the path does not take), 415 (``bad-request``: a body type the endpoint does
not read)."""

CODE_FOR_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    500: ErrorCode.INTERNAL,
    503: ErrorCode.UNAVAILABLE,
    405: ErrorCode.BAD_REQUEST,
    408: ErrorCode.BAD_REQUEST,
    415: ErrorCode.BAD_REQUEST,
    426: ErrorCode.BAD_REQUEST,
    431: ErrorCode.TOO_LARGE,
}
"""The code of an error the HTTP layer answers by status alone (a bad request head, a body
too large, an unknown path)."""


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are refused."""


# --- request bodies ----------------------------------------------------------------------------


class NewRoom(_Body, frozen=True, kw_only=True):
    """``POST /v1/rooms``: the room to create.

    ``topic``, ``max_participants`` and ``public`` are the chat app's settings (another
    app takes its own in ``meta``). With ``if_missing``, an existing room is no error.
    """

    name: RoomName
    app: AppName = "chat"
    private: bool = False
    if_missing: bool = False
    topic: TopicText | UnsetType = UNSET
    max_participants: MaxParticipants | UnsetType | None = UNSET
    public: bool | UnsetType = UNSET
    meta: dict[str, Any] | None = None


class RoomChanges(_Body, frozen=True, kw_only=True):
    """``PATCH /v1/rooms/{room}``: the settings to change; those left out stay.

    ``max_participants: null`` lifts the room's own limit (the daemon's cap remains).
    """

    topic: TopicText | UnsetType = UNSET
    max_participants: MaxParticipants | UnsetType | None = UNSET
    public: bool | UnsetType = UNSET
    private: bool | UnsetType = UNSET
    meta: dict[str, Any] | None = None


class NewMessage(_Body, frozen=True, kw_only=True):
    """``POST /v1/rooms/{room}/messages`` as JSON (or a form with the same fields).

    ``name`` is the sender name shown (a join token's own name wins).
    """

    text: MessageText
    name: DisplayName | None = None


class NewToken(_Body, frozen=True, kw_only=True):
    """``POST /v1/rooms/{room}/tokens``: who the join token is for, what it grants, and
    for how long (seconds)."""

    identity: Identity
    name: DisplayName | None = None
    grants: list[Grant] = msgspec.field(default_factory=lambda: list(DEFAULT_GRANTS))
    ttl: TokenTtl = 3600.0


# --- response bodies ---------------------------------------------------------------------------


class PostedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One stored message: its ``seq``, its time (Unix seconds) and its line in the body."""

    seq: int
    at: float
    line: int = 1


class PostResult(msgspec.Struct, frozen=True, kw_only=True):
    """A post's answer (201), sent once every message is on disk.

    ``seq`` and ``at`` are the last message's (the only one's, for a single message).
    """

    room: str
    seq: int
    at: float
    messages: list[PostedMessage]


class MessagePage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of history, oldest first; ``has_more``: the page was cut at ``limit``."""

    room: str
    messages: list[ChatMessage]
    has_more: bool


class RoomView(msgspec.Struct, frozen=True, kw_only=True):
    """One room and its participants."""

    room: RoomInfo
    participants: list[Participant]


class RoomPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of rooms by name; ``next`` is the ``after`` of the next page (null: last)."""

    rooms: list[RoomInfo]
    next: str | None = None


class PublicRoom(msgspec.Struct, frozen=True, kw_only=True):
    """A public room as the lobby lists it."""

    name: str
    topic: str
    participants: int


class PublicRoomPage(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/rooms`` without a token: the public rooms, as the lobby shows them."""

    rooms: list[PublicRoom]
    next: str | None = None


class ParticipantList(msgspec.Struct, frozen=True, kw_only=True):
    room: str
    participants: list[Participant]


class IssuedToken(msgspec.Struct, frozen=True, kw_only=True):
    """A signed join token (a JWT) and when it expires (Unix seconds)."""

    token: str
    room: str
    identity: str
    grants: list[Grant]
    expires_at: float


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/whoami``: what the request's token proves (``kind`` none: no token)."""

    kind: Literal["admin", "join", "none"]
    grants: list[Grant]
    room: str | None = None
    identity: str | None = None
    name: str | None = None
    expires_at: float | None = None


class RoomAccess(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``GET /v1/rooms/{room}/access``: whether a hello with the request's token would be
    let in (room limits not looked at), and if not, the refusal's code and message."""

    room: str
    private: bool
    admitted: bool
    code: ErrorCode | None = None
    message: str | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``GET /healthz``: 200 with status ok; 503 with status degraded when a node of
    several cannot reach Redis (``node`` and ``redis`` come with ``--redis`` only)."""

    status: Literal["ok", "degraded"]
    version: str
    rooms: int
    connections: int
    node: str | None = None
    redis: Literal["ok", "unreachable"] | None = None


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What went wrong: the protocol's error ``code`` and a ``message`` for people.

    ``retry_after`` (seconds; also the ``Retry-After`` header) comes with 429 and 503;
    ``grant``: the grant the token lacks (403); ``line``: the line of a text/plain body
    that was refused.
    """

    code: ErrorCode
    message: str
    retry_after: float | None = None
    grant: Grant | None = None
    line: int | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every error's body. When the room refuses a line of a post of several, the error
    names that line (``error.line``: the first refused) and ``messages`` lists the lines
    that were stored, those after it included, as ``roomctl post --lines`` does. Sending
    the same body again with the same ``Idempotency-Key`` stores nothing twice."""

    error: ErrorDetail
    messages: list[PostedMessage] | None = None
