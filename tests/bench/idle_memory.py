"""What one idle WebSocket connection costs the daemon, object by object (tracemalloc).

    ulimit -n 20000
    .venv/bin/python tests/bench/idle_memory.py --conns 5000 [--top 30] [--group lineno]

Runs the daemon in this process (``roomctl serve``'s GC settings, rooms in memory, no
rate or per-address limits), lets a client subprocess open ``--conns`` WebSocket
connections in rooms of 10, each saying hello and then idling, and compares tracemalloc
snapshots taken before and after (after a full collection, so only live objects count).
Prints the bytes per connection by allocation site, the total, and the RSS growth. Not a
test: a measurement, for tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import tracemalloc

import trio

import daemon

CLIENT = r'''
import sys, trio
host, port, conns, room_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
HEAD = (b"GET /v1/rooms/%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
def masked_text(payload):  # a zero mask leaves the payload as it is
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload
async def one(i, opened, hold):
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(HEAD % b"idle-%d" % (i // room_size)
                          + masked_text(b'{"type":"hello","name":"c%d"}' % i))
    data = b""
    while b'"welcome"' not in data:
        data += await stream.receive_some(65536)
    opened()
    async with stream:
        while await stream.receive_some(65536):  # later joiners' participant-joined
            pass
async def main():
    done = 0
    def opened():
        nonlocal done
        done += 1
        if done == conns:
            print("open", flush=True)
    async with trio.open_nursery() as nursery:
        limit = trio.Semaphore(200)
        for i in range(conns):
            async with limit:
                nursery.start_soon(one, i, opened, None)
                await trio.sleep(0)
trio.run(main)
'''


GC_TIME = [0.0]  # seconds spent in the cyclic GC, from gc.callbacks
_gc_started = [0.0]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        GC_TIME[0] += time.perf_counter() - _gc_started[0]


def rss_kb() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = daemon.Config(host="127.0.0.1", port=0, data_dir=pathlib.Path(tmp), memory=True,
                               rate_limit=0, max_connections_per_address=0,
                               max_participants=None, max_rooms=None)
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(daemon.serve, config)
            await run_client(host, port, 10, args.room_size)  # warm-up: lazy start-up work
            gc.collect()
            tracing = tracemalloc.is_tracing()
            before = tracemalloc.take_snapshot() if tracing else None
            rss_before = rss_kb()
            census_before = census()
            cpu_before, gc_before = time.process_time(), GC_TIME[0]
            proc = await run_client(host, port, args.conns, args.room_size, keep=True)
            print(json.dumps({"connect_cpu_s": round(time.process_time() - cpu_before, 3),
                              "gc_pause_s": round(GC_TIME[0] - gc_before, 3),
                              "gc_settings": args.gc}))
            gc.collect()
            rss_after = rss_kb()
            if args.census:  # before the snapshot, whose traces are objects too
                report_census(args, census_before, census())
                print_stack()
            if before is not None:
                report(args, before, tracemalloc.take_snapshot(), rss_before, rss_after)
            proc.kill()
            nursery.cancel_scope.cancel()


async def run_client(host: str, port: int, conns: int, room_size: int,
                     keep: bool = False) -> trio.Process:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", CLIENT, host, str(port), str(conns), str(room_size)],
        stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with trio.fail_after(600):
        line = b""
        while not line.endswith(b"open\n"):
            chunk = await proc.stdout.receive_some(100)
            if not chunk:
                raise RuntimeError("the client ended early")
            line += chunk
    await trio.sleep(1.0)  # let the last participant-joined broadcasts settle
    if not keep:
        proc.kill()
        await proc.wait()
        await trio.sleep(1.0)
    return proc


def census() -> dict[str, tuple[int, int]]:
    """Return the count and total getsizeof of the GC-tracked objects, by type."""
    found: dict[str, tuple[int, int]] = {}
    for obj in gc.get_objects():
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        count, size = found.get(name, (0, 0))
        found[name] = (count + 1, size + sys.getsizeof(obj))
    return found


def print_stack() -> None:
    """Print the await chain of one idle connection's task, with each coroutine's size."""
    tasks = []

    def walk(task: trio.lowlevel.Task) -> None:
        tasks.append(task)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    idle = max(tasks, key=lambda t: len(list(_chain(t.coro))))
    total = 0
    print("the await chain of an idle connection:")
    for coro in _chain(idle.coro):
        size = sys.getsizeof(coro)
        total += size
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        print(f"  {size:5d} B  {code.co_qualname if code else type(coro).__name__}")
    print(f"  {total:5d} B  in all")


def _chain(coro: object):  # type: ignore[no-untyped-def]
    while coro is not None:
        yield coro
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)


def report_census(args: argparse.Namespace, before: dict[str, tuple[int, int]],
                  after: dict[str, tuple[int, int]]) -> None:
    rows = []
    for name, (count, size) in after.items():
        old_count, old_size = before.get(name, (0, 0))
        rows.append((size - old_size, count - old_count, name))
    rows.sort(reverse=True)
    print("GC-tracked objects per connection (shallow sizes):")
    for size, count, name in rows[:args.top]:
        print(f"{size / args.conns:8.1f} B {count / args.conns:6.2f} objects  {name}")


def report(args: argparse.Namespace, before: tracemalloc.Snapshot,
           after: tracemalloc.Snapshot, rss_before: int, rss_after: int) -> None:
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(filters).compare_to(before.filter_traces(filters), args.group)
    total = sum(d.size_diff for d in diff)
    conns = args.conns
    rows = [{"bytes_per_conn": round(d.size_diff / conns, 1),
             "blocks_per_conn": round(d.count_diff / conns, 2),
             "where": str(d.traceback[0]) if args.group != "traceback"
             else " -> ".join(str(f) for f in d.traceback[-4:])}
            for d in diff[:args.top]]
    for row in rows:
        print(f"{row['bytes_per_conn']:8.1f} B {row['blocks_per_conn']:6.2f} blocks  "
              f"{row['where']}")
    print(json.dumps({"conns": conns, "python_bytes_per_conn": round(total / conns, 1),
                      "rss_kb_before": rss_before, "rss_kb_after": rss_after,
                      "rss_bytes_per_conn": round((rss_after - rss_before) * 1024 / conns, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--group", choices=["lineno", "filename", "traceback"], default="lineno")
    parser.add_argument("--frames", type=int, default=1, help="traceback depth to record")
    parser.add_argument("--census", action="store_true", help="also count objects by type")
    parser.add_argument("--gc", choices=["serve", "default"], default="serve",
                        help="roomctl serve's GC settings, or Python's defaults")
    parser.add_argument("--no-trace", action="store_true",
                        help="no tracemalloc (it slows allocation): CPU and GC figures only")
    args = parser.parse_args()
    if args.gc == "serve":  # as `roomctl serve` does (roomctl/cli.py)
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
    gc.callbacks.append(_time_gc)
    if not args.no_trace:
        tracemalloc.start(args.frames)
    os.environ.pop("ROOMCTL_TOKEN", None)
    trio.run(measure, args)


if __name__ == "__main__":
    main()
