"""Durable storage for rooms and their message logs.

Theory of operation
-------------------
Everything lives in one SQLite database: a ``rooms`` table (one row per room, with an
opaque ``meta`` blob the application encoded) and a ``log`` table keyed by
``(room, seq)``.  The database runs in WAL mode with ``synchronous=FULL``, so once
``Store.write`` returns, the batch survives ``kill -9`` and (as far as the OS and disk
honour fsync) power loss.

``Store`` is the synchronous half, meant to be called from worker threads.  A file
database gets two connections: one for writes and one for reads.  WAL lets the reader
see the last committed snapshot while the writer is mid-transaction, so reads never
queue behind a slow fsync.  Each connection has its own lock, because a sqlite3
connection must not be used by two threads at once.  An in-memory database cannot be
shared between connections, so it uses one connection behind one lock.

``StoreWriter`` is the trio half.  Producers ``submit`` jobs (a list of writes plus a
callback) into a bounded channel.  A single writer task takes the first job, drains
whatever else is already queued, and commits all of it in one transaction on one
worker thread ("group commit").  The fsync is paid once per batch, not once per job.
After the commit, the writer calls every job's callback synchronously, in submission
order.  Callers rely on that order to, for example, broadcast chat messages in
sequence order once they are durable.  If a combined batch fails, each job is retried
on its own, so one bad job cannot fail its neighbours.

Once a batch has been taken off the queue it is finished (committed or failed, and
callbacks run) even if the writer task is cancelled.  A commit must never be
abandoned half way, and a caller must never miss its callback for a job the writer
accepted.  Cancellation therefore takes effect between batches.  Jobs still queued
at that point stay queued, and ``aclose`` (or a new ``run``) writes them.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3
import threading
from collections.abc import Sequence

from daemon.core.records import (
    AppendLog,
    DeleteRoom,
    KeyUse,
    LogEntry,
    PutRoom,
    StoredRoom,
    Write,
)

__all__ = ["Store", "StoreError"]

logger = logging.getLogger(__name__)

# 1: rooms and log; 2: rooms.private (join tokens); 3: rooms.implicit (empty-room expiry);
# 4: keys (idempotency keys of posts).
SCHEMA_VERSION = 4

# Long enough to ride out another process (e.g. a backup tool) holding the write lock
# briefly. Short enough that a wedged database surfaces as an error, not a hang.
_BUSY_TIMEOUT_MS = 5000

_KEYS_TABLE = """
    CREATE TABLE IF NOT EXISTS keys (
        room TEXT NOT NULL,
        key  TEXT NOT NULL,
        seq  INTEGER NOT NULL,
        at   REAL NOT NULL,
        PRIMARY KEY (room, key)
    ) WITHOUT ROWID
"""

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS rooms (
        name       TEXT PRIMARY KEY NOT NULL,
        app        TEXT NOT NULL,
        created_at REAL NOT NULL,
        meta       BLOB NOT NULL,
        private    INTEGER NOT NULL DEFAULT 0,
        implicit   INTEGER NOT NULL DEFAULT 0
    )
    """,
    # WITHOUT ROWID: the primary key is the only access path. Storing rows clustered
    # by (room, seq) makes paging and MAX(seq) plain index range scans.
    """
    CREATE TABLE IF NOT EXISTS log (
        room TEXT NOT NULL,
        seq  INTEGER NOT NULL,
        at   REAL NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID
    """,
    _KEYS_TABLE,
)

# What each version adds to the one before it; an older database runs the steps it lacks,
# in order, in the transaction that opens it. Rooms of older versions were all kept
# forever, so none of them becomes implicit (expirable) by the upgrade.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE rooms ADD COLUMN private INTEGER NOT NULL DEFAULT 0",),
    3: ("ALTER TABLE rooms ADD COLUMN implicit INTEGER NOT NULL DEFAULT 0",),
    # Idempotency keys of posts (send-message key, the HTTP Idempotency-Key header).
    4: (_KEYS_TABLE,),
}


class StoreError(Exception):
    """The database could not be opened, read or written.

    A failed ``write`` has been rolled back, so none of its batch is stored.
    """


# ----------------------------------------------------------------------------- store


def _connect(target: str | pathlib.Path) -> sqlite3.Connection:
    # isolation_level=None: the sqlite3 module must not open transactions behind our
    # back. ``write`` issues BEGIN IMMEDIATE itself so that it takes the write lock up
    # front instead of failing to upgrade a read lock halfway through a batch.
    # check_same_thread=False: callers come from arbitrary worker threads. The locks
    # in Store serialise use of each connection.
    conn = sqlite3.connect(
        target,
        isolation_level=None,
        check_same_thread=False,
        timeout=_BUSY_TIMEOUT_MS / 1000,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # FULL fsyncs the WAL on every commit. NORMAL would survive a process crash
        # but could lose the last commits on power loss, and callers treat a commit
        # as acknowledged data.
        conn.execute("PRAGMA synchronous = FULL")
        # No-ops on Linux. On macOS, plain fsync does not flush the drive cache, so
        # these pragmas are what make commits survive power loss there.
        conn.execute("PRAGMA fullfsync = ON")
        conn.execute("PRAGMA checkpoint_fullfsync = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _fsync_dir(directory: pathlib.Path) -> None:
    # A newly created file or directory is only durable once the directory entry
    # naming it is flushed. SQLite does this for its WAL file but not for the main
    # database file.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Not every platform lets you open a directory. Nothing more we can do.
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_private_dirs(directory: pathlib.Path) -> None:
    # Path.mkdir(parents=True) applies ``mode`` only to the last component. Every
    # directory we create must be private, so create the missing ones one by one.
    missing: list[pathlib.Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for new_dir in reversed(missing):
        try:
            new_dir.mkdir(mode=0o700)
        except FileExistsError:
            continue  # Another process created it in the meantime. That is fine.
        _fsync_dir(new_dir.parent)


def _create_private_file(path: pathlib.Path) -> None:
    # SQLite creates files with the umask's permissions. Chat logs are private, so
    # create the file as 0600 before SQLite gets to it. SQLite copies the database
    # file's mode onto the -wal and -shm files it creates later.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    _fsync_dir(path.parent)


def _init_schema(conn: sqlite3.Connection) -> None:
    # IMMEDIATE: two processes opening a fresh file at once must not both create
    # the schema.
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif 1 <= version < SCHEMA_VERSION:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is not supported "
                f"(this build understands version {SCHEMA_VERSION})"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _apply(cur: sqlite3.Cursor, write: Write) -> None:
    if isinstance(write, AppendLog):
        cur.execute(
            "INSERT INTO log (room, seq, at, body) VALUES (?, ?, ?, ?)",
            (write.room, write.seq, write.at, write.body),
        )
        if write.key is not None:
            cur.execute("INSERT INTO keys (room, key, seq, at) VALUES (?, ?, ?, ?)",
                        (write.room, write.key, write.seq, write.at))
    elif isinstance(write, PutRoom):
        # A true upsert, not INSERT OR REPLACE. REPLACE deletes the old row first,
        # which would also fire any future ON DELETE cascade on the room's log.
        cur.execute(
            "INSERT INTO rooms (name, app, created_at, meta, private, implicit) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET app = excluded.app, "
            "created_at = excluded.created_at, meta = excluded.meta, "
            "private = excluded.private, implicit = excluded.implicit",
            (write.name, write.app, write.created_at, write.meta, int(write.private),
             int(write.implicit)),
        )
    elif isinstance(write, DeleteRoom):
        cur.execute("DELETE FROM log WHERE room = ?", (write.name,))
        cur.execute("DELETE FROM keys WHERE room = ?", (write.name,))
        cur.execute("DELETE FROM rooms WHERE name = ?", (write.name,))
    else:
        raise TypeError(f"not a store write: {write!r}")


class Store:
    """Synchronous access to the database. Every method may be called from any thread.

    Create instances with ``Store.open``.
    """

    def __init__(
        self,
        *,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        path: pathlib.Path | None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = threading.Lock()
        # One connection means one lock. Two locks around a shared connection
        # would let a read and a write use it at the same time.
        self._read_lock = self._write_lock if reader is writer else threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: pathlib.Path | None) -> Store:
        """Open (creating if needed) the database at ``path``; ``None`` means in-memory.

        Missing parent directories are created with mode 0700 and a new database file
        with mode 0600.

        Returns:
            The open store.

        Raises:
            StoreError: the directory or database could not be created or opened, or
                the database has a schema version this code does not understand.
        """
        if path is None:
            try:
                conn = _connect(":memory:")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open in-memory database: {exc}") from exc
            try:
                _init_schema(conn)
            except BaseException as exc:
                conn.close()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot initialise in-memory database: {exc}") from exc
                raise
            return cls(writer=conn, reader=conn, path=None)

        path = pathlib.Path(path)
        try:
            _make_private_dirs(path.parent)
            _create_private_file(path)
        except OSError as exc:
            raise StoreError(f"cannot create database {path}: {exc}") from exc

        writer: sqlite3.Connection | None = None
        reader: sqlite3.Connection | None = None
        try:
            writer = _connect(path)
            (mode,) = writer.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                # Still correct without WAL, because the busy timeout serialises
                # readers and the writer. Reads would just wait for writes.
                logger.warning("database %s: WAL unavailable, journal_mode=%s", path, mode)
            _init_schema(writer)
            reader = _connect(path)
            # The read connection must never write, whatever a future bug asks of it.
            reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            for opened in (reader, writer):
                if opened is not None:
                    opened.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open database {path}: {exc}") from exc
            raise
        return cls(writer=writer, reader=reader, path=path)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def load_rooms(self, keys_since: float = 0.0) -> list[StoredRoom]:
        """Load every stored room.

        Returns:
            All rooms ordered by name, each with the highest seq in its log and the
            idempotency keys used since ``keys_since`` (Unix seconds), oldest first.

        Raises:
            StoreError: the store is closed or the query failed.
        """
        with self._read_lock:
            self._check_open()
            try:
                rows = self._reader.execute(
                    "SELECT r.name, r.app, r.created_at, r.meta, "
                    "COALESCE((SELECT MAX(l.seq) FROM log AS l WHERE l.room = r.name), 0), "
                    "r.private, r.implicit FROM rooms AS r ORDER BY r.name"
                ).fetchall()
                key_rows = self._reader.execute(
                    "SELECT room, key, seq, at FROM keys WHERE at >= ? ORDER BY at",
                    (keys_since,)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot load rooms: {exc}") from exc
        keys: dict[str, list[KeyUse]] = {}
        for room, key, seq, at in key_rows:
            keys.setdefault(room, []).append(KeyUse(key, seq, at))
        return [
            StoredRoom(name=name, app=app, created_at=created_at, meta=meta, last_seq=last,
                       private=bool(private), implicit=bool(implicit), keys=keys.get(name, []))
            for name, app, created_at, meta, last, private, implicit in rows
        ]

    def forget_keys(self, before: float) -> int:
        """Delete the idempotency keys used before ``before`` (Unix seconds); return how many.

        Raises:
            StoreError: the store is closed or the delete failed.
        """
        with self._write_lock:
            self._check_open()
            try:
                return self._writer.execute("DELETE FROM keys WHERE at < ?", (before,)).rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"cannot forget old keys: {exc}") from exc

    def write(self, batch: Sequence[Write]) -> None:
        """Apply ``batch`` atomically, in order, in one transaction.

        Returns once the transaction is committed and synced. An empty batch is a
        no-op.

        Raises:
            StoreError: the store is closed, or some write failed (for example a
                duplicate log seq). The transaction has been rolled back, so no
                write of the batch is stored.
        """
        if not batch:
            return
        with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.cursor()
                for item in batch:
                    _apply(cur, item)
                conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, Exception):
                    raise StoreError(f"write of {len(batch)} item(s) failed: {exc}") from exc
                raise

    def _rollback(self) -> None:
        # in_transaction is false if BEGIN itself failed, or if SQLite already rolled
        # back on its own (it does that for some errors, e.g. SQLITE_FULL).
        if not self._writer.in_transaction:
            return
        try:
            self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            logger.exception("rollback failed")

    def read_log(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[LogEntry]:
        """Read a page of ``room``'s log.

        With ``after``, returns the first ``limit`` entries with seq > ``after`` (and
        seq < ``before`` if given). Without ``after``, returns the last ``limit``
        entries (with seq < ``before`` if given). A ``limit`` of 0 or less returns
        nothing.

        Returns:
            The entries in ascending seq order. Empty for an unknown room.

        Raises:
            StoreError: the store is closed or the query failed.
        """
        if limit <= 0:
            return []
        clauses = ["room = ?"]
        params: list[object] = [room]
        if after is not None:
            clauses.append("seq > ?")
            params.append(after)
        if before is not None:
            clauses.append("seq < ?")
            params.append(before)
        # Paging forward from ``after`` wants the oldest matches. Everything else
        # (latest history, or scrolling back from ``before``) wants the newest, so
        # fetch those newest-first and flip.
        newest_first = after is None
        order = "DESC" if newest_first else "ASC"
        sql = (
            f"SELECT seq, at, body FROM log WHERE {' AND '.join(clauses)} "
            f"ORDER BY seq {order} LIMIT ?"
        )
        params.append(limit)
        with self._read_lock:
            self._check_open()
            try:
                rows = self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read log of room {room!r}: {exc}") from exc
        if newest_first:
            rows.reverse()
        return [LogEntry(seq=seq, at=at, body=body) for seq, at, body in rows]

    def close(self) -> None:
        """Close the database. Idempotent.

        Waits for any read or write in progress on another thread to finish. Later
        calls to other methods raise StoreError.
        """
        with self._write_lock:
            if self._read_lock is self._write_lock:
                self._close_locked()
            else:
                with self._read_lock:
                    self._close_locked()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not self._writer:
            self._reader.close()
        self._writer.close()
