"""Reaching Redis: the client from a URL, the durability check, and what failures mean.

A message is acknowledged only once the append script has answered, so that answer must
mean "on disk": Redis must run with ``appendonly yes`` and ``appendfsync always`` (it then
replies to a write only after fsyncing it). ``check_durability`` refuses anything weaker
unless the operator accepted it (``--redis-durability relaxed``, documented as losing up
to a second of acknowledged messages when Redis itself crashes).
"""

from __future__ import annotations

import logging
import math
from typing import Any
from urllib.parse import urlsplit

import coredis
import coredis.exceptions
from coredis.retry import NoRetryPolicy

# Every failure that means "Redis could not be reached or did not answer in time".
UNREACHABLE: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError, TimeoutError, OSError,
    coredis.exceptions.BusyLoadingError,
)

SCHEMES = ("redis", "rediss", "unix")

log = logging.getLogger(__name__)


class RedisSetupError(OSError):
    """Redis cannot be used as configured; the message is one line saying why and what to do."""


def describe(url: str) -> str:
    """Return ``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def client(url: str, *, timeout: float = 5.0) -> coredis.Redis[bytes]:
    """Return a (not yet connected) client for ``url``: redis://, rediss:// or unix://.

    Commands are not retried by the client: a write whose answer was lost is decided by
    the caller (the append script makes a second try safe to detect). Raises
    RedisSetupError for a URL of another scheme.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise RedisSetupError(f"--redis {describe(url)}: use redis://HOST:PORT/DB, "
                              "rediss://... (TLS) or unix:///path/to/socket")
    redis: coredis.Redis[bytes] = coredis.Redis.from_url(
        url, decode_responses=False, retry_policy=NoRetryPolicy(),
        stream_timeout=timeout, connect_timeout=timeout)
    return redis


async def check_durability(redis: coredis.Redis[bytes], url: str, *, relaxed: bool) -> None:
    """Refuse a Redis that would acknowledge a write before it is on disk.

    Raises RedisSetupError naming the setting (or saying CONFIG cannot be read, as some
    managed services forbid it) unless ``relaxed``.
    """
    try:
        settings: dict[Any, Any] = await redis.config_get(["appendonly", "appendfsync"])
    except coredis.exceptions.ResponseError as exc:
        if relaxed:
            log.warning("%s: cannot read its persistence settings (%s); going on as "
                        "--redis-durability relaxed allows", describe(url), exc,
                        extra={"event": "redis-durability-relaxed"})
            return
        raise RedisSetupError(
            f"{describe(url)}: cannot read its persistence settings ({exc}); if the "
            "service fsyncs every write (appendonly yes, appendfsync always), start with "
            "--redis-durability relaxed") from None
    appendonly = _text(settings.get(b"appendonly"))
    appendfsync = _text(settings.get(b"appendfsync"))
    if relaxed:
        if (appendonly, appendfsync) != ("yes", "always"):
            log.warning("%s has appendonly %s, appendfsync %s: a crash of Redis loses the "
                        "messages it had not yet written, acknowledged or not "
                        "(--redis-durability relaxed)", describe(url), appendonly or "?",
                        appendfsync or "?", extra={"event": "redis-durability-relaxed"})
        return
    if appendonly != "yes":
        raise RedisSetupError(
            f"{describe(url)} has appendonly {appendonly or '?'}: acknowledged messages "
            "would be lost when Redis restarts; set appendonly yes and appendfsync always "
            "(or accept that with --redis-durability relaxed)")
    if appendfsync != "always":
        raise RedisSetupError(
            f"{describe(url)} has appendfsync {appendfsync or '?'}: up to a second of "
            "acknowledged messages would be lost when Redis crashes; set appendfsync always "
            "(or accept that with --redis-durability relaxed)")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def retry_delay(attempt: int) -> float:
    """Seconds to wait before reconnection attempt ``attempt`` (0.1 s doubling to 5 s)."""
    return min(5.0, 0.1 * math.pow(2, max(0, attempt)))
