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
    """Append one entry to a room's log. A duplicate (room, seq) fails the batch."""

    room: str
    seq: int
    at: float
    body: bytes


Write: TypeAlias = PutRoom | DeleteRoom | AppendLog


class StoredRoom(msgspec.Struct, frozen=True, kw_only=True):
    """A room as loaded from disk; ``last_seq`` is its highest log seq (0 if empty)."""

    name: str
    app: str
    created_at: float
    meta: bytes
    last_seq: int
    private: bool = False
    implicit: bool = False


class LogEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a room's log."""

    seq: int
    at: float
    body: bytes
