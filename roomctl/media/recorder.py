"""Recording what remote peers send: one file per peer and track.

Layout, in the ``--record`` directory: ``NAME-PEERID.video.mkv`` (H.264 in Matroska, the
size of the peer's first frame, at the peer's own timing) and ``NAME-PEERID.audio.ogg``
(Opus, 48 kHz stereo). NAME is the participant's display name with anything but letters,
digits, ``.``, ``_`` and ``-`` replaced by ``_``; PEERID its session id. A peer that is
dropped and comes back gets ``-2``, ``-3``... before the suffix instead of overwriting.

aiortc hands us decoded frames, so recording re-encodes; x264's ultrafast preset is the
cheapest encoder at hand (about 1.5 ms per 320x240 frame here). The methods block: callers
run them off the event loop, one at a time per recorder.
"""

from __future__ import annotations

import fractions
import re
from pathlib import Path
from typing import Any

import av
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.container import OutputContainer
from av.video.frame import VideoFrame

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)  # RTP's video clock, which aiortc keeps
MIN_VIDEO_STEP = 90  # 1 ms: Matroska's resolution, so no two frames share a timestamp
AUDIO_RATE = 48000


def safe_name(name: str) -> str:
    """Return ``name`` fit for a file name: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "peer"
    return cleaned[:64]


def recording_path(directory: Path, name: str, peer_id: str, kind: str) -> Path:
    """Return a path in ``directory`` for ``kind`` from this peer that is not taken yet."""
    suffix = ".video.mkv" if kind == "video" else ".audio.ogg"
    stem = f"{safe_name(name)}-{safe_name(peer_id)}"
    path = directory / f"{stem}{suffix}"
    number = 2
    while path.exists():
        path = directory / f"{stem}-{number}{suffix}"
        number += 1
    return path


class TrackRecorder:
    """Base: a file opened on the first frame, ``frames`` written so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames = 0
        self._container: OutputContainer | None = None
        self._stream: Any = None  # the container's one stream, once open

    def write(self, frame: object) -> None:
        """Encode and write one received frame (opening the file on the first)."""
        raise NotImplementedError

    def close(self) -> int:
        """Flush and close the file; return the number of frames written. Idempotent."""
        if self._container is not None:
            try:
                self._flush()
            finally:
                self._container.close()
                self._container = None
        return self.frames

    def _flush(self) -> None:
        assert self._container is not None
        for packet in self._stream.encode(None):
            self._container.mux(packet)


class VideoRecorder(TrackRecorder):
    """H.264 in Matroska; every frame scaled to the size of the first one."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._size = (0, 0)
        self._first_pts: int | None = None
        self._last_pts = -MIN_VIDEO_STEP

    def write(self, frame: object) -> None:
        assert isinstance(frame, VideoFrame)
        if self._container is None:
            self._open(frame.width, frame.height)
        assert self._container is not None
        width, height = self._size
        if (frame.width, frame.height) != self._size or frame.format.name != "yuv420p":
            frame = frame.reformat(width=width, height=height, format="yuv420p")
        frame.pts = self._next_pts(frame)
        frame.time_base = VIDEO_TIME_BASE
        frame.pict_type = av.video.frame.PictureType.NONE  # let x264 choose its keyframes
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        # Odd sizes cannot be yuv420p; a browser's adapted resolution can be odd.
        self._size = (width - width % 2, height - height % 2)
        container = av.open(str(self.path), mode="w", format="matroska")
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height = self._size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = VIDEO_TIME_BASE
        stream.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency"}
        self._container, self._stream = container, stream

    def _next_pts(self, frame: VideoFrame) -> int:
        if frame.pts is None or frame.time_base is None:
            pts = self._last_pts + MIN_VIDEO_STEP
        else:
            ticks = int(frame.pts * frame.time_base / VIDEO_TIME_BASE)
            if self._first_pts is None:
                self._first_pts = ticks
            pts = max(ticks - self._first_pts, self._last_pts + MIN_VIDEO_STEP)
        self._last_pts = pts
        return pts


class AudioRecorder(TrackRecorder):
    """Opus in Ogg, 48 kHz stereo; timestamps count samples, so a lost packet is a cut."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._resampler = AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE,
                                          frame_size=960)
        self._samples = 0

    def write(self, frame: object) -> None:
        assert isinstance(frame, AudioFrame)
        if self._container is None:
            container = av.open(str(self.path), mode="w", format="ogg")
            stream = container.add_stream("libopus", rate=AUDIO_RATE)
            stream.layout = "stereo"
            self._container, self._stream = container, stream
        frame.pts = None  # the resampler would otherwise carry the sender's clock over
        self._encode(self._resampler.resample(frame))
        self.frames += 1

    def _encode(self, frames: list[AudioFrame]) -> None:
        assert self._container is not None
        for out in frames:
            out.pts = self._samples
            out.time_base = fractions.Fraction(1, AUDIO_RATE)
            self._samples += out.samples
            for packet in self._stream.encode(out):
                self._container.mux(packet)

    def _flush(self) -> None:
        if self._container is not None:
            self._encode(self._resampler.resample(None))
        super()._flush()
