"""Helpers for the ``roomctl join`` tests: real ``roomctl join`` processes, watched live.

Each ``Joiner`` is a ``roomctl join --json`` subprocess against a real ``roomctl serve``; a
thread reads its JSON lines as they come, so a test can wait (bounded, polling) for an event
or a stats sample while the call goes on. Media stays on 127.0.0.1 (``--ice-address``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import ROOT, ServeProcess

T = TypeVar("T")

WAIT = 30.0  # seconds for any one expected outcome, on a loaded 2-core machine
POLL = 0.05

# What every test peer sends: small video, so that four peers fit on two cores.
TEST_MEDIA = ("--video", "testsrc", "--video-size", "320x240", "--audio", "sine")
LOOPBACK_ONLY = ("--ice-address", "127.0.0.1")
# What `roomctl join ... &` in a script does: a non-interactive shell starts background jobs
# with SIGINT ignored, and `kill` (SIGTERM) stops them.
AS_BACKGROUND_JOB = ("sh", "-c", 'trap "" INT; exec "$@"', "sh")


def cli_env(sp: ServeProcess | None) -> dict[str, str]:
    """The environment of a CLI run: no ROOMCTL_* from outside, the daemon's URL and data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCTL_")}
    if sp is not None:
        env["ROOMCTL_URL"] = sp.http
        env["ROOMCTL_DATA_DIR"] = str(sp.data_dir)
    return env


def roomctl(sp: ServeProcess | None, *args: str, timeout: float = WAIT
            ) -> subprocess.CompletedProcess[str]:
    """Run ``roomctl ARGS`` to completion (bounded)."""
    return subprocess.run([sys.executable, "-m", "roomctl", *args], capture_output=True,
                          text=True, cwd=ROOT, env=cli_env(sp), timeout=timeout, check=False)


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``condition`` until it returns something truthy; return it. Fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)


class Joiner:
    """A running ``roomctl join ROOM --json`` and the JSON objects it has printed so far."""

    def __init__(self, sp: ServeProcess, room: str, name: str, *args: str,
                 stderr_path: Path, background: bool = False) -> None:
        self.name = name
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("w")
        command = [sys.executable, "-m", "roomctl", "join", room, "--name", name, "--json",
                   *args]
        self.proc = subprocess.Popen(
            [*AS_BACKGROUND_JOB, *command] if background else command,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT,
            env=cli_env(sp))
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)  # anything else on stdout is a bug: let the test see it
            with self._lock:
                self._events.append(event)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def of(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """The events named ``event`` whose fields include ``match``."""
        return [e for e in self.events
                if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, event: str, timeout: float = WAIT, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            self.check_running()
            hits = self.of(event, **match)
            return hits[0] if hits else None

        return wait_until(found, f"{self.name}: {event} {match}", timeout)

    @property
    def session(self) -> str:
        return str(self.wait_event("joined")["session"])

    def last_stats(self, peer: str) -> dict[str, Any] | None:
        samples = self.of("stats", peer=peer)
        return samples[-1] if samples else None

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}: "
                                 f"{self.stderr()}")

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Send ``signum`` and return the exit status (bounded); all output read by then."""
        self.proc.send_signal(signum)
        return self.finish(timeout)

    def finish(self, timeout: float = WAIT) -> int:
        """Wait for the process to exit and return its status (bounded); output all read."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        self._stderr.close()
