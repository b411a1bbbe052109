"""The daemon's metrics, each declared once, served through prometheus_client.

The hot path stays as cheap as it was: counters are plain ints in a dict that the server
bumps where things happen (``new_counters``), and a ``Histogram`` here is a list of bucket
counts that ``observe`` bumps (no lock: one trio thread writes it). Nothing is registered
with prometheus_client's global registry. At scrape time ``DaemonCollector`` reads the
counters, the histograms and the gauges (from the daemon's state) and hands them to
prometheus_client as metric families; ``Metrics.exposition`` renders them with its
encoders, in the format the scraper asks for (Prometheus text 0.0.4 by default,
OpenMetrics when its ``Accept`` header prefers it), together with prometheus_client's
process metrics (CPU, memory, file descriptors) and ``python_info``.

Names follow Prometheus' conventions: every one of ours starts with ``roomctl_``,
counters end in ``_total``, times are in seconds. ``man/roomctl.1`` (METRICS) lists them
all with their types; tests/test_metrics.py parses a real scrape with prometheus_client's
parser and compares it with the page.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import exposition
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["COUNTERS", "GAUGES", "HISTOGRAMS", "DaemonCollector", "Gauges", "Histogram",
           "Metrics", "new_counters", "new_histograms"]

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
    "store_failures": "Store transactions that failed (their requests got an error).",
}

# Gauge keys (the metric is roomctl_<key>) and their help texts.
GAUGES: Final[Mapping[str, str]] = {
    "rooms": "Rooms the daemon holds.",
    "participants": "Participants in all rooms, live or within their grace period (hidden "
                    "observers not counted).",
    "sessions": "Sessions in all rooms: participants (live or within their grace period) "
                "and hidden observers.",
    "connections": "Connections open, by kind: room and admin WebSockets, and http for plain "
                   "HTTP requests and handshakes under way.",
    "start_time_seconds": "When the daemon started, in seconds since the Unix epoch.",
    "build_info": "Always 1; the version label says which roomctl runs, node which node "
                  "of several (--node-id) or which host.",
}
CONNECTION_KINDS: Final = ("room", "admin", "http")

# Latencies: half a millisecond (a commit on a fast disk) to ten seconds.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# Histogram keys (the metric is roomctl_<key>), their help texts and bucket bounds.
HISTOGRAMS: Final[Mapping[str, tuple[str, tuple[float, ...]]]] = {
    "ack_latency_seconds": (
        "From reading a request that writes to the store (a message, a topic, a room) to its "
        "ok being queued for the client, after the commit.", LATENCY_BUCKETS),
    "relay_latency_seconds": (
        "From reading a request that needs no store write (a WebRTC signaling relay, a "
        "status) to the frames it causes being written or queued for every recipient.",
        LATENCY_BUCKETS),
    "store_batch_size": (
        "Store writes committed together in one SQLite transaction (group commit).",
        BATCH_BUCKETS),
}


class Histogram:
    """Observations counted into fixed buckets: what prometheus_client's would hold, no lock.

    ``counts[i]`` counts observations up to ``bounds[i]`` (and above the one before);
    the last slot counts those above every bound (``+Inf``).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Return the buckets as Prometheus has them: (upper bound, count up to it)."""
        found, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            found.append(("+Inf" if bound == float("inf") else f"{bound:g}", float(total)))
        return found


def new_counters() -> dict[str, int]:
    """Return every counter at zero, keyed as in ``COUNTERS``."""
    return dict.fromkeys(COUNTERS, 0)


def new_histograms() -> dict[str, Histogram]:
    """Return every histogram empty, keyed as in ``HISTOGRAMS``."""
    return {key: Histogram(bounds) for key, (_, bounds) in HISTOGRAMS.items()}


@dataclass(frozen=True)
class Gauges:
    """The daemon's state at scrape time (``GAUGES``)."""

    rooms: int
    participants: int
    sessions: int
    connections: Mapping[str, int]  # by kind, CONNECTION_KINDS
    start_time_seconds: float
    version: str
    node: str  # --node-id with several nodes; else this host's name


@dataclass(eq=False)  # the registry keys collectors by identity
class DaemonCollector(Collector):
    """A prometheus_client collector over the daemon's counters, histograms and gauges."""

    counters: Mapping[str, int]
    histograms: Mapping[str, Histogram]
    gauges: Callable[[], Gauges]

    def collect(self) -> Iterable[Metric]:
        state = self.gauges()
        for key in ("rooms", "participants", "sessions", "start_time_seconds"):
            yield GaugeMetricFamily(PREFIX + key, GAUGES[key], value=getattr(state, key))
        connections = GaugeMetricFamily(PREFIX + "connections", GAUGES["connections"],
                                        labels=["kind"])
        for kind in CONNECTION_KINDS:
            connections.add_metric([kind], state.connections.get(kind, 0))
        yield connections
        info = GaugeMetricFamily(PREFIX + "build_info", GAUGES["build_info"],
                                 labels=["version", "node"])
        info.add_metric([state.version, state.node], 1)
        yield info
        for key, text in COUNTERS.items():
            # prometheus_client adds the _total suffix to a counter family's samples.
            yield CounterMetricFamily(PREFIX + key, text, value=self.counters[key])
        for key, (text, _) in HISTOGRAMS.items():
            histogram = self.histograms[key]
            yield HistogramMetricFamily(PREFIX + key, text, buckets=histogram.cumulative(),
                                        sum_value=histogram.sum)


@dataclass
class Metrics:
    """The daemon's collector registered beside the process metrics, for one daemon.

    A registry of its own, not prometheus_client's global one: several daemons in one
    process (tests, embedding programs) each serve their own numbers.
    """

    collector: DaemonCollector
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(
        auto_describe=False))

    def __post_init__(self) -> None:
        from prometheus_client import PlatformCollector, ProcessCollector

        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Return the exposition the ``Accept`` header asks for, and its content type."""
        encoder, content_type = exposition.choose_encoder(accept)
        return encoder(self.registry), content_type
