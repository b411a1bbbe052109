"""The records the engine asks the store to write, and those it reads back.

Plain data (msgspec only), so the sans-IO engine can build them without importing the
store, its threads or trio.
"""

from typing import TypeAlias

import msgspec


class PutRoom(msgspec.Struct, frozen=True, kw_only=True):
    """Insert a room row or replace its fields. The room's log is left untouched."""

    name: str
    app: str
    created_at: float
    meta: bytes
    private: bool = False
    # Made by a hello, not by create-room, and not used since: removed once empty a while.
    implicit: bool = False


class DeleteRoom(msgspec.Struct, frozen=True, kw_only=True):
    """Delete a room row and every entry of its log."""

    name: str


class AppendLog(msgspec.Struct, frozen=True, kw_only=True):
    """Append one entry to a room's log. A duplicate (room, seq) fails the batch.

    With ``key`` (a client's idempotency key) the store also remembers, in the same
    transaction, that the key got this seq.
    """

    room: str
    seq: int
    at: float
    body: bytes
    key: str | None = None


class StoredSession(msgspec.Struct, frozen=True, kw_only=True):
    """A session as another node needs it to take its room over (several nodes only).

    Written as ``PutSession`` whenever what it holds changes, dropped with
    ``DropSession`` when the session ends. A new owner restores each one away, with a
    full grace period to resume. ``meta`` is the app's encoding of the session metadata.
    """

    room: str
    id: str
    resume_token: str
    hidden: bool
    joined_at: float
    meta: bytes
    grants: list[str] = []
    identity: str | None = None
    in_call: bool = False
    audio_muted: bool = True
    video_muted: bool = True
    peers: list[str] = []


PutSession = StoredSession


class DropSession(msgspec.Struct, frozen=True, kw_only=True):
    """Forget a session that ended (several nodes only)."""

    room: str
    id: str


Write: TypeAlias = PutRoom | DeleteRoom | AppendLog | StoredSession | DropSession


class KeyUse(msgspec.Struct, frozen=True, array_like=True):
    """An idempotency key a post used: the seq it got, and when."""

    key: str
    seq: int
    at: float


class StoredRoom(msgspec.Struct, frozen=True, kw_only=True):
    """A room as loaded from disk; ``last_seq`` is its highest log seq (0 if empty).

    ``keys``: the idempotency keys its posts used within the window, oldest first.
    """

    name: str
    app: str
    created_at: float
    meta: bytes
    last_seq: int
    private: bool = False
    implicit: bool = False
    keys: list[KeyUse] = []


class LogEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a room's log."""

    seq: int
    at: float
    body: bytes
