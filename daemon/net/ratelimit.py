"""Per-connection request rate limits: a token bucket, and a second one that counts refusals.

Theory of operation
-------------------
Each request takes one token from the connection's bucket, which holds at most ``burst``
tokens and refills at ``rate`` per second. A request that finds the bucket empty is
refused (the daemon answers ``rate-limited``) and had no effect. Refusing is cheap but
not free, so refusals take tokens from a second bucket (``max_refused`` tokens, refilled
over ``window`` seconds): a client that keeps sending after being told to slow down,
about ``max_refused`` refusals within ``window`` seconds, is told to go away (the daemon
closes it with 1008).

Pure and clock-free: every call takes ``now`` (seconds on any monotonic clock), so the
rules are tested with plain numbers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["RateLimit", "RequestLimiter", "TokenBucket", "Verdict"]

_EPSILON = 1e-9


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` per second; starts full."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and room for one token")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token; return False (taking nothing) when there is none."""
        # A clock that steps back (it should not) must not mint tokens.
        elapsed = max(0.0, now - self.stamp)
        self.stamp = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        # The epsilon forgives float rounding: a client that waited exactly as told is on time.
        if self.tokens >= 1.0 - _EPSILON:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def wait(self) -> float:
        """Return the seconds until the next token, as of the last ``take``."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


class Verdict(enum.Enum):
    """What to do with one request."""

    ALLOW = "allow"
    REFUSE = "refuse"  # answer rate-limited; the request has no effect
    CLOSE = "close"  # the client keeps at it: close the connection (1008)


@dataclass(frozen=True)
class RateLimit:
    """The limits of one connection; ``rate`` 0 means none."""

    rate: float = 20.0  # requests per second, sustained
    burst: int = 200  # requests at once, after a quiet spell
    max_refused: int = 100  # refusals within ``window`` seconds before the close
    window: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0


class RequestLimiter:
    """The rate limit of one connection: requests, and refusals of them."""

    __slots__ = ("_limit", "_refusals", "_requests")

    def __init__(self, limit: RateLimit, now: float) -> None:
        if not limit.enabled:
            raise ValueError("a disabled rate limit needs no limiter")
        self._limit = limit
        self._requests = TokenBucket(limit.rate, limit.burst, now)
        self._refusals = TokenBucket(limit.max_refused / limit.window, limit.max_refused, now)

    def check(self, now: float) -> Verdict:
        """Return whether the request arriving at ``now`` may run."""
        if self._requests.take(now):
            return Verdict.ALLOW
        if self._refusals.take(now):
            return Verdict.REFUSE
        return Verdict.CLOSE

    def retry_after(self) -> float:
        """Return the seconds until a request would be allowed again."""
        return self._requests.wait()
