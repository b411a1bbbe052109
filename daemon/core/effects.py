"""Effects: what the sans-IO engine asks the server to do.

The engine never performs I/O; each input returns a list of these, and the server
applies them in order. Recipients of a ``Send`` are connection ids resolved when the
effect was made, which for deferred effects (``Persist.on_commit``) is commit time.

Facts (``RoomCreated``, ``RoomRemoved``, ``ParticipantKicked``, ``AccessRefused``,
``TokenIssued``) ask for
nothing: they tell the server what just happened, for its log and metrics, since the
engine has no logger.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias

import msgspec

from protocol import CloseCode, ErrorCode, Event

ConnId: TypeAlias = int
TimerKey: TypeAlias = tuple[str, str]


class Send(msgspec.Struct, frozen=True):
    """Send ``frame`` to each connection in ``to``; the server encodes it once per format."""

    to: tuple[ConnId, ...]
    frame: Event


class Close(msgspec.Struct, frozen=True):
    """Close one connection with a WebSocket close code and reason."""

    conn: ConnId
    code: CloseCode
    reason: str = ""


class Persist(msgspec.Struct, frozen=True):
    """Write ``writes`` in one transaction, then apply what ``on_commit`` returns.

    Persists are committed in the order the engine returned them, those returned by
    callbacks included. ``on_commit(now)`` runs after the commit, in commit order;
    ``on_failure(exc, now)`` runs instead if the transaction failed. Both get the time
    they run at and return further effects.
    """

    writes: tuple[Any, ...]
    on_commit: Callable[[float], Sequence["Effect"]] | None = None
    on_failure: Callable[[BaseException, float], Sequence["Effect"]] | None = None


class Query(msgspec.Struct, frozen=True):
    """Read a page of a room's log, then apply what ``respond(entries, now)`` returns."""

    room: str
    after: int | None
    before: int | None
    limit: int
    respond: Callable[[list[Any], float], Sequence["Effect"]]
    on_failure: Callable[[BaseException, float], Sequence["Effect"]] | None = None


class StartTimer(msgspec.Struct, frozen=True):
    """Call ``Engine.timer_fired(key, now)`` at ``deadline`` (replaces a timer with that key)."""

    key: TimerKey
    deadline: float


class CancelTimer(msgspec.Struct, frozen=True):
    key: TimerKey


class RoomCreated(msgspec.Struct, frozen=True):
    """A room was made: by ``create-room``, or (``implicit``) by the first hello to it."""

    room: str
    implicit: bool


class RoomRemoved(msgspec.Struct, frozen=True):
    """A room is gone: ``deleted`` by an administrator, or ``expired`` after staying empty."""

    room: str
    reason: Literal["deleted", "expired"]


class ParticipantKicked(msgspec.Struct, frozen=True):
    """An administrator removed session ``session`` from ``room``."""

    room: str
    session: str


class AccessRefused(msgspec.Struct, frozen=True):
    """A hello on ``conn`` was refused by the room's access rule (no token, wrong token...)."""

    room: str
    conn: ConnId
    code: ErrorCode
    message: str


class TokenIssued(msgspec.Struct, frozen=True):
    """A join token was signed (never the token itself: what it is for)."""

    room: str
    identity: str
    grants: tuple[str, ...]
    ttl: float


Fact: TypeAlias = RoomCreated | RoomRemoved | ParticipantKicked | AccessRefused | TokenIssued
Effect: TypeAlias = Send | Close | Persist | Query | StartTimer | CancelTimer | Fact
