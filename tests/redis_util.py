"""A real ``redis-server`` (Debian's) for the tests that need one: started by the test, in
its own temporary directory, listening on a unix socket only, stopped at the end.

It runs as the cluster needs it: ``appendonly yes`` and ``appendfsync always``, so a write
Redis answered is on disk. ``.ci/run`` installs Debian's redis-server when it is missing;
under CI a missing binary fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    """A running redis-server: its URL, its directory, and its process."""

    directory: pathlib.Path
    socket: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        """Start (or start again, on the same files) and wait until it answers."""
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--dir", str(self.directory), "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--logfile", str(self.directory / "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("redis-server did not start: "
                                     + (self.directory / "redis.log").read_text()[-2000:])
            time.sleep(0.02)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        out = subprocess.run(["redis-cli", "-s", str(self.socket), "ping"], capture_output=True,
                             timeout=5, check=False)
        return out.stdout.strip() == b"PONG"

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: as a crash would), and wait for it to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self.socket.exists():
            self.socket.unlink()

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-s", str(self.socket), *args], capture_output=True,
                             timeout=10, check=True, text=True)
        return out.stdout.strip()


def need_redis() -> None:
    if not os.access(REDIS_SERVER, os.X_OK):
        if os.environ.get("CI", "").lower() == "true":
            raise AssertionError(f"{REDIS_SERVER} is missing; .ci/run installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@contextmanager
def running_redis(directory: pathlib.Path, *extra: str) -> Iterator[RedisServer]:
    """Run a redis-server in ``directory`` for the block."""
    need_redis()
    directory.mkdir(parents=True, exist_ok=True)
    # A unix socket path has a length limit (about 107 bytes): keep it short.
    server = RedisServer(directory, directory / "r.sock", extra=extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()
