"""Crash safety: SIGKILL at random moments while a client posts as fast as it can.

Each round starts ``roomctl serve`` on the same data directory, opens a real WebSocket,
pipelines ``send-message`` requests (up to ``WINDOW`` unacknowledged) and records every
acknowledgement, then kills the daemon with SIGKILL at a random moment. A last daemon
reads the whole history back. What must hold (a message is acknowledged only after its
transaction commits, and the store commits in order):

* every acknowledged message is stored, at the sequence number its ``ok`` gave;
* the stored sequence numbers are 1..N with no gap and no message twice;
* of each round's messages, those stored are a prefix of those sent, in order (a message
  sent after one that was lost cannot have been kept).

The seed of the random moments is printed; ``CRASH_SEED=n`` repeats a run. Together with
the cluster's rounds (``tests/test_cluster.py``, a room's owner killed while clients post
through the other nodes) the suite kills 100 daemons this way: ``CRASH_ROUNDS`` and
``CLUSTER_CRASH_ROUNDS`` change the counts.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio_websocket

from tests.conftest import WAIT, ServeProcess

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "60"))
WINDOW = 64  # messages in flight
TEXT = "x" * 200  # a realistic chat line, so batches hold some bytes


@dataclass
class Round:
    number: int
    sent: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # text -> seq
    kill_after: float = 0.0


async def post_until_killed(sp: ServeProcess, round_: Round) -> None:
    """Post as fast as the window allows; SIGKILL the daemon ``kill_after`` s after the
    first acknowledgement; return once the connection is gone."""
    in_flight = trio.Semaphore(WINDOW)
    first_ack = trio.Event()

    async def send(ws: trio_websocket.WebSocketConnection) -> None:
        i = 0
        while True:
            await in_flight.acquire()
            text = f"r{round_.number}-{i} {TEXT}"
            round_.sent.append(text)
            await ws.send_message(json.dumps(
                {"type": "send-message", "text": text, "ref": str(i)}))
            i += 1

    async def receive(ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            frame: dict[str, Any] = json.loads(await ws.get_message())
            if frame["type"] == "ok":
                round_.acked[round_.sent[int(frame["ref"])]] = frame["seq"]
                in_flight.release()
                first_ack.set()
            elif frame["type"] == "error":
                raise AssertionError(f"the daemon refused a message: {frame}")

    async def kill() -> None:
        with trio.fail_after(WAIT):
            await first_ack.wait()
        await trio.sleep(round_.kill_after)
        os.kill(sp.proc.pid, signal.SIGKILL)

    try:
        async with trio_websocket.open_websocket_url(
                sp.url + "/v1/rooms/crash", subprotocols=["roomctl.v1"],
                connect_timeout=WAIT, disconnect_timeout=1) as ws:
            await ws.send_message(json.dumps({"type": "hello", "name": "poster", "ref": "h"}))
            with trio.fail_after(WAIT):
                welcome = json.loads(await ws.get_message())
            assert welcome["type"] == "welcome", welcome
            with trio.fail_after(WAIT * 3):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(kill)
                    nursery.start_soon(send, ws)
                    nursery.start_soon(receive, ws)
    except* (trio_websocket.ConnectionClosed, trio_websocket.DisconnectionTimeout,
             trio.BrokenResourceError):
        pass  # the daemon is gone: that is the point


async def read_history(sp: ServeProcess) -> list[dict[str, Any]]:
    stored: list[dict[str, Any]] = []
    async with trio_websocket.open_websocket_url(
            sp.url + "/v1/rooms/crash", connect_timeout=WAIT, disconnect_timeout=WAIT) as ws:
        await ws.send_message(json.dumps({"type": "hello", "name": "reader", "hidden": True,
                                          "create": False, "ref": "h"}))
        with trio.fail_after(WAIT * 3):
            assert json.loads(await ws.get_message())["type"] == "welcome"
            while True:
                after = stored[-1]["seq"] if stored else 0
                await ws.send_message(json.dumps({"type": "get-messages", "after": after,
                                                  "limit": 1000, "ref": f"g{after}"}))
                while (page := json.loads(await ws.get_message())).get("ref") != f"g{after}":
                    pass
                stored += page["messages"]
                if not page["has_more"]:
                    return stored


async def test_every_acknowledged_message_survives_sigkill_at_random_moments(
        serve_process: Callable[..., ServeProcess], tmp_path: pathlib.Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    print(f"\nCRASH_SEED={seed}")
    data_dir = tmp_path / "crash"
    args = ("--log-level", "warning", "--rate-limit", "0")
    rounds: list[Round] = []
    for number in range(ROUNDS):
        round_ = Round(number, kill_after=rng.uniform(0.0, 0.3))
        sp = serve_process(*args, data_dir=data_dir)
        await post_until_killed(sp, round_)
        code = await trio.to_thread.run_sync(lambda sp=sp: sp.proc.wait(timeout=WAIT))
        assert code == -signal.SIGKILL
        rounds.append(round_)
        print(f"round {number}: killed {round_.kill_after * 1000:.0f} ms after the first ack; "
              f"{len(round_.sent)} sent, {len(round_.acked)} acknowledged")

    stored = await read_history(serve_process(*args, data_dir=data_dir))
    seqs = [m["seq"] for m in stored]
    texts = [m["text"] for m in stored]
    assert seqs == list(range(1, len(seqs) + 1)), f"gaps in the sequence (CRASH_SEED={seed})"
    assert len(set(texts)) == len(texts), f"a message was stored twice (CRASH_SEED={seed})"
    at_seq = dict(zip(seqs, texts, strict=True))
    lost = []
    for round_ in rounds:
        lost += [text[:12] for text, seq in round_.acked.items() if at_seq.get(seq) != text]
        kept = [t for t in texts if t.startswith(f"r{round_.number}-")]
        assert kept == round_.sent[:len(kept)], \
            f"round {round_.number}: stored messages are not a prefix of those sent"
        assert len(kept) >= len(round_.acked)
    assert lost == [], f"acknowledged messages lost (CRASH_SEED={seed}): {lost}"
    acked = sum(len(r.acked) for r in rounds)
    unacked_kept = len(stored) - acked
    print(f"{ROUNDS} SIGKILLs: {acked} acknowledged, all stored; {unacked_kept} more were "
          f"committed but their ok was lost with the daemon; none lost, none twice, no gaps")
    assert acked >= ROUNDS  # every round got some through
