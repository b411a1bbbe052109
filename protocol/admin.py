"""Wire messages of the admin endpoint (``/v1/admin``): room management.

The connection opens with the same ``hello``, carrying the admin token.
"""

from typing import Any

from protocol.limits import AppName, RoomName, SessionId
from protocol.messages import Participant, Reply, Request, RoomInfo


class CreateRoom(Request, tag="create-room", frozen=True, kw_only=True):
    """Create a room; ``meta`` is the app's room metadata (for chat: topic, max_participants).

    With ``if_missing``, an existing room is not an error (it is returned unchanged).
    """

    room: RoomName
    app: AppName = "chat"
    meta: dict[str, Any] | None = None
    if_missing: bool = False


class ListRooms(Request, tag="list-rooms", frozen=True, kw_only=True):
    pass


class GetRoom(Request, tag="get-room", frozen=True, kw_only=True):
    room: RoomName


class DeleteRoom(Request, tag="delete-room", frozen=True, kw_only=True):
    """Delete a room and its history; its connections are closed with 4010."""

    room: RoomName


class Kick(Request, tag="kick", frozen=True, kw_only=True):
    """Remove a participant at once (no grace period); its connection is closed with 4009."""

    room: RoomName
    participant_id: SessionId


class RoomDetails(Reply, tag="room", frozen=True, kw_only=True):
    room: RoomInfo
    participants: list[Participant] = []


class RoomList(Reply, tag="rooms", frozen=True, kw_only=True):
    rooms: list[RoomInfo] = []


ADMIN_REQUESTS: tuple[type[Request], ...] = (CreateRoom, ListRooms, GetRoom, DeleteRoom, Kick)
ADMIN_EVENTS: tuple[type[Reply], ...] = (RoomDetails, RoomList)
