"""Durable storage: the SQLite store (``sqlite``) and its group-committing writer (``writer``)."""

from daemon.core.records import (
    AppendLog,
    DeleteRoom,
    KeyUse,
    LogEntry,
    PutRoom,
    StoredRoom,
    Write,
)
from daemon.store.sqlite import Store, StoreError
from daemon.store.writer import StoreWriter

__all__ = [
    "AppendLog",
    "DeleteRoom",
    "KeyUse",
    "LogEntry",
    "PutRoom",
    "Store",
    "StoreError",
    "StoreWriter",
    "StoredRoom",
    "Write",
]
