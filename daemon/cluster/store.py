"""The store of several nodes: rooms, logs and sessions in Redis, written only by owners.

``RedisWriter`` keeps the single-node writer's contract (one ordered queue, batches, each
job's callback in order; ``daemon.store.writer.OrderedWriter``): what the queue holds is
sent to Redis in one pipeline per batch, one script per write (``daemon.cluster.scripts``),
each checking that this node still holds the room's lease. A job succeeds only when every
one of its scripts answered; the daemon acknowledges a message only then.

What a failure tells the engine (``Context.persist``'s ``on_failure`` reads these):
``code`` (``unavailable``: retry), ``retry_after``, and for a refused append the seq Redis
holds last (``committed_seq``), from which the room's next appends continue. A fenced
write also calls ``on_fenced(room)``: the room has another owner, and this node lets go.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import coredis
import coredis.exceptions
import msgspec
import trio

from daemon.cluster import scripts
from daemon.cluster.keys import ROOM_INDEX, RoomKeys
from daemon.cluster.redis import UNREACHABLE
from daemon.core.records import (
    AppendLog,
    DeleteRoom,
    DropSession,
    KeyUse,
    LogEntry,
    PutRoom,
    StoredRoom,
    StoredSession,
    Write,
)
from daemon.store.writer import Job, OrderedWriter
from protocol import ErrorCode

log = logging.getLogger(__name__)

# Redis did not answer: unreachable, or slower than the writer's timeout.
NO_ANSWER: tuple[type[BaseException], ...] = (trio.TooSlowError, *UNREACHABLE)

_encode_session = msgspec.msgpack.Encoder().encode
_decode_session = msgspec.msgpack.Decoder(StoredSession).decode


class StoreFailure(Exception):
    """A write Redis did not take; what the client is told comes from the attributes."""

    code = ErrorCode.UNAVAILABLE
    retry_after: float | None = 1.0
    committed_seq: int | None = None
    public_message = "the message store (Redis) cannot be reached just now; retry"


class Unreachable(StoreFailure):
    """Redis did not answer (down, unreachable, or too slow): the write is taken as not
    stored (``uncommitted``), its seq to be used again."""

    uncommitted = True


class Fenced(StoreFailure):
    """This node's lease on the room is gone: another node owns it now."""

    retry_after = 0.5
    public_message = "this room is moving to another node; reconnect and retry"

    def __init__(self, room: str) -> None:
        super().__init__(f"room {room!r}: fenced (another node owns it)")
        self.room = room


class SeqRefused(StoreFailure):
    """An append whose seq is not the one after Redis's last (an earlier append failed)."""

    retry_after = 0.1
    public_message = "an earlier message of this room could not be stored; retry"

    def __init__(self, room: str, committed: int) -> None:
        super().__init__(f"room {room!r}: Redis holds seq {committed}")
        self.committed_seq = committed


class RedisWriter(OrderedWriter):
    """Writes rooms, logs and sessions to Redis, in order, fenced by each room's lease.

    ``owner_of(room)`` returns this node's lease token for a room it owns (``"node
    epoch"``), or None; a write for a room it does not own fails as fenced without
    reaching Redis. ``timeout`` bounds one batch's round trip.
    """

    write_types = (PutRoom, DeleteRoom, AppendLog, StoredSession, DropSession)

    def __init__(self, redis: coredis.Redis[bytes], *, owner_of: Callable[[str], str | None],
                 on_fenced: Callable[[str], None], timeout: float = 5.0,
                 queue_size: int = 4096) -> None:
        super().__init__(queue_size=queue_size)
        self._redis = redis
        self._owner_of = owner_of
        self.on_fenced = on_fenced
        self._timeout = timeout
        self._scripts = {name: redis.register_script(getattr(scripts, name))
                         for name in ("APPEND", "PUT_ROOM", "DELETE_ROOM", "PUT_SESSION",
                                      "DROP_SESSION")}

    # --- writing -----------------------------------------------------------------------------

    async def _commit_batch(self, jobs: list[Job]) -> list[Exception | None]:
        pending: list[list[tuple[Write, Awaitable[Any]]]] = []
        refused: dict[int, Exception] = {}
        try:
            with trio.fail_after(self._timeout):
                async with self._redis.pipeline(transaction=False, raise_on_error=False) as pipe:
                    for index, job in enumerate(jobs):
                        calls: list[tuple[Write, Awaitable[Any]]] = []
                        for write in job.writes:
                            owner = self._owner_of(_room_of(write))
                            if owner is None:
                                refused[index] = Fenced(_room_of(write))
                                break
                            calls.append((write, self._queue_write(pipe, write, owner)))
                        pending.append(calls)
                results: list[Exception | None] = []
                for index, calls in enumerate(pending):
                    results.append(refused.get(index) or await self._outcome(calls))
        except NO_ANSWER as exc:
            log.warning("Redis did not take a batch of %d writes: %s", len(jobs),
                        exc or type(exc).__name__)
            failure = Unreachable(f"Redis: {exc or type(exc).__name__}")
            return [failure if job.writes else None for job in jobs]
        for result in results:
            if isinstance(result, Fenced):
                self.on_fenced(result.room)
        return results

    def _queue_write(self, pipe: Any, write: Write, owner: str) -> Awaitable[Any]:
        keys = RoomKeys(_room_of(write))
        if isinstance(write, AppendLog):
            return self._scripts["APPEND"](
                keys=[keys.lease, keys.seq, keys.log, keys.events, keys.keys],
                args=[owner, write.seq, repr(write.at), write.body, write.key or ""],
                client=pipe)
        if isinstance(write, PutRoom):
            pipe.sadd(ROOM_INDEX, [write.name])
            return self._scripts["PUT_ROOM"](
                keys=[keys.lease, keys.room],
                args=[owner, write.app, repr(write.created_at), write.meta,
                      int(write.private), int(write.implicit)], client=pipe)
        if isinstance(write, DeleteRoom):
            pipe.srem(ROOM_INDEX, [write.name])
            return self._scripts["DELETE_ROOM"](
                keys=[keys.lease, *keys.all()], args=[owner], client=pipe)
        if isinstance(write, StoredSession):
            return self._scripts["PUT_SESSION"](
                keys=[keys.lease, keys.sessions], args=[owner, write.id, _encode_session(write)],
                client=pipe)
        return self._scripts["DROP_SESSION"](
            keys=[keys.lease, keys.sessions], args=[owner, write.id], client=pipe)

    async def _outcome(self, calls: list[tuple[Write, Awaitable[Any]]]) -> Exception | None:
        """Return the first failure among one job's scripts, or None when all succeeded."""
        for write, call in calls:
            try:
                await call
            except coredis.exceptions.ResponseError as exc:
                return _refusal(write, str(exc))
        return None

    # --- reading -----------------------------------------------------------------------------

    async def read_log(self, room: str, *, after: int | None = None,
                       before: int | None = None, limit: int = 50) -> list[LogEntry]:
        """Read a page of ``room``'s log from its stream (see ``Store.read_log``).

        Raises Unreachable when Redis does not answer.
        """
        if limit <= 0:
            return []
        key = RoomKeys(room).log
        high = f"({before}-0" if before is not None else "+"
        try:
            with trio.fail_after(self._timeout):
                if after is not None:
                    entries = await self._redis.xrange(key, f"({after}-0", high, count=limit)
                else:
                    entries = tuple(reversed(await self._redis.xrevrange(key, high, "-",
                                                                         count=limit)))
        except NO_ANSWER as exc:
            raise Unreachable(f"Redis: {exc or type(exc).__name__}") from None
        return [_entry(e) for e in entries]

    async def load_rooms(self, keys_since: float = 0.0) -> list[StoredRoom]:
        """Nothing at start: a node loads a room when it claims it (``load_room``)."""
        return []

    async def load_room(self, name: str, keys_since: float = 0.0
                        ) -> tuple[StoredRoom | None, list[StoredSession]]:
        """Return room ``name`` as Redis holds it (with its idempotency keys used since
        ``keys_since``, older ones forgotten), and its sessions; None for no such room."""
        keys = RoomKeys(name)
        with trio.fail_after(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                record_call = pipe.hgetall(keys.room)
                seq_call = pipe.get(keys.seq)
                sessions_call = pipe.hgetall(keys.sessions)
                keys_call = pipe.hgetall(keys.keys)
            record: dict[bytes, bytes] = await record_call
            seq = await seq_call
            stored: dict[bytes, bytes] = await sessions_call
            used: dict[bytes, bytes] = await keys_call
            uses, stale = [], []
            for key, value in used.items():
                seq_text, _, at_text = value.decode().partition(" ")
                if float(at_text) < keys_since:
                    stale.append(key)
                else:
                    uses.append(KeyUse(key.decode(), int(seq_text), float(at_text)))
            if stale:
                await self._redis.hdel(keys.keys, stale)
        if not record:
            return None, []
        room = _stored_room(name, record, seq, sorted(uses, key=lambda use: use.at))
        return room, [_decode_session(value) for value in stored.values()]

    async def list_rooms(self) -> list[tuple[StoredRoom, int]]:
        """Return every room of the cluster with its participants (sessions not hidden,
        live or away), in one round trip after the index. Raises Unreachable."""
        try:
            with trio.fail_after(self._timeout):
                names = sorted(n.decode() for n in await self._redis.smembers(ROOM_INDEX))
                async with self._redis.pipeline(transaction=False) as pipe:
                    calls = [(name, pipe.hgetall(RoomKeys(name).room),
                              pipe.get(RoomKeys(name).seq),
                              pipe.hvals(RoomKeys(name).sessions)) for name in names]
                rooms = []
                for name, record_call, seq_call, sessions_call in calls:
                    record: dict[bytes, bytes] = await record_call
                    if not record:
                        continue
                    seq = await seq_call
                    sessions = [_decode_session(v) for v in await sessions_call]
                    rooms.append((_stored_room(name, record, seq, []),
                                  sum(1 for session in sessions if not session.hidden)))
        except NO_ANSWER as exc:
            raise Unreachable(f"Redis: {exc or type(exc).__name__}") from None
        return rooms

def _stored_room(name: str, record: dict[bytes, bytes], seq: Any,
                 keys: list[KeyUse]) -> StoredRoom:
    return StoredRoom(
        name=name, app=record[b"app"].decode(), created_at=float(record[b"created_at"]),
        meta=record[b"meta"], last_seq=int(seq or 0), private=record.get(b"private") == b"1",
        implicit=record.get(b"implicit") == b"1", keys=keys)


def _room_of(write: Write) -> str:
    return write.name if isinstance(write, PutRoom | DeleteRoom) else write.room


def _refusal(write: Write, message: str) -> Exception:
    if message.startswith("FENCED"):
        return Fenced(_room_of(write))
    if message.startswith("SEQ"):
        return SeqRefused(_room_of(write), int(message.split()[1]))
    return StoreFailure(f"Redis refused a write: {message}")


def _entry(entry: Any) -> LogEntry:
    identifier = entry.identifier
    if isinstance(identifier, bytes):
        identifier = identifier.decode()
    fields = entry.field_values
    return LogEntry(seq=int(identifier.partition("-")[0]), at=float(fields[b"at"]),
                    body=fields[b"body"])
