"""Several nodes, one set of rooms: three real ``roomctl serve --redis`` and one real Redis.

Every test runs real daemons (subprocesses) on a real redis-server (``tests/redis_util``,
``appendonly yes``, ``appendfsync always``) with real WebSocket clients and the real CLI.
Which node owns a room is decided by who comes first: a client on node A that opens a
room nobody owns makes A its owner; clients on other nodes are then forwarded to A.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio_websocket

from tests.cluster_util import (
    Cluster,
    Node,
    Poster,
    check_log,
    client,
    eventually,
    history,
    running_cluster,
)
from tests.conftest import ROOT, WAIT

pytestmark = pytest.mark.timeout(300)

GRACE = "3"


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, "a", "b", "c", args=("--grace", GRACE)) as nodes:
        yield nodes


def roomctl(node: Node, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    # The suite's hermetic HOME and XDG directories (conftest), and this node.
    env = {**os.environ, "ROOMCTL_URL": node.http, "ROOMCTL_DATA_DIR": str(node.data_dir)}
    return subprocess.run([sys.executable, "-m", "roomctl", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def health(node: Node) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(node.http + "/healthz", timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def owner_of(cluster: Cluster, room: str) -> str:
    value = cluster.redis.cli("GET", f"{{r:{room}}}:lease")
    return value.rpartition(" ")[0]


# --- the same rooms everywhere ----------------------------------------------------------------


async def test_a_post_on_one_node_is_read_on_the_others(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in "abc")
    created = roomctl(a, "room", "create", "ops", "--topic", "deploys")
    assert created.returncode == 0, created.stderr
    posted = roomctl(a, "post", "ops", "deploy started")
    assert posted.returncode == 0, posted.stderr
    for node in (b, c):
        tail = roomctl(node, "tail", "ops", "--no-follow", "--json")
        assert tail.returncode == 0, tail.stderr
        [line] = [json.loads(line) for line in tail.stdout.splitlines()]
        assert (line["seq"], line["text"]) == (1, "deploy started")
    # Topic, the room list and a participant are the same seen from any node.
    async with client(b, "ops") as bob:
        welcome = await bob.hello("bob")
        assert welcome["room"]["meta"]["topic"] == "deploys"
        shown = json.loads(roomctl(c, "room", "show", "ops", "--json").stdout)
        assert [m["name"] for m in shown["members"]] == ["bob"]
        listed = json.loads(roomctl(b, "room", "list", "--json").stdout)
        assert [(r["name"], r["last_seq"]) for r in listed] == [("ops", 1)]
    assert await owner_of(cluster, "ops") == "a"


async def test_posters_on_three_nodes_make_one_log_without_gaps_or_duplicates(
        cluster: Cluster) -> None:
    per_node, acked = 120, {}
    async with client(cluster.nodes["a"], "busy") as first:
        await first.hello("first")  # a owns the room; b and c forward to it

        async def poster(name: str) -> None:
            node = cluster.nodes[name]
            async with client(node, "busy") as ws:
                welcome = await ws.hello(name, token=node.admin_token)  # no rate limit
                assert welcome["type"] == "welcome"
                for i in range(per_node):
                    text = f"{name}-{i}"
                    reply = await ws.request({"type": "send-message", "text": text,
                                              "key": text})
                    assert reply["type"] == "ok", reply
                    acked[text] = reply["seq"]

        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(poster, name)
    log = await history(cluster.nodes["b"], "busy")
    assert [m["seq"] for m in log] == list(range(1, 3 * per_node + 1))
    assert {m["text"]: m["seq"] for m in log} == acked
    for name in "abc":  # each poster's messages in the order it sent them
        mine = [int(m["text"].split("-")[1]) for m in log if m["text"].startswith(name)]
        assert mine == list(range(per_node))


async def test_a_client_dropped_on_one_node_resumes_its_session_on_another(
        cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in "abc")
    async with client(a, "call") as host:
        await host.hello("host")
        async with client(c, "call") as bob:
            await bob.hello("bob")
            with trio.fail_after(WAIT):
                async with client(b, "call") as alice:
                    welcome = await alice.hello("alice")
                    session, token = welcome["session_id"], welcome["resume_token"]
                    await bob.recv_type("participant-joined")
                    await alice.ws.aclose(code=4500)  # a network cut, as far as she knows
            live = await bob.recv_type("participant-updated")
            assert (live["participant"]["id"], live["participant"]["live"]) == (session, False)
            async with client(c, "call") as again:
                resumed = await again.hello(None, resume=token)
                assert resumed["type"] == "welcome", resumed
                assert (resumed["session_id"], resumed["resumed"]) == (session, True)
                back = await bob.recv_type("participant-updated", "participant-left",
                                           "participant-joined")
                assert back["type"] == "participant-updated" and back["participant"]["live"]
                await bob.no_frame(0.5)


async def test_a_grace_period_runs_out_on_the_owner_whoever_dropped(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in "abc")
    async with client(a, "brief") as owner_side:
        await owner_side.hello("first")
        async with client(c, "brief") as watcher:
            await watcher.hello("watcher")
            async with client(b, "brief") as leaver:
                session = (await leaver.hello("leaver"))["session_id"]
            with trio.fail_after(float(GRACE) + 5):
                left = await watcher.recv_type("participant-left")
            assert (left["participant_id"], left["reason"]) == (session, "timeout")


# --- when Redis is away -----------------------------------------------------------------------


async def test_redis_unreachable_is_an_error_and_healthz_says_so_until_it_returns(
        cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    async with client(a, "ops") as poster:
        await poster.hello("poster", token=a.admin_token)
        assert (await poster.request({"type": "send-message", "text": "one"}))["seq"] == 1
        cluster.redis.stop()
        reply = await poster.request({"type": "send-message", "text": "two", "key": "k2"},
                                     timeout=15)
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        assert reply["retry_after"] > 0
        status, body = await eventually(lambda: _degraded(b))
        assert status == 503 and body["redis"] == "unreachable"
        cluster.redis.start()
        await eventually(lambda: _healthy(b))
    # Clients come back (the room may have moved while Redis was away) and post again.
    async with client(b, "ops") as later:
        await later.hello("later", token=b.admin_token)
        reply = await later.request({"type": "send-message", "text": "two", "key": "k2"})
        assert reply["type"] == "ok", reply
    log = await history(a, "ops")
    assert [(m["seq"], m["text"]) for m in log] == [(1, "one"), (2, "two")]


def _metrics_text(node: Node) -> str:
    with urllib.request.urlopen(node.http + "/metrics", timeout=WAIT) as response:
        return str(response.read().decode())


async def _degraded(node: Node) -> tuple[int, dict[str, Any]] | None:
    status, body = health(node)
    return (status, body) if status == 503 else None


async def _healthy(node: Node) -> bool:
    return health(node)[0] == 200


def test_a_redis_that_does_not_fsync_every_write_stops_serve(tmp_path: pathlib.Path) -> None:
    from tests.redis_util import running_redis

    with running_redis(tmp_path / "lax", "--appendfsync", "everysec") as lax:
        out = subprocess.run(
            [sys.executable, "-m", "roomctl", "serve", "--port", "0", "--data-dir",
             str(tmp_path / "d"), "--redis", lax.url],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 1
        [line] = out.stderr.strip().splitlines()[-1:]
        assert line.startswith("roomctl serve: ") and "appendfsync everysec" in line
        errors = (tmp_path / "relaxed.log").open("w")
        relaxed = subprocess.Popen(
            [sys.executable, "-m", "roomctl", "serve", "--port", "0", "--data-dir",
             str(tmp_path / "d"), "--redis", lax.url, "--redis-durability", "relaxed"],
            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT)
        errors.close()
        try:
            assert relaxed.stdout is not None
            first = relaxed.stdout.readline()
            assert first.startswith("listening on "), \
                (first, (tmp_path / "relaxed.log").read_text())
        finally:
            relaxed.send_signal(signal.SIGTERM)
            try:
                relaxed.wait(timeout=30)
            except subprocess.TimeoutExpired:
                relaxed.kill()  # a hang on SIGTERM fails below, and leaves nothing behind
                relaxed.wait()
        assert relaxed.returncode == 0
        # The weaker durability it runs with is in its log, in words.
        assert "appendfsync everysec: a crash of Redis loses" in \
            (tmp_path / "relaxed.log").read_text()



# --- nodes that die, pause, or lose Redis --------------------------------------------------------

FAST = ("--grace", "10", "--redis-lease", "1")  # a dead owner's rooms move within ~1 s


@pytest.fixture
def fast_cluster(tmp_path: pathlib.Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, "a", "b", "c", args=FAST) as nodes:
        yield nodes


async def test_sigterm_of_the_owner_hands_its_rooms_over_at_once(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    async with client(a, "handover") as first:
        await first.hello("first")  # a owns the room
        posted = roomctl(b, "post", "handover", "before")
        assert posted.returncode == 0, posted.stderr
    assert await owner_of(cluster, "handover") == "a"
    cluster.kill("a", signal.SIGTERM)
    node_a = a.proc
    assert node_a is not None and node_a.returncode == 0, cluster.log_of("a")[-2000:]
    # Released, not left to lapse: nobody owns the room, a's heartbeat is gone, the
    # last batch was written, and Redis was never lost on the way out.
    assert cluster.redis.cli("EXISTS", "{r:handover}:lease") == "0"
    assert cluster.redis.cli("EXISTS", "{roomctl}:node:a") == "0"
    events = [json.loads(line) for line in cluster.log_of("a").splitlines()]
    stopped = [e for e in events if e.get("event") == "stopped"]
    assert stopped and stopped[-1]["flushed"] is True
    assert not [e for e in events if e["level"] in ("warning", "error")], events
    posted = roomctl(b, "post", "handover", "after")
    assert posted.returncode == 0, posted.stderr
    assert [m["text"] for m in await history(b, "handover")] == ["before", "after"]
    assert await owner_of(cluster, "handover") == "b"


async def test_kill_9_of_the_owner_during_a_post_storm_loses_nothing_acknowledged(
        fast_cluster: Cluster) -> None:
    cluster = fast_cluster
    a, b, c = (cluster.nodes[n] for n in "abc")
    async with client(a, "storm") as first:
        await first.hello("first")  # a owns the room
    posters = [Poster([b, c], "storm", "p1", 300), Poster([c, b], "storm", "p2", 300)]
    async with trio.open_nursery() as nursery:
        for poster in posters:
            nursery.start_soon(poster.run)
        with trio.fail_after(30):
            while sum(len(p.acked) for p in posters) < 100:
                await trio.sleep(0.01)
        cluster.kill("a")  # SIGKILL, mid-storm
    assert all(len(p.acked) == p.count for p in posters)
    assert await owner_of(cluster, "storm") in ("b", "c")
    check_log(await history(b, "storm"), posters)
    assert sum(p.reconnects for p in posters) >= 1  # the storm did go through the move


async def test_a_paused_owner_is_fenced_and_writes_nothing_when_it_wakes(
        fast_cluster: Cluster) -> None:
    cluster = fast_cluster
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    async with client(a, "pause") as sleeper:
        await sleeper.hello("sleeper", token=a.admin_token)
        assert (await sleeper.request({"type": "send-message", "text": "before"}))["seq"] == 1
        cluster.kill("a", signal.SIGSTOP)
        try:
            # While a sleeps past its lease, b takes the room over and it goes on.
            poster = Poster([b], "pause", "b", 20)
            await poster.run(deadline=30)
            assert await owner_of(cluster, "pause") == "b"
        finally:
            cluster.kill("a", signal.SIGCONT)
        # a wakes up still holding its client: what that client sends is not stored.
        with trio.fail_after(15):
            try:
                reply = await sleeper.request({"type": "send-message", "text": "stale"})
                assert reply["type"] == "error", reply
            except trio_websocket.ConnectionClosed as closed:
                assert closed.reason is not None and closed.reason.code == 4014
    log = await history(b, "pause")
    assert "stale" not in [m["text"] for m in log]
    check_log(log, [poster])
    assert log[0]["text"] == "before" and len(log) == 21


async def test_a_redis_restart_during_traffic_loses_nothing_and_tails_come_back(
        fast_cluster: Cluster) -> None:
    cluster = fast_cluster
    a, b, c = (cluster.nodes[n] for n in "abc")
    async with client(a, "flow") as first:
        await first.hello("first")
    seen: list[int] = []
    poster = Poster([b, c], "flow", "p", 200)

    async def tail_on_c() -> None:  # a live reader on another node, reconnecting by seq
        while len(seen) < poster.count:
            try:
                async with client(c, "flow") as reader:
                    welcome = await reader.hello(None, hidden=True, token=c.admin_token)
                    if welcome["type"] != "welcome":
                        await trio.sleep(0.2)
                        continue
                    page = await reader.request({"type": "get-messages",
                                                 "after": max(seen, default=0), "limit": 1000})
                    last = max(seen, default=0)
                    seen.extend(m["seq"] for m in page["messages"] if m["seq"] > last)
                    while len(seen) < poster.count:
                        frame = await reader.recv(timeout=30)
                        if frame["type"] == "message-posted" and \
                                frame["message"]["seq"] > max(seen, default=0):
                            seen.append(frame["message"]["seq"])
            except (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError, OSError,
                    trio.TooSlowError):  # a client that hears nothing reconnects
                await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poster.run, 120.0)
        nursery.start_soon(tail_on_c)
        with trio.fail_after(30):
            while len(poster.acked) < 60:
                await trio.sleep(0.01)
        cluster.redis.stop()
        await trio.sleep(1.5)
        cluster.redis.start()
    check_log(await history(b, "flow"), [poster])
    assert seen == list(range(1, poster.count + 1))  # the reader missed nothing, twice nothing


CLUSTER_ROUNDS = int(os.environ.get("CLUSTER_CRASH_ROUNDS", "40"))


async def test_owners_killed_round_after_round_lose_nothing_acknowledged(
        fast_cluster: Cluster) -> None:
    """SIGKILL the room's owner, again and again, while posters go on through whichever
    nodes are up; each killed node comes back for the next round. The log must hold every
    acknowledged message at its seq, with no gap and no message twice."""
    cluster = fast_cluster
    nodes = [cluster.nodes[n] for n in "abc"]
    # The posters post until the rounds are over, however fast this machine is.
    posters = [Poster(nodes, "rounds", f"p{i}", 10**9, window=4) for i in range(2)]
    kills = 0

    async def acked() -> int:
        return sum(len(p.acked) for p in posters)

    async with trio.open_nursery() as nursery:
        for poster in posters:
            nursery.start_soon(poster.run, 600.0)
        for round_ in range(CLUSTER_ROUNDS):
            before = await acked()
            await _progress(acked, before + 20, f"round {round_}, before the kill", posters)
            owner = await owner_of(cluster, "rounds")
            cluster.kill(owner)
            kills += 1
            after = await acked()
            await _progress(acked, after + 5, f"round {round_}, {owner} killed", posters)
            await trio.to_thread.run_sync(cluster.start, owner)
        for poster in posters:
            poster.count = len(poster.acked)  # let them stop: what is acked is the test
        nursery.cancel_scope.cancel()
    log = await history(cluster.nodes["a"], "rounds")
    for poster in posters:  # what was sent but never acknowledged may be stored: fine
        poster.acked = {t: s for t, s in poster.acked.items()}
    check_log(log, posters)
    total = await acked()
    print(f"\n{kills} owners SIGKILLed; {total} messages acknowledged, all stored once, "
          f"no gap; {len(log) - total} more stored whose ok was lost")
    assert kills == CLUSTER_ROUNDS


async def _more(count: Any, at_least: int) -> bool:
    return bool(await count() >= at_least)


async def _progress(count: Any, at_least: int, when: str, posters: list[Poster]) -> None:
    try:
        await eventually(lambda: _more(count, at_least), timeout=60)
    except trio.TooSlowError:
        state = [(p.name, len(p.acked), p.reconnects, p.refusals, p.where) for p in posters]
        raise AssertionError(f"{when}: no progress in 60 s; posters {state}") from None


# --- calls across nodes -----------------------------------------------------------------------


def test_two_joins_on_two_nodes_exchange_video_through_a_room_owned_by_a_third(
        cluster: Cluster, tmp_path: pathlib.Path) -> None:
    from tests.join_util import LOOPBACK_ONLY, TEST_MEDIA, Joiner, wait_until

    a, b, c = (cluster.nodes[n] for n in "abc")
    created = roomctl(c, "room", "create", "video")
    assert created.returncode == 0, created.stderr
    assert trio.run(owner_of, cluster, "video") == "c"
    common = (*TEST_MEDIA, *LOOPBACK_ONLY, "--stats-interval", "1")
    alice = Joiner(a, "video", "alice", *common, stderr_path=tmp_path / "alice.err")
    bob = Joiner(b, "video", "bob", *common, stderr_path=tmp_path / "bob.err")
    try:
        ids = {"alice": alice.session, "bob": bob.session}
        for me, other in ((alice, "bob"), (bob, "alice")):
            me.wait_event("first-frame", peer=ids[other], kind="video")
            me.wait_event("first-frame", peer=ids[other], kind="audio")
            wait_until(lambda me=me, other=other: (s := me.last_stats(ids[other])) is not None
                       and s["video_frames_in"] >= 20, f"{me.name} getting video")
        assert not alice.of("peer-failed") and not bob.of("peer-failed")
        assert trio.run(owner_of, cluster, "video") == "c"  # nothing moved: c relayed
    finally:
        for joiner in (alice, bob):
            if joiner.proc.poll() is None:
                assert joiner.stop() == 0, joiner.stderr()


async def test_the_http_api_on_any_node_reaches_the_room_where_its_owner_is(
        cluster: Cluster) -> None:
    # The HTTP API's requests are connections of the protocol like a WebSocket's: on a
    # node that does not own the room they are forwarded to its owner.
    from types import SimpleNamespace

    from tests.http_util import call, open_events

    a, b, c = (cluster.nodes[n] for n in "abc")
    at = {n.name: SimpleNamespace(host="127.0.0.1", port=n.port) for n in (a, b, c)}
    admin = a.admin_token
    created = await call(at["a"], "POST", "/v1/rooms", token=admin, json_body={"name": "ops"})
    assert created.status == 201, created.body
    async with client(a, "ops") as alice:  # a owns the room from here on
        await alice.hello("alice")
        assert await owner_of(cluster, "ops") == "a"
        stream = await open_events(at["c"], "ops", token=admin)
        try:
            assert stream.status == 200
            key = {"Idempotency-Key": "deploy-7"}
            first = await call(at["b"], "POST", "/v1/rooms/ops/messages", token=admin,
                               text="deploy started\ndeploy done", headers=key)
            assert first.status == 201, first.body
            again = await call(at["c"], "POST", "/v1/rooms/ops/messages", token=admin,
                               text="deploy started\ndeploy done", headers=key)
            assert again.status == 201, again.body
            assert again.json() == first.json()
            events = [await stream.next(), await stream.next()]
            assert [(e.id, e.json()["text"]) for e in events if e] == [
                ("1", "deploy started"), ("2", "deploy done")]
        finally:
            stream.close()
        page = await call(at["b"], "GET", "/v1/rooms/ops/messages?after=0", token=admin)
        assert [m["text"] for m in page.json()["messages"]] == ["deploy started",
                                                                "deploy done"]
        changed = await call(at["c"], "PATCH", "/v1/rooms/ops", token=admin,
                             json_body={"topic": "deploys"})
        assert changed.status == 200, changed.body
        shown = await call(at["b"], "GET", "/v1/rooms/ops", token=admin)
        assert shown.json()["room"]["meta"]["topic"] == "deploys"
        people = await call(at["c"], "GET", "/v1/rooms/ops/participants", token=admin)
        assert [p["meta"]["name"] for p in people.json()["participants"]] == ["alice"]
        # The cluster's room list pages as one node's does.
        for name in ("ci", "qa"):
            await call(at["b"], "POST", "/v1/rooms", token=admin, json_body={"name": name})
        listed = await call(at["c"], "GET", "/v1/rooms?limit=2", token=admin)
        rest = await call(at["a"], "GET", f"/v1/rooms?limit=2&after={listed.json()['next']}",
                          token=admin)
        assert [r["name"] for r in listed.json()["rooms"]] == ["ci", "ops"]
        assert ([r["name"] for r in rest.json()["rooms"]], rest.json()["next"]) == (["qa"], None)
    # Each node's metrics say which node they are.
    from prometheus_client.parser import text_string_to_metric_families

    for node in (a, b):
        text = await trio.to_thread.run_sync(_metrics_text, node)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        [info] = families["roomctl_build_info"].samples
        assert info.labels["node"] == node.name, info
        # and so do its log lines (JSON: the log is a file), one name for both.
        lines = [json.loads(line) for line in node.log.read_text().splitlines()
                 if line.startswith("{")]
        assert lines and {line["node"] for line in lines} == {node.name}
    assert await owner_of(cluster, "ops") == "a"


async def test_post_lines_waits_out_a_redis_outage_and_stores_each_line_once(
        cluster: Cluster) -> None:
    # While Redis is away the owner answers "unavailable"; roomctl post sends those lines
    # again (with their keys) until it is back, and exits 0 with every line stored once.
    a = cluster.nodes["a"]
    assert roomctl(a, "room", "create", "ops").returncode == 0
    env = {**os.environ, "ROOMCTL_URL": a.http, "ROOMCTL_DATA_DIR": str(a.data_dir)}
    post = await trio.to_thread.run_sync(lambda: subprocess.Popen(
        [sys.executable, "-m", "roomctl", "post", "ops", "--lines", "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env=env))
    assert post.stdin is not None and post.stdout is not None
    try:
        post.stdin.write("before\n")
        post.stdin.flush()
        assert json.loads(await trio.to_thread.run_sync(post.stdout.readline))["seq"] == 1
        cluster.redis.stop()
        post.stdin.write("during 1\nduring 2\n")
        post.stdin.flush()
        await eventually(lambda: _degraded(a))
        await trio.sleep(1)  # the lines were answered "unavailable" at least once
        cluster.redis.start()
        post.stdin.write("after\n")
        post.stdin.close()
        assert post.stderr is not None
        with trio.fail_after(90):
            out, err = await trio.to_thread.run_sync(
                lambda: (post.stdout.read(), post.stderr.read()))  # type: ignore[union-attr]
        post.wait(timeout=WAIT)
    finally:
        if post.poll() is None:
            post.kill()
            post.wait()
    assert post.returncode == 0, err
    assert [json.loads(line)["line"] for line in out.splitlines()] == [2, 3, 4], err
    log = await history(a, "ops")
    assert [m["text"] for m in log] == ["before", "during 1", "during 2", "after"]


async def test_max_rooms_counts_the_rooms_of_every_node(tmp_path: pathlib.Path) -> None:
    # --max-rooms holds for the cluster: two rooms made on two nodes fill a limit of 2,
    # though each node has loaded one. (Counted from each node's listing of the cluster's
    # rooms, refreshed every 2 s: hence the wait.)
    with running_cluster(tmp_path, "a", "b", args=("--max-rooms", "2")) as cluster:
        a, b = cluster.nodes["a"], cluster.nodes["b"]
        assert roomctl(a, "room", "create", "one").returncode == 0
        assert roomctl(b, "room", "create", "two").returncode == 0

        async def both_listed() -> bool:
            listed = roomctl(a, "room", "list", "--json")
            return len(json.loads(listed.stdout)) == 2

        await eventually(both_listed)
        await trio.sleep(2.5)  # a's own refresh of the listing has run since
        third = roomctl(a, "room", "create", "three")
        assert third.returncode == 1, third.stderr
        assert "limit-reached" in third.stderr or "maximum of 2 rooms" in third.stderr, \
            third.stderr
        assert roomctl(b, "room", "delete", "two", "--yes").returncode == 0
        await trio.sleep(2.5)
        assert roomctl(a, "room", "create", "three").returncode == 0
