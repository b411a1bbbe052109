"""The video and audio sources: each opened once, relayed to every peer connection.

A source is an FFmpeg input (PyAV) decoded on its own daemon thread, which hands frames to a
``SourceTrack`` on the media loop. The track goes through aiortc's ``MediaRelay``: every peer
connection gets an unbuffered relay subscription, never a source of its own, so a peer whose
encoder falls behind skips frames instead of queueing them.

Why not aiortc's ``MediaPlayer``: with ``loop`` it restarts timestamps at zero, and its read
thread then stops pacing and decodes the file again and again as fast as it can into an
unbounded queue. The thread here paces every generated or file source to real time (a
device paces itself), keeps timestamps increasing across loops, and on the way, off the
event loop, does what every peer would otherwise repeat: video is converted to yuv420p once
and its picture type cleared (FFmpeg's lavfi sources mark every frame as a keyframe, and
libvpx then encodes nothing but keyframes; DESIGN section 8); audio is resampled to the
48 kHz stereo 20 ms frames Opus wants.

Opening and stopping an FFmpeg input can block (a network URL, a device), so both happen in
daemon threads with a deadline: a hung device cannot hold the process open.
"""

from __future__ import annotations

import asyncio
import errno
import fractions
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import av
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.container import InputContainer
from av.frame import Frame
from av.packet import Packet
from av.video.frame import PictureType, VideoFrame

from roomctl.media.alsa import silence_alsa
from roomctl.media.settings import SourceSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

VIDEO_CLOCK = 90000  # RTP's video clock: timestamps are handed on in this base
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms, what aiortc's Opus encoder takes
QUEUE_FRAMES = 50  # per track; when full (the loop is stalled) the oldest frame is dropped
READ_AHEAD = 0.05  # seconds a paced source may decode ahead of real time


class SourceError(Exception):
    """A source cannot be opened; the message names it and says why, in one line."""


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` in a new daemon thread; return its result or raise its exception.

    Cancelling the caller (asyncio.timeout) abandons the thread, which cannot hold the
    process open.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="roomctl-blocking", daemon=True).start()
    return await future


class SourceTrack(MediaStreamTrack):
    """The frames of one kind from a ``Player``, on the media loop."""

    def __init__(self, player: Player, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._player = player
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue(QUEUE_FRAMES)

    def push(self, frame: Frame | None) -> None:
        """Take a frame from the player thread (None: the source ended). On the loop."""
        if self._queue.full():
            self._queue.get_nowait()  # the newest frame is worth more than the oldest
        self._queue.put_nowait(frame)

    async def recv(self) -> Frame | Packet:
        if self.readyState != "live":
            raise MediaStreamError
        self._player.start()
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            self._player.ended(self.kind)
            raise MediaStreamError
        return frame


class CountingTrack(MediaStreamTrack):
    """One peer's subscription: counts the frames its sender took."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self.frames = 0

    async def recv(self) -> Frame | Packet:
        frame = await self._source.recv()
        self.frames += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.stop()


class Player:
    """One opened FFmpeg input and its decoding thread, started by the first ``recv``."""

    def __init__(self, spec: SourceSpec, container: InputContainer,
                 on_end: Callable[[str], None]) -> None:
        self.spec = spec
        self._container = container
        self._on_end = on_end
        self._loop = asyncio.get_running_loop()
        self.tracks: dict[str, SourceTrack] = {}
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, kind: str) -> SourceTrack:
        """Return the track of ``kind``; raises SourceError if the input has none."""
        streams = self._container.streams.video if kind == "video" else \
            self._container.streams.audio
        if not streams:
            raise SourceError(f"{self.spec.text}: has no {kind} stream")
        track = self.tracks[kind] = SourceTrack(self, kind)
        return track

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="roomctl-source",
                                            daemon=True)
            self._thread.start()

    def ended(self, kind: str) -> None:
        self._on_end(kind)

    def stop(self) -> None:
        """Ask the thread to stop; it closes the input. Returns at once."""
        self._quit.set()
        for track in self.tracks.values():
            track.stop()
        if self._thread is None:
            self._container.close()

    def join(self) -> None:
        """Wait for the thread (blocking: call it off the loop)."""
        if self._thread is not None:
            self._thread.join()

    # --- the decoding thread ---------------------------------------------------------------------

    def _deliver(self, kind: str, frame: Frame | None) -> bool:
        track = self.tracks.get(kind)
        if track is None:
            return True
        try:
            self._loop.call_soon_threadsafe(track.push, frame)
        except RuntimeError:  # the loop is closed: nobody listens any more
            return False
        return True

    def _run(self) -> None:
        try:
            self._decode()
        except Exception as exc:  # a read error ends the source like its end would
            log.warning("%s: %s", self.spec.text, exc)
        finally:
            for kind in self.tracks:
                self._deliver(kind, None)
            self._container.close()

    def _decode(self) -> None:
        container = self._container
        streams: list[Any] = []
        if "video" in self.tracks:
            streams.append(container.streams.video[0])
        if "audio" in self.tracks:
            streams.append(container.streams.audio[0])
        video = container.streams.video[0] if "video" in self.tracks else None
        resampler = AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE,
                                   frame_size=AUDIO_FRAME)
        paced = self.spec.kind in ("lavfi", "file")  # devices deliver in real time
        started: float | None = None
        samples = 0  # audio timestamps count samples, so they run on across loops
        video_offset = 0.0  # seconds added to video timestamps after each loop
        video_first: float | None = None
        video_last = 0.0
        frame_time = 1 / float(video.average_rate or 30) if video is not None else 0.0
        decoded = container.decode(*streams)
        while not self._quit.is_set():
            try:
                frame = next(decoded)
            except StopIteration:
                if not self.spec.loop:
                    return
                container.seek(0)
                decoded = container.decode(*streams)
                video_offset, video_first = video_last + frame_time, None
                continue
            except av.FFmpegError as exc:
                if exc.errno == errno.EAGAIN:  # a device with nothing ready yet
                    time.sleep(0.01)
                    continue
                raise
            out: list[tuple[str, Frame, float]] = []
            if isinstance(frame, VideoFrame):
                seconds = float(frame.time) if frame.time is not None else video_last
                if video_first is None:
                    video_first = seconds
                at = max(video_offset + seconds - video_first, video_last)
                video_last = at
                if frame.format.name != "yuv420p":
                    frame = frame.reformat(format="yuv420p")
                frame.pict_type = PictureType.NONE
                frame.pts = int(at * VIDEO_CLOCK)
                frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
                out.append(("video", frame, at))
            elif isinstance(frame, AudioFrame):
                frame.pts = None  # our own clock, below
                for chunk in resampler.resample(frame):
                    chunk.pts = samples
                    chunk.time_base = fractions.Fraction(1, AUDIO_RATE)
                    out.append(("audio", chunk, samples / AUDIO_RATE))
                    samples += chunk.samples
            for kind, item, at in out:
                if paced:
                    if started is None:
                        started = time.monotonic() - at
                    delay = started + at - time.monotonic() - READ_AHEAD
                    if delay > 0 and self._quit.wait(delay):
                        return
                if not self._deliver(kind, item):
                    return


def _open(spec: SourceSpec, timeout: float) -> InputContainer:
    if spec.format is not None and spec.format not in _formats():
        hint = "; try alsa:default (PulseAudio's ALSA plugin)" if spec.kind == "pulse" else ""
        raise SourceError(f"{spec.text}: this FFmpeg cannot read {spec.kind} devices{hint}")
    if spec.kind == "alsa":
        silence_alsa()  # our one line says what failed; libasound's own lines would come first
    try:
        container = av.open(spec.target, mode="r", format=spec.format,
                            options=spec.options or None,
                            timeout=timeout if spec.kind == "file" else None)
    except av.FFmpegError as exc:
        raise SourceError(f"{spec.text}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise SourceError(f"{spec.text}: {exc.strerror or exc}") from None
    if spec.loop and not container.duration:
        container.close()
        raise SourceError(f"{spec.text}: cannot --loop it (it has no duration)")
    return container


def _formats() -> set[str]:
    names: set[str] = set()
    for entry in av.formats_available:
        names.update(entry.split(","))
    return names


class Sources:
    """The opened sources. ``subscribe(kind)`` gives a new peer its own relayed track.

    ``timeout`` bounds opening each source (and each network read of a file source) and
    stopping each one.
    """

    def __init__(self, on_end: Callable[[str], None], timeout: float) -> None:
        self._on_end = on_end
        self.timeout = timeout
        self._relay = MediaRelay()
        self._players: list[Player] = []
        self._tracks: dict[str, SourceTrack] = {}
        self.ended: set[str] = set()
        self._closing = False

    async def open(self, video: SourceSpec | None, audio: SourceSpec | None) -> None:
        """Open the sources; raises SourceError (one line)."""
        for kind, spec in (("video", video), ("audio", audio)):
            if spec is None:
                continue
            # A file that gives both video and audio is opened once, for both.
            player = next((p for p in self._players
                           if p.spec.kind == "file" and p.spec.target == spec.target), None)
            if player is None:
                player = Player(spec, await self._open(spec), self._source_ended)
                self._players.append(player)
            self._tracks[kind] = player.add(kind)

    async def _open(self, spec: SourceSpec) -> InputContainer:
        def blocking() -> InputContainer:
            return _open(spec, self.timeout)

        try:
            async with asyncio.timeout(self.timeout):
                return await in_daemon_thread(blocking)
        except TimeoutError:
            raise SourceError(f"{spec.text}: did not open in {self.timeout:g} s") from None

    def _source_ended(self, kind: str) -> None:
        if self._closing:
            return  # stopped by us while leaving, not ended: nothing to report
        if kind not in self.ended:
            self.ended.add(kind)
            self._on_end(kind)

    def subscribe(self, kind: str) -> CountingTrack | None:
        """Return a new subscription to the ``kind`` source, or None if there is none."""
        track = self._tracks.get(kind)
        if track is None or kind in self.ended:
            return None
        return CountingTrack(self._relay.subscribe(track, buffered=False))

    async def close(self) -> None:
        """Stop the sources and wait for their threads; one that will not stop is left."""
        self._closing = True
        players, self._players, self._tracks = self._players, [], {}
        for player in players:
            player.stop()
            try:
                async with asyncio.timeout(self.timeout):
                    await in_daemon_thread(player.join)
            except TimeoutError:
                log.warning("%s did not stop in %g s", player.spec.text, self.timeout)
