"""What ``roomctl load-test`` measures: latencies, and deliveries checked one by one.

``Latencies`` keeps every observation in logarithmic buckets 2 % wide (bounded memory for
any run length; a percentile is exact to within 2 %, the maximum exactly). ``Stream``
follows what one receiver got from one sender: each item carries the sender's own
counter (0, 1, 2, ...), so an item seen twice is a duplicate, one older than the newest
seen is out of order, and an item the daemon acknowledged that never arrived is lost.
Plain Python, no I/O: the command (``roomctl.loadtest``) feeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Latencies", "Stream", "Tally"]

_WIDTH = math.log(1.02)
_FLOOR = 1e-6  # a microsecond: anything faster is counted there


class Latencies:
    """Durations in seconds, counted into 2 % buckets; percentiles and the exact maximum."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max = 0.0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        index = math.floor(math.log(max(seconds, _FLOOR) / _FLOOR) / _WIDTH)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def percentile(self, share: float) -> float | None:
        """Return the duration ``share`` (0 to 1) of the observations stay within; None if empty.

        The upper end of its bucket, never more than the maximum seen.
        """
        if not self.count:
            return None
        rank = max(1, math.ceil(share * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(_FLOOR * math.exp((index + 1) * _WIDTH), self.max)
        return self.max

    def summary(self) -> dict[str, Any]:
        """Return count, mean, p50, p95, p99 and max, in seconds to the microsecond (None
        when empty)."""
        def micro(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds, 6)

        return {
            "count": self.count,
            "mean": micro(self.total / self.count if self.count else None),
            "p50": micro(self.percentile(0.50)), "p95": micro(self.percentile(0.95)),
            "p99": micro(self.percentile(0.99)), "max": micro(self.max if self.count else None),
        }


@dataclass
class Tally:
    """Deliveries over every receiver: how many, and how many went wrong, by kind."""

    delivered: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    lost: int = 0

    @property
    def faults(self) -> int:
        return self.duplicated + self.out_of_order + self.lost


@dataclass
class Stream:
    """What one receiver got from one sender, item by item (the sender's counter)."""

    seen: bytearray = field(default_factory=bytearray)
    newest: int = -1

    def receive(self, number: int, tally: Tally) -> bool:
        """Count item ``number`` into ``tally``; return whether it is new (not a duplicate)."""
        if number >= len(self.seen):
            self.seen.extend(bytes(number + 1 - len(self.seen) + 64))
        if self.seen[number]:
            tally.duplicated += 1
            return False
        self.seen[number] = 1
        tally.delivered += 1
        if number < self.newest:
            tally.out_of_order += 1
        else:
            self.newest = number
        return True

    def missing(self, expected: list[int]) -> int:
        """Return how many of the ``expected`` items never arrived."""
        seen = self.seen
        return sum(1 for n in expected if n >= len(seen) or not seen[n])
