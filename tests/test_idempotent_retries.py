"""``roomctl post --lines`` against a daemon killed with SIGKILL again and again.

A real ``roomctl post ops --lines --json`` reads a steady stream of numbered lines on its
stdin while the daemon under it (a real ``roomctl serve`` on a fixed port) is killed with
SIGKILL at random moments and started again. After each kill the test reads the SQLite
file itself: the lines stored that the CLI had not seen acknowledged are those committed
whose ``ok`` died with the daemon. The CLI sends them again after reconnecting (it cannot
know), with the idempotency key each had the first time, and the daemon answers with the
first seq instead of storing them twice. What must hold at the end:

* the CLI exits 0 and acknowledges every line once;
* the room holds every line exactly once, in input order, at seqs 1..N;
* some lines were committed but not acknowledged at a kill (else nothing was tested).

The seed of the random moments is printed; ``KILL_SEED=n`` repeats a run, ``KILL_ROUNDS``
sets the number of kills.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import trio

from protocol.chat import ChatMessage
from tests.conftest import ROOT, ServeProcess, free_port
from tests.http_util import call

ROUNDS = int(os.environ.get("KILL_ROUNDS", "8"))
BATCH = 40  # lines written to the CLI's stdin at once
PAUSE = 0.01  # seconds between batches: a steady stream, some in flight at every kill


@dataclass
class Run:
    acked: dict[int, int] = field(default_factory=dict)  # line -> seq, as the CLI printed
    twice: list[int] = field(default_factory=list)  # lines the CLI acknowledged again
    written: int = 0
    rounds: list[tuple[int, int, int]] = field(default_factory=list)  # stored, acked, unacked


def stored_lines(db: pathlib.Path) -> list[tuple[int, str]]:
    """The (seq, text) of every message of room ops, from the SQLite file itself."""
    decode = msgspec.msgpack.Decoder(ChatMessage).decode
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, body FROM log WHERE room = 'ops' ORDER BY seq")
        return [(seq, decode(body).text) for seq, body in rows]


async def test_every_line_is_stored_exactly_once_across_sigkills_between_commit_and_ack(
        serve_process: Callable[..., ServeProcess], tmp_path: pathlib.Path) -> None:
    seed = int(os.environ.get("KILL_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    print(f"\nKILL_SEED={seed}")
    port, data_dir = free_port(), tmp_path / "data"
    args = ("--port", str(port), "--log-level", "warning")
    sp = serve_process(*args, data_dir=data_dir)
    token = (data_dir / "admin-token").read_text().strip()
    assert (await call(sp, "POST", "/v1/rooms", token=token, json_body={"name": "ops"})
            ).status == 201
    env = {**os.environ, "ROOMCTL_URL": f"http://127.0.0.1:{port}",
           "ROOMCTL_DATA_DIR": str(data_dir)}
    cli = await trio.lowlevel.open_process(
        [sys.executable, "-m", "roomctl", "post", "ops", "--lines", "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        cwd=ROOT)
    assert cli.stdin is not None and cli.stdout is not None and cli.stderr is not None
    run = Run()
    first_ack = trio.Event()
    errors = bytearray()

    async def feed() -> None:
        assert cli.stdin is not None
        while True:
            first = run.written + 1
            # Whole batches only: a cancelled write must not leave half a line behind.
            with trio.CancelScope(shield=True):
                await cli.stdin.send_all("".join(
                    f"line {n}\n" for n in range(first, first + BATCH)).encode())
                run.written += BATCH
            await trio.sleep(PAUSE)

    async def read_acks() -> None:
        assert cli.stdout is not None
        pending = b""
        while chunk := await cli.stdout.receive_some():
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                ack = json.loads(raw)
                if ack["line"] in run.acked:
                    run.twice.append(ack["line"])
                run.acked[ack["line"]] = ack["seq"]
            first_ack.set()

    async def read_errors() -> None:
        assert cli.stderr is not None
        while chunk := await cli.stderr.receive_some():
            errors.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_acks)
            nursery.start_soon(read_errors)
            async with trio.open_nursery() as feeding:
                feeding.start_soon(feed)
                for number in range(ROUNDS):
                    with trio.fail_after(60):
                        await first_ack.wait()  # the CLI is (again) posting to this daemon
                    await trio.sleep(rng.uniform(0.05, 0.5))
                    os.kill(sp.proc.pid, signal.SIGKILL)
                    await trio.to_thread.run_sync(lambda sp=sp: sp.proc.wait(timeout=10))
                    await trio.sleep(0.3)  # the CLI prints the acks it had received
                    stored = {int(text.split()[1])
                              for _, text in stored_lines(data_dir / "roomctl.db")}
                    acked = set(run.acked)
                    unacked = len(stored - acked)
                    run.rounds.append((len(stored), len(acked), unacked))
                    print(f"kill {number + 1}: {len(stored)} lines stored, {len(acked)} "
                          f"acknowledged to the CLI, {unacked} committed without an ok")
                    first_ack = trio.Event()
                    sp = serve_process(*args, data_dir=data_dir)
                feeding.cancel_scope.cancel()  # no more input: the CLI posts the rest, exits
            await cli.stdin.aclose()
            with trio.fail_after(90):
                code = await cli.wait()
        assert code == 0, errors.decode()
    finally:
        if cli.returncode is None:
            cli.kill()
    sp.proc.send_signal(signal.SIGTERM)
    await trio.to_thread.run_sync(lambda: sp.proc.wait(timeout=10))

    history = stored_lines(data_dir / "roomctl.db")
    texts = [text for _, text in history]
    assert [seq for seq, _ in history] == list(range(1, len(history) + 1))
    assert texts == [f"line {n}" for n in range(1, run.written + 1)], \
        f"a line lost, doubled or out of order (KILL_SEED={seed})"
    assert sorted(run.acked) == list(range(1, run.written + 1))
    assert run.twice == []
    assert all(run.acked[n] == n for n in run.acked)  # each ok named the line's one seq
    retried = sum(unacked for _, _, unacked in run.rounds)
    print(f"{ROUNDS} SIGKILLs, {run.written} lines: each stored once, in order; {retried} "
          f"were committed without an ok at a kill and answered with their first seq when "
          f"sent again")
    assert retried > 0, f"no kill fell between a commit and its ok (KILL_SEED={seed})"
