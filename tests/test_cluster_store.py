"""The Redis store of several nodes, against a real redis-server: fenced, gap-free appends.

Each test starts its own redis-server (``tests/redis_util``) and drives the pieces the
daemon uses (the scripts, ``RedisWriter``, leases) directly.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio

from daemon.cluster import scripts
from daemon.cluster.keys import RoomKeys
from daemon.cluster.redis import RedisSetupError, check_durability, client
from daemon.cluster.store import Fenced, RedisWriter, SeqRefused, Unreachable
from daemon.core.records import AppendLog, DeleteRoom, PutRoom, StoredSession
from tests.redis_util import RedisServer, running_redis

NODE = "a"


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Any:
    with running_redis(tmp_path / "redis") as server:
        yield server


@asynccontextmanager
async def writer_for(server: RedisServer, owners: dict[str, str]) -> AsyncIterator[RedisWriter]:
    fenced: list[str] = []
    redis = client(server.url)
    async with redis:
        writer = RedisWriter(redis, owner_of=owners.get, on_fenced=fenced.append, timeout=3)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.fenced = fenced  # type: ignore[attr-defined]
            yield writer
            await writer.aclose()


async def claim(server: RedisServer, room: str, node: str = NODE, ttl_ms: int = 10_000) -> str:
    redis = client(server.url)
    async with redis:
        keys = RoomKeys(room)
        won, owner = await redis.register_script(scripts.CLAIM)(
            keys=[keys.lease, keys.epoch], args=[node, ttl_ms])
    assert won == 1, owner
    return owner.decode() if isinstance(owner, bytes) else str(owner)


async def commit_all(writer: RedisWriter, *jobs: tuple[Any, ...]) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = [None] * len(jobs)
    done = trio.Event()
    left = [len(jobs)]

    def finisher(index: int) -> Any:
        def on_done(exc: BaseException | None) -> None:
            outcomes[index] = exc
            left[0] -= 1
            if not left[0]:
                done.set()
        return on_done

    for index, writes in enumerate(jobs):
        writer.submit_nowait(writes, finisher(index))
    with trio.fail_after(10):
        await done.wait()
    return outcomes


def append(room: str, seq: int, text: str = "m") -> AppendLog:
    return AppendLog(room=room, seq=seq, at=1000.0 + seq, body=text.encode())


async def test_appends_are_gap_free_and_read_back_by_seq(redis_server: RedisServer) -> None:
    owner = await claim(redis_server, "ops")
    async with writer_for(redis_server, {"ops": owner}) as writer:
        room = PutRoom(name="ops", app="chat", created_at=1000.0, meta=b"{}")
        assert await commit_all(writer, (room,)) == [None]
        outcomes = await commit_all(writer, *((append("ops", n, f"m{n}"),) for n in range(1, 51)))
        assert outcomes == [None] * 50
        page = await writer.read_log("ops", after=10, limit=5)
        assert [e.seq for e in page] == [11, 12, 13, 14, 15] and page[0].body == b"m11"
        last = await writer.read_log("ops", limit=3)
        assert [e.seq for e in last] == [48, 49, 50]
        before = await writer.read_log("ops", before=5, limit=10)
        assert [e.seq for e in before] == [1, 2, 3, 4]
        stored, sessions = await writer.load_room("ops")
        assert stored is not None and stored.last_seq == 50 and sessions == []
        assert [(r.name, n) for r, n in await writer.list_rooms()] == [("ops", 0)]


async def test_an_append_out_of_sequence_is_refused_with_the_last_seq(
        redis_server: RedisServer) -> None:
    owner = await claim(redis_server, "ops")
    async with writer_for(redis_server, {"ops": owner}) as writer:
        assert await commit_all(writer, (append("ops", 1),)) == [None]
        gap, duplicate = await commit_all(writer, (append("ops", 3),), (append("ops", 1),))
        assert isinstance(gap, SeqRefused) and gap.committed_seq == 1
        assert isinstance(duplicate, SeqRefused) and duplicate.committed_seq == 1
        assert [e.seq for e in await writer.read_log("ops", after=0)] == [1]


async def test_a_node_that_lost_its_lease_writes_nothing(redis_server: RedisServer) -> None:
    old = await claim(redis_server, "ops", ttl_ms=200)
    await trio.sleep(0.4)  # the lease lapses: as after a SIGSTOP longer than its time
    new = await claim(redis_server, "ops", node="b")
    assert old.split()[1] == "1" and new == "b 2"  # the epoch only grows
    async with writer_for(redis_server, {"ops": old}) as stale:
        (refused,) = await commit_all(stale, (append("ops", 1),))
        assert isinstance(refused, Fenced) and stale.fenced == ["ops"]  # type: ignore[attr-defined]
    async with writer_for(redis_server, {"ops": new}) as owner:
        assert await commit_all(owner, (append("ops", 1),)) == [None]
        # A node that does not even think it owns the room writes nothing either.
    async with writer_for(redis_server, {}) as stranger:
        (refused,) = await commit_all(stranger, (DeleteRoom(name="ops"),))
        assert isinstance(refused, Fenced)
    assert redis_server.cli("GET", RoomKeys("ops").seq) == "1"


async def test_sessions_are_kept_for_the_next_owner(redis_server: RedisServer) -> None:
    owner = await claim(redis_server, "ops")
    session = StoredSession(room="ops", id="s1", resume_token="t", hidden=False, joined_at=1.0,
                            meta=msgspec.msgpack.encode({"name": "alice"}), grants=["join"],
                            in_call=True, peers=["s2"])
    async with writer_for(redis_server, {"ops": owner}) as writer:
        room = PutRoom(name="ops", app="chat", created_at=1.0, meta=b"{}", private=True)
        assert await commit_all(writer, (room,), (session,)) == [None, None]
        stored, sessions = await writer.load_room("ops")
        assert stored is not None and stored.private and sessions == [session]


async def test_redis_gone_fails_the_writes_and_then_they_work_again(
        redis_server: RedisServer) -> None:
    owner = await claim(redis_server, "ops")
    async with writer_for(redis_server, {"ops": owner}) as writer:
        assert await commit_all(writer, (append("ops", 1),)) == [None]
        redis_server.stop()
        (failed,) = await commit_all(writer, (append("ops", 2),))
        assert isinstance(failed, Unreachable) and failed.code == "unavailable"
        with pytest.raises(Unreachable):
            await writer.read_log("ops", after=0)
        redis_server.start()  # same files: the acknowledged append is still there
        assert await commit_all(writer, (append("ops", 2),)) == [None]
        assert [e.seq for e in await writer.read_log("ops", after=0)] == [1, 2]


async def test_a_redis_that_does_not_fsync_every_write_is_refused(tmp_path: pathlib.Path) -> None:
    with running_redis(tmp_path / "lax", "--appendfsync", "everysec") as lax:
        redis = client(lax.url)
        async with redis:
            with pytest.raises(RedisSetupError, match="appendfsync everysec"):
                await check_durability(redis, lax.url, relaxed=False)
            await check_durability(redis, lax.url, relaxed=True)
    with running_redis(tmp_path / "none", "--appendonly", "no") as none:
        redis = client(none.url)
        async with redis:
            with pytest.raises(RedisSetupError, match="appendonly no"):
                await check_durability(redis, none.url, relaxed=False)


async def test_one_owner_at_a_time_and_a_lost_lease_is_reported(
        redis_server: RedisServer) -> None:
    from daemon.cluster.ownership import Ownership

    lost: list[str] = []
    async with client(redis_server.url) as redis_a, client(redis_server.url) as redis_b:
        a = Ownership(redis_a, "a", ttl=0.6)
        b = Ownership(redis_b, "b", ttl=0.6)
        assert await a.claim("ops") is None and a.owner_of("ops") == "a 1"
        assert await b.claim("ops") == "a" and b.owner_of("ops") is None
        assert await b.holder("ops") == "a"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run, lost.append)
            await trio.sleep(1.5)  # renewed twice over: still a's
            assert await b.claim("ops") == "a" and lost == []
            # Someone takes the lease from under a (as after a pause past its expiry).
            redis_server.cli("SET", RoomKeys("ops").lease, "b 9", "PX", "5000")
            with trio.fail_after(3):
                while not lost:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert lost == ["ops"] and a.owner_of("ops") is None
        await b.release("ops")  # b never owned it: nothing happens
        assert await a.holder("ops") == "b"
