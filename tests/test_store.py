"""Tests for daemon.store.sqlite: the SQLite Store and the group-committing StoreWriter."""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
import trio

from daemon.store import (
    AppendLog,
    DeleteRoom,
    KeyUse,
    LogEntry,
    PutRoom,
    Store,
    StoredRoom,
    StoreError,
    StoreWriter,
    Write,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def room(name: str, *, app: str = "chat", created_at: float = 1.0, meta: bytes = b"m") -> PutRoom:
    return PutRoom(name=name, app=app, created_at=created_at, meta=meta)


def entry(room_name: str, seq: int) -> AppendLog:
    return AppendLog(room=room_name, seq=seq, at=float(seq), body=f"body-{seq}".encode())


def seqs(entries: Sequence[LogEntry]) -> list[int]:
    return [e.seq for e in entries]


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Store]:
    path = None if request.param == "memory" else tmp_path / "store.sqlite"
    s = Store.open(path)
    yield s
    s.close()


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "state" / "roomctl.sqlite"


class Gate:
    """Wraps store.write: the first call blocks until released, and every batch size
    is recorded. This lets a test queue jobs while the writer is busy."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []
        real = store.write

        def write(batch: Sequence[Write]) -> None:
            self.calls.append(len(batch))
            if len(self.calls) == 1:
                self.entered.set()
                assert self.release.wait(5), "gate never released"
            real(batch)

        monkeypatch.setattr(store, "write", write)

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, 5)


# ----------------------------------------------------------------------------- Store


def test_round_trip(store: Store) -> None:
    store.write([room("b", meta=b"\x00\x01"), room("a", app="call", created_at=2.5)])
    store.write([entry("b", 1), entry("b", 2), entry("b", 3)])

    assert store.load_rooms() == [
        StoredRoom(name="a", app="call", created_at=2.5, meta=b"m", last_seq=0),
        StoredRoom(name="b", app="chat", created_at=1.0, meta=b"\x00\x01", last_seq=3),
    ]
    assert store.read_log("b") == [
        LogEntry(seq=1, at=1.0, body=b"body-1"),
        LogEntry(seq=2, at=2.0, body=b"body-2"),
        LogEntry(seq=3, at=3.0, body=b"body-3"),
    ]
    assert store.read_log("a") == []
    assert store.read_log("nope") == []


def test_put_room_upsert_keeps_log(store: Store) -> None:
    store.write([room("r", meta=b"old"), entry("r", 1), entry("r", 2)])
    store.write([room("r", app="call", created_at=9.0, meta=b"new")])

    assert store.load_rooms() == [
        StoredRoom(name="r", app="call", created_at=9.0, meta=b"new", last_seq=2)
    ]
    assert seqs(store.read_log("r")) == [1, 2]


def test_delete_room_removes_log(store: Store) -> None:
    store.write([room("r"), room("s"), entry("r", 1), entry("r", 2), entry("s", 1)])
    store.write([DeleteRoom(name="r")])

    assert [r.name for r in store.load_rooms()] == ["s"]
    assert store.read_log("r") == []
    assert seqs(store.read_log("s")) == [1]
    # The room's seq space is free again: re-creating it must not hit stale entries.
    store.write([room("r"), entry("r", 1)])
    assert seqs(store.read_log("r")) == [1]


def test_read_log_paging(store: Store) -> None:
    store.write([room("r"), *(entry("r", n) for n in range(1, 61))])
    store.write([room("other"), entry("other", 5)])

    # Neither bound: the latest page, ascending.
    assert seqs(store.read_log("r")) == list(range(11, 61))
    assert seqs(store.read_log("r", limit=3)) == [58, 59, 60]
    # Only before: the page just before it.
    assert seqs(store.read_log("r", before=5, limit=3)) == [2, 3, 4]
    assert seqs(store.read_log("r", before=3, limit=10)) == [1, 2]
    assert store.read_log("r", before=1) == []
    # Only after: the page just after it.
    assert seqs(store.read_log("r", after=5, limit=3)) == [6, 7, 8]
    assert seqs(store.read_log("r", after=58)) == [59, 60]
    assert store.read_log("r", after=60) == []
    # Both: the first page after `after`, never reaching `before`.
    assert seqs(store.read_log("r", after=2, before=9, limit=3)) == [3, 4, 5]
    assert seqs(store.read_log("r", after=2, before=5, limit=10)) == [3, 4]
    assert store.read_log("r", after=4, before=5) == []
    # Limits.
    assert seqs(store.read_log("r", limit=1)) == [60]
    assert len(store.read_log("r", limit=1000)) == 60
    assert store.read_log("r", limit=0) == []
    # Other rooms never leak in.
    assert seqs(store.read_log("other")) == [5]


def test_failing_batch_rolls_back(store: Store) -> None:
    store.write([room("r"), entry("r", 1), entry("r", 2)])

    with pytest.raises(StoreError):
        store.write([room("new"), entry("r", 3), entry("r", 1)])  # seq 1 already exists
    with pytest.raises(StoreError):
        store.write([entry("r", 4), entry("r", 4)])  # duplicate inside the batch

    assert [r.name for r in store.load_rooms()] == ["r"]
    assert seqs(store.read_log("r")) == [1, 2]
    # The connection is usable after a rollback.
    store.write([entry("r", 3)])
    assert seqs(store.read_log("r")) == [1, 2, 3]


def test_write_rejects_non_write(store: Store) -> None:
    with pytest.raises(StoreError):
        store.write([room("r"), "not a write"])  # type: ignore[list-item]
    assert store.load_rooms() == []


def test_empty_batch_is_noop(store: Store) -> None:
    store.write([])
    assert store.load_rooms() == []


def test_closed_store_raises(store: Store) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError):
        store.load_rooms()
    with pytest.raises(StoreError):
        store.read_log("r")
    with pytest.raises(StoreError):
        store.write([room("r")])


def test_concurrent_threads(store: Store) -> None:
    store.write([room(f"r{i}") for i in range(4)])
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for seq in range(1, 51):
                store.write([entry(f"r{i}", seq)])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(100):
                for i in range(4):
                    got = seqs(store.read_log(f"r{i}", limit=1000))
                    assert got == list(range(1, len(got) + 1))
                store.load_rooms()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert [r.last_seq for r in store.load_rooms()] == [50] * 4


def test_file_layout_and_schema(db_path: pathlib.Path) -> None:
    store = Store.open(db_path)
    store.close()

    assert db_path.parent.stat().st_mode & 0o777 == 0o700
    assert db_path.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


# The rooms table as each older schema version made it (the log table never changed).
_OLD_ROOMS = {
    1: "CREATE TABLE rooms (name TEXT PRIMARY KEY NOT NULL, app TEXT NOT NULL, "
       "created_at REAL NOT NULL, meta BLOB NOT NULL)",
    2: "CREATE TABLE rooms (name TEXT PRIMARY KEY NOT NULL, app TEXT NOT NULL, "
       "created_at REAL NOT NULL, meta BLOB NOT NULL, private INTEGER NOT NULL DEFAULT 0)",
    3: "CREATE TABLE rooms (name TEXT PRIMARY KEY NOT NULL, app TEXT NOT NULL, "
       "created_at REAL NOT NULL, meta BLOB NOT NULL, private INTEGER NOT NULL DEFAULT 0, "
       "implicit INTEGER NOT NULL DEFAULT 0)",
}


def old_database(db_path: pathlib.Path, version: int, *inserts: str) -> None:
    """Write a database as schema ``version`` left it, holding the rows ``inserts`` add."""
    db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(db_path)
    conn.execute(_OLD_ROOMS[version])
    conn.execute("CREATE TABLE log (room TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, "
                 "body BLOB NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID")
    for statement in inserts:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def test_a_version_1_database_is_migrated_keeping_its_rooms_and_log(
        db_path: pathlib.Path) -> None:
    old_database(db_path, 1, "INSERT INTO rooms VALUES ('r', 'chat', 1.0, x'7b7d')",
                 "INSERT INTO log VALUES ('r', 1, 2.0, x'00')")
    store = Store.open(db_path)
    try:
        [loaded] = store.load_rooms()
        assert (loaded.name, loaded.last_seq, loaded.private, loaded.implicit) == \
            ("r", 1, False, False)
        store.write([PutRoom(name="p", app="chat", created_at=3.0, meta=b"{}", private=True)])
        assert [r.private for r in store.load_rooms()] == [True, False]
    finally:
        store.close()


def test_a_version_2_database_is_migrated_and_its_rooms_stay_kept(
        db_path: pathlib.Path) -> None:
    old_database(db_path, 2, "INSERT INTO rooms VALUES ('empty', 'chat', 1.0, x'7b7d', 0)",
                 "INSERT INTO rooms VALUES ('secret', 'chat', 2.0, x'7b7d', 1)",
                 "INSERT INTO log VALUES ('secret', 1, 2.0, x'00')")
    store = Store.open(db_path)
    try:
        # Rooms from before the empty-room rule were all kept: none becomes implicit.
        assert store.load_rooms() == [
            StoredRoom(name="empty", app="chat", created_at=1.0, meta=b"{}", last_seq=0),
            StoredRoom(name="secret", app="chat", created_at=2.0, meta=b"{}", last_seq=1,
                       private=True),
        ]
        store.write([PutRoom(name="visit", app="chat", created_at=3.0, meta=b"{}",
                             implicit=True)])
        assert [r.implicit for r in store.load_rooms()] == [False, False, True]
    finally:
        store.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
    finally:
        conn.close()


def test_a_version_3_database_gains_idempotency_keys(db_path: pathlib.Path) -> None:
    old_database(db_path, 3, "INSERT INTO rooms VALUES ('r', 'chat', 1.0, x'7b7d', 0, 0)",
                 "INSERT INTO log VALUES ('r', 1, 2.0, x'00')")
    store = Store.open(db_path)
    try:
        store.write([AppendLog(room="r", seq=2, at=100.0, body=b"m", key="k-2")])
        store.write([AppendLog(room="r", seq=3, at=200.0, body=b"m", key="k-3")])
        [loaded] = store.load_rooms(keys_since=150.0)
        assert loaded.last_seq == 3 and loaded.keys == [KeyUse("k-3", 3, 200.0)]
        # A key is used once per room: a second append with it fails the batch.
        with pytest.raises(StoreError):
            store.write([AppendLog(room="r", seq=4, at=300.0, body=b"m", key="k-3")])
        assert store.forget_keys(150.0) == 1
        assert [r.keys for r in store.load_rooms()] == [[KeyUse("k-3", 3, 200.0)]]
        store.write([DeleteRoom(name="r")])
        assert store.load_rooms() == []
    finally:
        store.close()


def test_the_implicit_flag_survives_reopen_and_an_upsert_can_clear_it(
        db_path: pathlib.Path) -> None:
    store = Store.open(db_path)
    store.write([PutRoom(name="r", app="chat", created_at=1.0, meta=b"{}", implicit=True)])
    store.close()
    store = Store.open(db_path)
    try:
        assert [r.implicit for r in store.load_rooms()] == [True]
        store.write([PutRoom(name="r", app="chat", created_at=1.0, meta=b"{}")])
        assert [r.implicit for r in store.load_rooms()] == [False]
    finally:
        store.close()


def test_unknown_schema_version_refused(db_path: pathlib.Path) -> None:
    Store.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(db_path)


def test_data_survives_reopen(db_path: pathlib.Path) -> None:
    store = Store.open(db_path)
    store.write([room("r", meta=b"meta"), entry("r", 1), entry("r", 2)])
    store.close()

    store = Store.open(db_path)
    try:
        assert store.load_rooms() == [
            StoredRoom(name="r", app="chat", created_at=1.0, meta=b"meta", last_seq=2)
        ]
        assert seqs(store.read_log("r")) == [1, 2]
    finally:
        store.close()


def test_file_reads_do_not_wait_for_writes(db_path: pathlib.Path) -> None:
    store = Store.open(db_path)
    store.write([room("r"), entry("r", 1)])
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        # Another connection holds an open write transaction, and the store's own
        # writer is busy (its lock is held). Reads must still answer from the last
        # committed snapshot.
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO log VALUES ('r', 2, 2.0, x'00')")
        result: list[list[LogEntry]] = []
        with store._write_lock:
            reader = threading.Thread(target=lambda: result.append(store.read_log("r")))
            reader.start()
            reader.join(5)
        assert result and seqs(result[0]) == [1]
        other.execute("ROLLBACK")
    finally:
        other.close()
        store.close()


# ----------------------------------------------------------------------- StoreWriter


async def test_writer_commit_and_reads(store: Store) -> None:
    writer = StoreWriter(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.commit([room("r"), entry("r", 1)])
        await writer.commit([entry("r", 2)])
        assert [r.last_seq for r in await writer.load_rooms()] == [2]
        assert seqs(await writer.read_log("r", after=1)) == [2]
        assert seqs(await writer.read_log("r", before=2)) == [1]
        await writer.aclose()


async def test_writer_batches_and_keeps_callback_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(store, monkeypatch)
    writer = StoreWriter(store)
    done: list[tuple[str | int, BaseException | None]] = []

    def callback(tag: str | int) -> Callable[[BaseException | None], None]:
        return lambda exc: done.append((tag, exc))

    # The batch hook runs after each batch's callbacks, before the next batch's.
    writer.on_batch_done = lambda: done.append(("batch", None))

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit([room("r")], callback("room"))
        await gate.wait_entered()
        # The writer is stuck committing the first job, so all of these queue up.
        for seq in range(1, 51):
            await writer.submit([entry("r", seq)], callback(seq))
        gate.release.set()
        await writer.flush()

        batch = ("batch", None)
        assert done[:2] == [("room", None), batch]
        # flush() adds an empty marker job, which may land in the second batch or its own.
        assert done[2:52] == [(seq, None) for seq in range(1, 51)]
        assert done[52:] in ([batch], [batch, batch])
        assert gate.calls == [1, 50]  # 51 jobs, 2 transactions
        assert seqs(await writer.read_log("r", limit=100)) == list(range(1, 51))
        await writer.aclose()


async def test_writer_groups_concurrent_committers(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(tmp_path / "db.sqlite")
    calls: list[int] = []
    real = store.write

    def counting_write(batch: Sequence[Write]) -> None:
        calls.append(len(batch))
        real(batch)

    monkeypatch.setattr(store, "write", counting_write)
    writer = StoreWriter(store)
    tasks, per_task = 20, 10

    async def committer(i: int) -> None:
        for seq in range(1, per_task + 1):
            await writer.commit([entry(f"r{i}", seq)])

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.commit([room(f"r{i}") for i in range(tasks)])
        async with trio.open_nursery() as committers:
            for i in range(tasks):
                committers.start_soon(committer, i)
        rooms = await writer.load_rooms()
        await writer.aclose()

    assert [r.last_seq for r in rooms] == [per_task] * tasks
    assert sum(calls) == tasks + tasks * per_task  # the rooms, then every entry
    assert len(calls) < 1 + tasks * per_task  # fewer transactions than jobs


async def test_writer_isolates_bad_job(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write([room("r"), entry("r", 1)])
    gate = Gate(store, monkeypatch)
    writer = StoreWriter(store)
    done: list[tuple[str, BaseException | None]] = []

    def callback(tag: str) -> Callable[[BaseException | None], None]:
        return lambda exc: done.append((tag, exc))

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit([entry("r", 2)], callback("first"))
        await gate.wait_entered()
        await writer.submit([entry("r", 3)], callback("good-1"))
        await writer.submit([entry("r", 4), entry("r", 1)], callback("bad"))  # 1 exists
        await writer.submit([entry("r", 5)], callback("good-2"))
        gate.release.set()
        await writer.flush()

        assert [tag for tag, _ in done] == ["first", "good-1", "bad", "good-2"]
        assert done[0][1] is None and done[1][1] is None and done[3][1] is None
        assert isinstance(done[2][1], StoreError)
        # The three queued jobs were tried together first, then one by one.
        assert gate.calls == [1, 4, 1, 2, 1]
        assert seqs(await writer.read_log("r")) == [1, 2, 3, 5]

        with pytest.raises(StoreError):
            await writer.commit([entry("r", 6), entry("r", 6)])
        await writer.commit([entry("r", 6)])
        await writer.aclose()


async def test_callback_exception_is_logged_not_fatal(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    writer = StoreWriter(store)

    def explode(exc: BaseException | None) -> None:
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with caplog.at_level(logging.ERROR, logger="daemon.store.writer"):
            await writer.submit([room("r")], explode)
            await writer.commit([entry("r", 1)])
        assert any("boom" in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info)
        assert seqs(await writer.read_log("r")) == [1]
        await writer.aclose()


async def test_cancelled_run_finishes_batch_in_flight(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(db_path)
    gate = Gate(store, monkeypatch)
    writer = StoreWriter(store)
    done: list[tuple[str, BaseException | None]] = []

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit([room("r"), entry("r", 1)], lambda exc: done.append(("a", exc)))
        await gate.wait_entered()
        await writer.submit([entry("r", 2)], lambda exc: done.append(("b", exc)))
        nursery.cancel_scope.cancel()
        gate.release.set()

    # run() was cancelled mid-write. The batch in flight still committed and got its
    # callback. The job still queued stays queued...
    assert done == [("a", None)]
    # ...until aclose() drains it, even though run() is gone.
    await writer.aclose()
    assert done == [("a", None), ("b", None)]

    reopened = Store.open(db_path)
    try:
        assert seqs(reopened.read_log("r")) == [1, 2]
    finally:
        reopened.close()


async def test_aclose_flushes_and_refuses_new_work(db_path: pathlib.Path) -> None:
    store = Store.open(db_path)
    writer = StoreWriter(store)
    done: list[BaseException | None] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit([room("r")], done.append)
        for seq in range(1, 21):
            await writer.submit([entry("r", seq)], done.append)
        await writer.aclose()  # run() returns, so the nursery can exit
    assert done == [None] * 21

    with pytest.raises(trio.ClosedResourceError):
        await writer.submit([entry("r", 99)], done.append)
    with pytest.raises(trio.ClosedResourceError):
        await writer.commit([entry("r", 99)])
    with pytest.raises(trio.ClosedResourceError):
        await writer.flush()
    with pytest.raises(StoreError):
        store.load_rooms()  # closed
    await writer.aclose()  # idempotent

    reopened = Store.open(db_path)
    try:
        assert seqs(reopened.read_log("r")) == list(range(1, 21))
    finally:
        reopened.close()


async def test_aclose_without_run_drains_queue(store: Store) -> None:
    writer = StoreWriter(store)
    done: list[BaseException | None] = []
    await writer.submit([room("r")], done.append)
    await writer.submit([entry("r", 1)], done.append)
    await writer.aclose()
    assert done == [None, None]


async def test_run_twice_is_refused(store: Store) -> None:
    writer = StoreWriter(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with pytest.raises(RuntimeError):
            await writer.run()
        await writer.aclose()


async def test_submit_rejects_non_write(store: Store) -> None:
    writer = StoreWriter(store)
    with pytest.raises(TypeError):
        await writer.submit(["nope"], lambda exc: None)  # type: ignore[list-item]
    await writer.aclose()


async def test_submit_applies_backpressure(store: Store) -> None:
    writer = StoreWriter(store, queue_size=2)
    await writer.submit([room("r")], lambda exc: None)
    await writer.submit([entry("r", 1)], lambda exc: None)
    with trio.move_on_after(0.05) as scope:
        await writer.submit([entry("r", 2)], lambda exc: None)
    assert scope.cancelled_caught  # queue full and nobody draining it
    await writer.aclose()


# ------------------------------------------------------------------------ durability

_CHILD = r"""
import pathlib, sys, time
import trio
from daemon.store import AppendLog, PutRoom, Store, StoreWriter

async def main() -> None:
    writer = StoreWriter(Store.open(pathlib.Path(sys.argv[1])))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.commit([PutRoom(name="r", app="chat", created_at=0.0, meta=b"")])

        def printer(seq):
            def on_done(exc):
                if exc is None:
                    sys.stdout.write(f"{seq}\n")
                    sys.stdout.flush()
            return on_done

        seq = 0
        while True:
            seq += 1
            body = b"x" * 200
            await writer.submit([AppendLog(room="r", seq=seq, at=time.time(), body=body)],
                                printer(seq))

trio.run(main)
"""


def test_acknowledged_writes_survive_sigkill(db_path: pathlib.Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db_path)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Never let a wedged child hang the suite.
    watchdog = threading.Timer(20, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        printed: list[int] = []
        deadline = time.monotonic() + 10
        while len(printed) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Anything the child managed to print before dying was acknowledged too.
        # Read through proc.stdout, not communicate(): lines already sitting in its
        # buffer would otherwise be skipped.
        printed += [int(line) for line in proc.stdout.read().split()]
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == -signal.SIGKILL, stderr
    assert len(printed) >= 100, stderr
    assert printed == list(range(1, len(printed) + 1))

    store = Store.open(db_path)
    try:
        (stored_room,) = store.load_rooms()
        stored = seqs(store.read_log("r", limit=1_000_000))
    finally:
        store.close()
    # Every acknowledged seq is there, with nothing missing in between. Commits that
    # were never acknowledged may or may not have landed.
    assert stored == list(range(1, len(stored) + 1))
    assert len(stored) >= len(printed)
    assert stored_room.last_seq == len(stored)
