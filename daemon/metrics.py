"""The daemon's metrics, each declared once, and their Prometheus text exposition.

``GET /metrics`` answers in the Prometheus text format, version 0.0.4: every metric has
``# HELP`` and ``# TYPE`` lines, counters end in ``_total`` and gauges do not, and every
name starts with ``roomctl_`` and counts in base units (seconds, not milliseconds).
``man/roomctl.1`` (METRICS) lists them all with their types; tests/test_metrics.py parses
the exposition with prometheus_client's parser and compares it with the page.

Counters are plain ints in a dict that the server bumps where things happen (cheap
enough for the per-frame ones); gauges are read from the daemon's state at scrape time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

PREFIX: Final = "roomctl_"

# Counter keys (the metric is roomctl_<key>_total) and their help texts.
COUNTERS: Final[Mapping[str, str]] = {
    "connections_accepted": "WebSocket connections accepted, room and admin endpoints.",
    "frames_received": "WebSocket frames received from clients.",
    "frames_sent": "Frames queued for clients, one per recipient.",
    "bad_frames": "Frames answered with an error as undecodable or invalid.",
    "slow_consumer_closes": "Connections closed as slow consumers (close code 4011).",
    "rate_limited": "Requests refused as over the rate limit (error rate-limited).",
    "rate_limit_closes": "Connections closed for ignoring the rate limit (close code 1008).",
    "ping_timeouts": "Connections closed for not answering a keepalive ping (close code 1011).",
    "origins_refused": "WebSocket upgrades refused for their Origin header (HTTP 403).",
    "address_limit_refusals": "TCP connections refused over the per-address limit (HTTP 429).",
    "refused_tokens": "Tokens refused as forged, expired or malformed.",
    "refused_hellos": "Hellos refused by a room's access rule (close code 4001 or 4003).",
    "tokens_issued": "Join tokens issued by create-token.",
    "rooms_created": "Rooms created, by create-room or by the first hello to a name.",
    "rooms_expired": "Rooms removed after staying empty: made by a visit and never used.",
}

# Gauge keys (the metric is roomctl_<key>) and their help texts.
GAUGES: Final[Mapping[str, str]] = {
    "rooms": "Rooms the daemon holds.",
    "connections": "WebSocket connections open.",
    "sessions": "Sessions in all rooms: participants (live or within their grace period) "
                "and hidden observers.",
    "start_time_seconds": "When the daemon started, in seconds since the Unix epoch.",
}


def new_counters() -> dict[str, int]:
    """Return every counter at zero, keyed as in ``COUNTERS``."""
    return dict.fromkeys(COUNTERS, 0)


def exposition(counters: Mapping[str, int], gauges: Mapping[str, float]) -> str:
    """Return the Prometheus text (format 0.0.4) of ``counters`` and ``gauges``.

    Both map the keys of ``COUNTERS`` and ``GAUGES``; raises KeyError for a missing one.
    """
    lines: list[str] = []
    for key, text in GAUGES.items():
        name = PREFIX + key
        lines += (f"# HELP {name} {text}", f"# TYPE {name} gauge",
                  f"{name} {_number(gauges[key])}")
    for key, text in COUNTERS.items():
        name = f"{PREFIX}{key}_total"
        lines += (f"# HELP {name} {text}", f"# TYPE {name} counter",
                  f"{name} {_number(counters[key])}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
