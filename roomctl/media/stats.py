"""Per-peer statistics: counters kept as frames pass, and the sample printed every interval.

Frame counts are counted by us (frames decoded from the peer, frames its sender took from
our source). Bit rates come from the peer connection's transport byte counters (RTP and
RTCP, both directions, over the last interval); the round-trip time from the RTCP receiver
reports the peer sends about our streams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiortc.stats import (
    RTCRemoteInboundRtpStreamStats,
    RTCStatsReport,
    RTCTransportStats,
)


@dataclass
class Counters:
    """What one peer connection has carried so far."""

    video_frames_in: int = 0
    audio_frames_in: int = 0
    video_size_in: str | None = None  # "WxH" of the last frame received


@dataclass(frozen=True)
class Sample:
    """One stats sample of one peer (the ``stats`` JSON event)."""

    peer: str
    name: str
    state: str
    video_frames_in: int
    audio_frames_in: int
    video_frames_out: int
    audio_frames_out: int
    video_fps_in: float
    video_fps_out: float
    bitrate_in: int  # bits per second over the last interval
    bitrate_out: int
    rtt: float | None  # seconds; None until the peer has reported on our streams
    video_size_in: str | None
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"event": "stats", **{k: v for k, v in self.__dict__.items() if k != "at"}}

    def line(self) -> str:
        """The human stats line (stderr)."""
        rtt = f"{self.rtt * 1000:.1f} ms" if self.rtt is not None else "-"
        size = f" {self.video_size_in}" if self.video_size_in else ""
        return (f"{self.name} ({self.peer}) {self.state}: "
                f"in {self.video_frames_in} video ({self.video_fps_in:.1f} fps{size}), "
                f"{self.audio_frames_in} audio, {self.bitrate_in / 1000:.0f} kbit/s; "
                f"out {self.video_frames_out} video ({self.video_fps_out:.1f} fps), "
                f"{self.audio_frames_out} audio, {self.bitrate_out / 1000:.0f} kbit/s; "
                f"rtt {rtt}")


@dataclass
class RateMeter:
    """Turns cumulative counters into rates between two samples."""

    at: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    video_in: int = 0
    video_out: int = 0

    def update(self, *, bytes_in: int, bytes_out: int, video_in: int,
               video_out: int) -> tuple[int, int, float, float]:
        """Return (bitrate_in, bitrate_out, video_fps_in, video_fps_out) since the last call."""
        now = time.monotonic()
        elapsed = max(now - self.at, 1e-6)
        rates = (int((bytes_in - self.bytes_in) * 8 / elapsed),
                 int((bytes_out - self.bytes_out) * 8 / elapsed),
                 round((video_in - self.video_in) / elapsed, 2),
                 round((video_out - self.video_out) / elapsed, 2))
        self.at, self.bytes_in, self.bytes_out = now, bytes_in, bytes_out
        self.video_in, self.video_out = video_in, video_out
        return rates


def transport_bytes(report: RTCStatsReport) -> tuple[int, int]:
    """Return (bytes received, bytes sent) over every transport in ``report``."""
    received = sent = 0
    for entry in report.values():
        if isinstance(entry, RTCTransportStats):
            received += entry.bytesReceived
            sent += entry.bytesSent
    return received, sent


def round_trip(report: RTCStatsReport) -> float | None:
    """Return the largest round-trip time the peer reported, in seconds, or None."""
    times = [entry.roundTripTime for entry in report.values()
             if isinstance(entry, RTCRemoteInboundRtpStreamStats)
             and entry.roundTripTime is not None]
    return max(times) if times else None
