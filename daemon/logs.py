"""Log lines that clients can cause at will, limited so that a flood cannot fill the disk.

A refused token, a rate-limit close or a room made by a visit is worth one line each, but
anyone can cause thousands a second. Each kind of such line goes through a ``LogThrottle``:
a token bucket lets ``burst`` lines through at once and ``rate`` a second after that; the
lines it holds back are counted, and the next line that passes says how many there were
(``suppressed``), as does the daemon's last words (``flush``). The metrics count every
event regardless.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from daemon.net.ratelimit import TokenBucket

__all__ = ["LogThrottle"]


class LogThrottle:
    """One kind of line: at most ``burst`` at once, then ``rate`` per second; the rest counted."""

    __slots__ = ("_bucket", "_logger", "held_back")

    def __init__(self, logger: logging.Logger, now: float, *, rate: float = 0.2,
                 burst: int = 10) -> None:
        self._logger = logger
        self._bucket = TokenBucket(rate, burst, now)
        self.held_back = 0  # lines dropped since the last one that passed

    def info(self, now: float, message: str, *args: Any,
             extra: Mapping[str, Any] | None = None) -> bool:
        """Log ``message % args`` at info level unless over the limit; return whether it was.

        A line that passes after others were held back ends with how many, and carries
        that count as ``suppressed`` in its record, next to ``extra``.
        """
        if not self._bucket.take(now):
            self.held_back += 1
            return False
        held, self.held_back = self.held_back, 0
        if held:
            message += " (%d similar lines suppressed before this one)"
            args = (*args, held)
        self._logger.info(message, *args, extra={**(extra or {}), "suppressed": held})
        return True

    def flush(self, what: str) -> None:
        """Say how many ``what`` lines are still held back, if any (at shutdown)."""
        if self.held_back:
            self._logger.info("%d more %s lines were suppressed", self.held_back, what,
                              extra={"event": "suppressed", "suppressed": self.held_back})
            self.held_back = 0
