"""Soak: churn connections through one `roomctl serve` and watch its memory.

    ulimit -n 20000
    .venv/bin/python tests/bench/soak.py [--total 100000] [--wave 1000] [--rooms 101]

Starts `roomctl serve --memory --grace 1` (no rate or per-address limits), then, wave
after wave, opens ``--wave`` WebSocket connections to the same ``--rooms`` rooms (each
says hello and joins the call), lets them sit, and ends them: half leave (`leave`, then a
close frame), half just drop their socket, so their sessions wait out the 1 s grace.
After each wave, once its connections are gone and their graces expired, it reads the
daemon's RSS. Prints a JSON line per wave on stderr (progress) and a summary on stdout:
RSS at the start (after the first wave), the middle and the end, and whether the end is
within 10 % of the middle. A daemon that leaves something behind per connection grows
linearly here. Not a test: a measurement, for tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import trio

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAD = (b"GET /v1/rooms/%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
CLOSE_1000 = bytes((0x88, 0x82)) + b"\0\0\0\0" + b"\x03\xe8"


def text(payload: bytes) -> bytes:
    """A masked client text frame (an all-zero mask leaves the payload as it is)."""
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def client(host: str, port: int, n: int, rooms: int, opened: trio.Event,
                 go: trio.Event, counter: list[int], wave: int,
                 opening: trio.CapacityLimiter) -> None:
    async with opening:  # paces the opening only
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(HEAD % b"soak-%d" % (n % rooms)
                              + text(b'{"type":"hello","name":"s%d"}' % n)
                              + text(b'{"type":"join"}'))
        data = b""
        while b'"welcome"' not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"connection {n} closed before its welcome")
            data += chunk
    async with stream:
        counter[0] += 1
        if counter[0] == wave:
            opened.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, stream)  # participant and peer updates keep coming
            await go.wait()
            if n % 2:
                await stream.send_all(text(b'{"type":"leave"}') + CLOSE_1000)
            nursery.cancel_scope.cancel()


async def drain(stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass


async def churn(args: argparse.Namespace, host: str, port: int, pid: int) -> dict[str, object]:
    samples: list[tuple[int, int]] = []  # (connections so far, RSS KiB)
    started = time.monotonic()
    waves = args.total // args.wave
    for index in range(waves):
        opened, go, counter = trio.Event(), trio.Event(), [0]
        opening = trio.CapacityLimiter(args.concurrency)
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for n in range(args.wave):
                    nursery.start_soon(client, host, port, index * args.wave + n, args.rooms,
                                       opened, go, counter, args.wave, opening)
                await opened.wait()
                go.set()
        await trio.sleep(args.grace + 0.5)  # dropped sessions wait out their grace
        done = (index + 1) * args.wave
        samples.append((done, rss_kb(pid)))
        print(json.dumps({"connections": done, "rss_kb": samples[-1][1],
                          "elapsed_s": round(time.monotonic() - started, 1)}),
              file=sys.stderr, flush=True)
    start, middle, end = samples[0], samples[len(samples) // 2 - 1], samples[-1]
    return {
        "connections": args.total, "wave": args.wave, "rooms": args.rooms,
        "seconds": round(time.monotonic() - started, 1),
        "rss_kb": {"start": start[1], "middle": middle[1], "end": end[1]},
        "at_connections": {"start": start[0], "middle": middle[0], "end": end[0]},
        "end_vs_middle_pct": round(100 * (end[1] - middle[1]) / middle[1], 1),
        "ok": end[1] <= middle[1] * 1.10,
        "bytes_per_connection_middle_to_end": round(
            (end[1] - middle[1]) * 1024 / max(1, end[0] - middle[0]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--wave", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=101)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=200, help="connections opening at once")
    parser.add_argument("--serve", default=f"{sys.executable} -m roomctl serve",
                        help="the command that starts the daemon (options are appended)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        command = [*args.serve.split(), "--memory", "--data-dir", tmp, "--port", "0",
                   "--grace", str(args.grace), "--rate-limit", "0",
                   "--max-connections-per-address", "0", "--max-participants", "100000",
                   "--log-level", "warning"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if not line.startswith("listening on http://"):
                raise SystemExit(f"unexpected first line from the daemon: {line!r}")
            host, _, port = line.removeprefix("listening on http://").rpartition(":")
            result = trio.run(churn, args, host.strip("[]"), int(port), proc.pid)
            result["serve"] = " ".join(command)
            print(json.dumps(result))
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
