"""Several nodes side by side: the seed server, one roomctl, one roomctl on Redis, three on Redis.

Run on demand (not by pytest), after ``/work/shared/bench/setup.sh /tmp/roomctl-bench``:

    .venv/bin/python tests/bench/cluster.py --reps 3 --out /tmp/cluster-bench.jsonl

Every repetition runs each scenario against each peer in turn (interleaved, so that a noisy
spell of the shared machine spreads over all of them), each with fresh processes on fresh
loopback ports, and a fresh ``redis-server`` (``appendonly yes``, ``appendfsync always``,
its files in a temporary directory) for the Redis peers:

    seed          the seed design's Node server (the baseline)
    roomctl       one ``roomctl serve``, rooms in SQLite (acknowledged once on disk)
    redis-1       one ``roomctl serve --redis``: what Redis costs, with no hop between nodes
    redis-3       three ``roomctl serve --redis`` on one Redis, the generator's clients spread
                  over them round robin (``--base A,B,C``): a room's members on three nodes

The load generator measures the process given as ``--server-pid`` (the room's owner, node
a); this script also reads the CPU time of every node and of Redis (``/proc/PID/stat``)
before and after each run and adds ``cpu_s`` (per process) and ``cpu_total_s`` to the line,
so the cost per delivery counts every process the cluster needs. A table of medians is
printed at the end. Traffic stays on 127.0.0.1; every run is bounded by the generator.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "tests" / "bench" / "roomctl-adapter.js"
TICK = os.sysconf("SC_CLK_TCK")

SCENARIOS = {
    "fanout": ["fanout", "--rooms", "1", "--clients", "50", "--messages", "2000",
               "--window", "16"],
    "relay": ["relay", "--pairs", "10", "--duration", "10"],
}
PEERS = ("seed", "roomctl", "redis-1", "redis-3")
SERVE_LIMITS = ["--log-level", "warning", "--rate-limit", "0",
                "--max-connections-per-address", "0", "--max-participants", "1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Peer:
    """The processes of one peer for one run: started, measured, stopped."""

    def __init__(self, kind: str, bench: Path, work: Path, roomctl: list[str]) -> None:
        self.kind, self.procs, self.names = kind, [], []
        self.bases: list[str] = []
        self.env = {**os.environ, "HOME": str(work), "XDG_STATE_HOME": str(work / "state"),
                    "XDG_CONFIG_HOME": str(work / "config")}
        if kind == "seed":
            port = free_port()
            self._start("seed", ["node", "server.js"], port,
                        cwd=bench / "peers" / "seed-node",
                        env={**self.env, "PORT": str(port), "HOST": "127.0.0.1"})
            self.adapter = "seed"
            return
        self.adapter = str(ADAPTER)
        nodes = {"roomctl": 0, "redis-1": 1, "redis-3": 3}[kind]
        redis_url = None
        if nodes:
            sock = work / "redis.sock"
            self._start("redis", ["redis-server", "--port", "0", "--unixsocket", str(sock),
                                  "--dir", str(work), "--appendonly", "yes",
                                  "--appendfsync", "always", "--save", ""],
                        None, cwd=work, env=self.env, sock=sock)
            redis_url = f"unix://{sock}"
        for i in range(max(nodes, 1)):
            port = free_port()
            args = [*roomctl, "--host", "127.0.0.1", "--port", str(port), "--data-dir",
                    str(work / f"node{i}"), *SERVE_LIMITS]
            if redis_url is not None:
                args += ["--redis", redis_url, "--node-id", "abc"[i]]
            self._start(f"node-{'abc'[i]}", args, port, cwd=work, env=self.env)

    def _start(self, name: str, args: list[str], port: int | None, *, cwd: Path,
               env: dict[str, str], sock: Path | None = None) -> None:
        log = open(cwd / f"{name}.log", "ab") if cwd.exists() else subprocess.DEVNULL
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(proc)
        self.names.append(name)
        if port is not None:
            wait_port(port, proc)
            self.bases.append(f"ws://127.0.0.1:{port}")
        elif sock is not None:
            deadline = time.monotonic() + 20
            while not sock.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    @property
    def owner_pid(self) -> int:
        return next(p.pid for p, n in zip(self.procs, self.names, strict=True)
                    if n in ("seed", "node-a"))

    def cpu(self) -> dict[str, float]:
        return {n: cpu_seconds(p.pid) for p, n in zip(self.procs, self.names, strict=True)}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


def run_one(kind: str, scenario: str, bench: Path, roomctl: list[str]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"cluster-bench-{kind}-"))
    peer = Peer(kind, bench, work, roomctl)
    try:
        time.sleep(0.5)
        before = peer.cpu()
        out = subprocess.run(
            ["node", "loadgen.js", *SCENARIOS[scenario], "--quiet", "--adapter", peer.adapter,
             "--base", ",".join(peer.bases), "--server-pid", str(peer.owner_pid),
             "--label", kind],
            cwd=bench / "loadgen", capture_output=True, text=True, timeout=300)
        after = peer.cpu()
    finally:
        peer.stop()
        shutil.rmtree(work, ignore_errors=True)
    line: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout \
        else {"ok": False, "error": out.stderr[-500:]}
    line["peer"], line["scenario"] = kind, scenario
    line["cpu_s"] = {n: round(after[n] - before[n], 2) for n in before}
    line["cpu_total_s"] = round(sum(line["cpu_s"].values()), 2)
    return line


def ops(line: dict[str, Any]) -> tuple[float, float, int]:
    """(rate, p99 ms, operations) of a run: deliveries for fanout, round trips for relay."""
    # The CPU read around the run covers all of it, so operations are all of the run's too
    # (relay: the warm-up's round trips as well as the measured window's).
    if line["scenario"] == "fanout":
        return line["deliveries_per_s"], line["latency_ms"]["p99"], line["deliveries"]
    return line["round_trips_per_s"], line["latency_ms"]["p99"], line["total_round_trips"]


def table(lines: list[dict[str, Any]]) -> str:
    rows = ["| scenario | peer | runs | rate /s (median) | p99 ms | owner CPU µs/op | "
            "all processes CPU µs/op | Redis CPU µs/op |", "|---|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        for kind in PEERS:
            runs = [x for x in lines if x["scenario"] == scenario and x["peer"] == kind
                    and x.get("ok")]
            if not runs:
                continue
            rate = statistics.median(ops(x)[0] for x in runs)
            p99 = statistics.median(ops(x)[1] for x in runs)
            owner = statistics.median(
                1e6 * x["cpu_s"].get("node-a", x["cpu_s"].get("seed", 0)) / max(ops(x)[2], 1)
                for x in runs)
            total = statistics.median(1e6 * x["cpu_total_s"] / max(ops(x)[2], 1) for x in runs)
            redis = statistics.median(1e6 * x["cpu_s"].get("redis", 0) / max(ops(x)[2], 1)
                                      for x in runs)
            rows.append(f"| {scenario} | {kind} | {len(runs)} | {rate:,.0f} | {p99:.1f} | "
                        f"{owner:.0f} | {total:.0f} | {redis:.0f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=Path("/tmp/roomctl-bench"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--roomctl", default=f"{sys.executable} -m roomctl serve",
                        help="how to start the daemon (default: this Python's roomctl)")
    parser.add_argument("--summarize", type=Path, help="print the table of a JSONL file")
    args = parser.parse_args()
    if args.summarize:
        print(table([json.loads(x) for x in args.summarize.read_text().splitlines()]))
        return 0
    if not (args.bench / "loadgen" / "node_modules").exists():
        print(f"no load generator in {args.bench}: run /work/shared/bench/setup.sh "
              f"{args.bench} first", file=sys.stderr)
        return 2
    lines = []
    for rep in range(1, args.reps + 1):
        for scenario in args.scenarios.split(","):
            for kind in args.peers.split(","):
                line = run_one(kind, scenario, args.bench, args.roomctl.split())
                line["rep"] = rep
                lines.append(line)
                rate, p99, _count = ops(line) if line.get("ok") else (0, 0, 0)
                print(f"rep {rep} {scenario:6} {kind:8} ok={line.get('ok')} "
                      f"{rate:,.0f}/s p99 {p99:.1f} ms cpu {line['cpu_s']}",
                      file=sys.stderr, flush=True)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(line) + "\n")
    print(table(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
