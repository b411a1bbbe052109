"""Wire messages of the admin endpoint (``/v1/admin``): room management.

The connection opens with the same ``hello``, carrying the admin token.
"""

from typing import Any

import msgspec

from protocol.limits import (
    AppName,
    DisplayName,
    Identity,
    PageLimit,
    RoomName,
    SessionId,
    TokenTtl,
)
from protocol.messages import Grant, Participant, Reply, Request, RoomInfo


class CreateRoom(Request, tag="create-room", frozen=True, kw_only=True):
    """Create a room; ``meta`` is the app's room metadata (for chat: topic, max_participants).

    With ``if_missing``, an existing room is not an error (it is returned unchanged).
    """

    room: RoomName
    app: AppName = "chat"
    meta: dict[str, Any] | None = None
    if_missing: bool = False
    private: bool = False  # joining needs a join token (see create-token)


class ListRooms(Request, tag="list-rooms", frozen=True, kw_only=True):
    """List rooms by name; answered by ``rooms``.

    ``after`` and ``limit`` (new in v1) page through them: the first ``limit`` rooms whose
    names sort after ``after``. Without ``limit``, every room.
    """

    after: RoomName | None = None
    limit: PageLimit | None = None


class GetRoom(Request, tag="get-room", frozen=True, kw_only=True):
    room: RoomName


class UpdateRoom(Request, tag="update-room", frozen=True, kw_only=True):
    """Change a room's settings (new in v1); answered by ``room``.

    ``meta`` holds the app's settings to change, the others kept (for chat: ``topic``,
    ``max_participants``, ``public``); ``private``, when given, makes joining need a join
    token or not. Sessions already in the room stay; the change applies to new hellos.
    """

    room: RoomName
    meta: dict[str, Any] | None = None
    private: bool | None = None


class DeleteRoom(Request, tag="delete-room", frozen=True, kw_only=True):
    """Delete a room and its history; its connections are closed with 4010."""

    room: RoomName


class Kick(Request, tag="kick", frozen=True, kw_only=True):
    """Remove a participant at once (no grace period); its connection is closed with 4009."""

    room: RoomName
    participant_id: SessionId


DEFAULT_GRANTS: tuple[Grant, ...] = (Grant.JOIN, Grant.POST, Grant.MEDIA)


class CreateToken(Request, tag="create-token", frozen=True, kw_only=True):
    """Sign a join token for ``room``; answered by ``token``. Needs the admin token."""

    room: RoomName
    identity: Identity
    name: DisplayName | None = None
    grants: list[Grant] = msgspec.field(default_factory=lambda: list(DEFAULT_GRANTS))
    ttl: TokenTtl = 3600.0


class TokenIssued(Reply, tag="token", frozen=True, kw_only=True):
    """A signed join token (a JWT, HS256) and when it expires (Unix seconds)."""

    token: str
    room: RoomName
    identity: str
    grants: list[Grant]
    expires_at: float


class RoomDetails(Reply, tag="room", frozen=True, kw_only=True):
    room: RoomInfo
    participants: list[Participant] = []


class RoomList(Reply, tag="rooms", frozen=True, kw_only=True):
    """The answer to ``list-rooms``; ``next`` (new in v1) is the ``after`` of the next page,
    null on the last one."""

    rooms: list[RoomInfo] = []
    next: RoomName | None = None


ADMIN_REQUESTS: tuple[type[Request], ...] = (
    CreateRoom, ListRooms, GetRoom, UpdateRoom, DeleteRoom, Kick, CreateToken)
ADMIN_EVENTS: tuple[type[Reply], ...] = (RoomDetails, RoomList, TokenIssued)
