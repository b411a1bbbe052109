"""The WebRTC mesh: one RTCPeerConnection per remote participant, on the media loop.

Theory of operation. The trio side reads the room and posts what concerns the call here
(``add_peer``, ``remove_peer``, ``description``, ``candidate``, ``rename``); these are plain
calls on the loop. Each peer is a ``PeerLink`` with its own task and inbox, so signaling for
one peer is handled in order, and a peer that is slow or fails never holds up another.
What the mesh has to say goes back through the ``TrioInbox``: ``Outgoing`` offers and
answers to relay, ``Report`` events, and ``Sample`` stats.

- Told to offer (``add-peer`` with ``should_create_offer``), a link adds a transceiver per
  kind: send-receive with our relayed source, receive-only when we send nothing of that kind
  (so a peer that sends nothing still receives), and relays the offer.
- Otherwise it waits for the offer, answers, and puts our sources on the offered transceivers.
- aiortc puts its candidates in the SDP and never trickles; candidates trickled by browsers
  are added as they come.
- A link that is not connected ``connect_timeout`` seconds after it was created, whose
  connection fails, or whose every step raises, is reported (``peer-failed``) and closed;
  the others carry on. Every close is bounded by ``close_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from roomctl.media.bridge import TrioInbox
from roomctl.media.ice import configuration
from roomctl.media.recorder import AudioRecorder, TrackRecorder, VideoRecorder, recording_path
from roomctl.media.settings import CallSettings
from roomctl.media.sources import CountingTrack, Sources
from roomctl.media.stats import Counters, RateMeter, Sample, round_trip, transport_bytes

log = logging.getLogger(__name__)

INBOX_SIZE = 256  # signaling frames waiting for one peer; beyond that the peer is misbehaving


@dataclass(frozen=True)
class Outgoing:
    """An offer or answer to relay to ``peer_id``."""

    peer_id: str
    type: str
    sdp: str


@dataclass(frozen=True)
class Report:
    """An event for the output: ``event`` and its fields (``peer`` and ``name`` when a peer's)."""

    event: str
    fields: dict[str, Any]
    at: float = field(default_factory=time.time)


MeshItem = Outgoing | Report | Sample


class PeerFailure(Exception):
    """This peer cannot go on; the message says why."""


class PeerLink:
    """One remote participant: its peer connection, signaling inbox and receivers."""

    def __init__(self, mesh: Mesh, peer_id: str, name: str, offer: bool) -> None:
        self.mesh = mesh
        self.peer_id = peer_id
        self.name = name
        self.offer = offer
        self.created = time.monotonic()
        self.pc = RTCPeerConnection(configuration(mesh.settings))
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(INBOX_SIZE)
        self.senders: dict[str, CountingTrack] = {}
        self.counters = Counters()
        self.meter = RateMeter()
        self.connected = False
        self.closing = False
        self._receivers: list[asyncio.Task[None]] = []
        self._recording = ThreadPoolExecutor(1, thread_name_prefix="roomctl-record") \
            if mesh.settings.record_dir is not None else None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def ident(self) -> dict[str, Any]:
        return {"peer": self.peer_id, "name": self.name}

    # --- signaling ---------------------------------------------------------------------------

    def deliver(self, kind: str, payload: Any) -> None:
        try:
            self.inbox.put_nowait((kind, payload))
        except asyncio.QueueFull:
            self.mesh.drop(self, "peer-failed", f"more than {INBOX_SIZE} signaling frames queued")

    async def _run(self) -> None:
        settings = self.mesh.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.connect_timeout
        try:
            if self.offer:
                await self._step(self._make_offer())
            while True:
                if self.connected:
                    kind, payload = await self.inbox.get()
                else:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise PeerFailure(
                            f"not connected after {settings.connect_timeout:g} s "
                            f"(ICE {self.pc.iceConnectionState}, "
                            f"signaling {self.pc.signalingState})")
                    try:
                        async with asyncio.timeout(left):
                            kind, payload = await self.inbox.get()
                    except TimeoutError:
                        continue
                await self._step(self._handle(kind, payload))
        except PeerFailure as exc:
            self.mesh.drop(self, "peer-failed", str(exc))
        except Exception as exc:  # an aiortc error is this peer's problem, not the mesh's
            log.debug("peer %s", self.peer_id, exc_info=True)
            self.mesh.drop(self, "peer-failed", f"{type(exc).__name__}: {exc}")

    async def _step(self, coro: Any) -> None:
        try:
            async with asyncio.timeout(self.mesh.settings.connect_timeout):
                await coro
        except TimeoutError:
            raise PeerFailure("a signaling step took longer than "
                              f"{self.mesh.settings.connect_timeout:g} s") from None

    async def _make_offer(self) -> None:
        for kind in ("audio", "video"):
            track = self.mesh.sources.subscribe(kind)
            if track is not None:
                self.pc.addTransceiver(track, direction="sendrecv")
                self.senders[kind] = track
            else:
                self.pc.addTransceiver(kind, direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._send_local()

    def _send_local(self) -> None:
        local = self.pc.localDescription
        self.mesh.inbox.put(Outgoing(self.peer_id, local.type, local.sdp))

    async def _handle(self, kind: str, payload: Any) -> None:
        if kind == "description":
            await self._on_description(*payload)
        elif kind == "candidate":
            await self._on_candidate(payload)

    async def _on_description(self, type_: str, sdp: str) -> None:
        state = self.pc.signalingState
        if type_ == "offer":
            if state == "have-local-offer":
                self.mesh.warn(self, "ignored an offer that crossed ours")
                return
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            for kind in ("audio", "video"):
                if kind in self.senders or not any(
                        t.kind == kind and t.sender.track is None
                        for t in self.pc.getTransceivers()):
                    continue  # already sending it, or the offer has no place for it
                track = self.mesh.sources.subscribe(kind)
                if track is not None:
                    self.pc.addTrack(track)
                    self.senders[kind] = track
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            self._send_local()
        elif type_ == "answer":
            if state != "have-local-offer":
                self.mesh.warn(self, f"ignored an answer in signaling state {state}")
                return
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        else:
            self.mesh.warn(self, f"ignored a session description of type {type_!r}")

    async def _on_candidate(self, candidate: dict[str, Any]) -> None:
        line = candidate.get("candidate") or ""
        if not line:
            await self.pc.addIceCandidate(None)  # end of candidates
            return
        try:
            parsed = candidate_from_sdp(line.removeprefix("candidate:"))
        except (AssertionError, ValueError, IndexError):
            self.mesh.warn(self, f"ignored a malformed ICE candidate {line[:80]!r}")
            return
        parsed.sdpMid = candidate.get("sdp_mid")
        parsed.sdpMLineIndex = candidate.get("sdp_m_line_index")
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        await self.pc.addIceCandidate(parsed)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self.connected:
            self.connected = True
            self.mesh.inbox.put(Report("peer-connected", {
                **self.ident, "after": round(time.monotonic() - self.created, 3)}))
        elif state == "failed":
            self.mesh.drop(self, "peer-failed", "the connection failed (ICE or DTLS)")
        elif state == "closed" and not self.closing:
            self.mesh.drop(self, "peer-failed", "the peer closed the connection")

    # --- receiving ---------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        task = asyncio.get_running_loop().create_task(self._receive(track))
        self._receivers.append(task)

    async def _receive(self, track: MediaStreamTrack) -> None:
        kind = track.kind
        recorder = self._recorder(kind)
        loop = asyncio.get_running_loop()
        first = True
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                if isinstance(frame, av.VideoFrame):
                    self.counters.video_frames_in += 1
                    self.counters.video_size_in = f"{frame.width}x{frame.height}"
                else:
                    self.counters.audio_frames_in += 1
                if first:
                    first = False
                    self.mesh.inbox.put(Report("first-frame", {
                        **self.ident, "kind": kind,
                        "after": round(time.monotonic() - self.mesh.started_at, 3),
                        "since_added": round(time.monotonic() - self.created, 3)}))
                if recorder is not None:
                    try:
                        await loop.run_in_executor(self._recording, recorder.write, frame)
                    except Exception as exc:
                        self.mesh.warn(self, f"stopped recording {kind} to {recorder.path}: "
                                             f"{exc}")
                        await self._finish(recorder, kind)
                        recorder = None
        finally:
            if recorder is not None:
                await self._finish(recorder, kind)

    def _recorder(self, kind: str) -> TrackRecorder | None:
        directory = self.mesh.settings.record_dir
        if directory is None:
            return None
        path = recording_path(directory, self.name, self.peer_id, kind)
        try:
            path.touch()  # claim the name at once: a second track of this kind gets another
        except OSError as exc:
            self.mesh.warn(self, f"cannot record {kind} to {path}: {exc.strerror or exc}")
            return None
        return VideoRecorder(path) if kind == "video" else AudioRecorder(path)

    async def _finish(self, recorder: TrackRecorder, kind: str) -> None:
        # The recording thread runs writes in order, so the close comes after the last write,
        # even when this task is being cancelled.
        future = asyncio.get_running_loop().run_in_executor(self._recording, recorder.close)
        try:
            frames = await asyncio.shield(future)
        except Exception as exc:
            self.mesh.warn(self, f"could not finish {recorder.path}: {exc}")
            return
        self.mesh.inbox.put(Report("recording", {
            **self.ident, "kind": kind, "path": str(recorder.path), "frames": frames}))

    # --- stats and closing -------------------------------------------------------------------

    async def sample(self) -> Sample:
        """Return this peer's stats now."""
        report = await self.pc.getStats()
        bytes_in, bytes_out = transport_bytes(report)
        video_out = self.senders["video"].frames if "video" in self.senders else 0
        audio_out = self.senders["audio"].frames if "audio" in self.senders else 0
        bitrate_in, bitrate_out, fps_in, fps_out = self.meter.update(
            bytes_in=bytes_in, bytes_out=bytes_out,
            video_in=self.counters.video_frames_in, video_out=video_out)
        return Sample(
            peer=self.peer_id, name=self.name, state=self.pc.connectionState,
            video_frames_in=self.counters.video_frames_in,
            audio_frames_in=self.counters.audio_frames_in,
            video_frames_out=video_out, audio_frames_out=audio_out,
            video_fps_in=fps_in, video_fps_out=fps_out,
            bitrate_in=bitrate_in, bitrate_out=bitrate_out, rtt=round_trip(report),
            video_size_in=self.counters.video_size_in)

    async def close(self) -> None:
        """Close the connection, stop our subscriptions, finish recordings; bounded."""
        self.closing = True
        timeout = self.mesh.settings.close_timeout
        self.task.cancel()
        for track in self.senders.values():
            track.stop()
        try:
            async with asyncio.timeout(timeout):
                await self.pc.close()
        except TimeoutError:
            self.mesh.warn(self, f"the peer connection did not close in {timeout:g} s")
        if self._receivers:
            # Closing ends the tracks; receivers then finish their recordings. A receiver of
            # a connection that never started is never ended: cancel it.
            _, pending = await asyncio.wait(self._receivers, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=timeout)
        if self._recording is not None:
            self._recording.shutdown(wait=False)


class Mesh:
    """Every PeerLink, keyed by peer id; all methods run on the media loop."""

    def __init__(self, settings: CallSettings, sources: Sources, inbox: TrioInbox[MeshItem],
                 started_at: float) -> None:
        self.settings = settings
        self.sources = sources
        self.inbox = inbox
        self.started_at = started_at  # time.monotonic() when the command started
        self.links: dict[str, PeerLink] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def add_peer(self, peer_id: str, name: str, offer: bool) -> None:
        old = self.links.get(peer_id)
        if old is not None:
            self.drop(old, "peer-left", "replaced by a new connection")
        self.links[peer_id] = PeerLink(self, peer_id, name, offer)
        self.inbox.put(Report("peer-added", {"peer": peer_id, "name": name, "offer": offer}))

    def remove_peer(self, peer_id: str, reason: str) -> None:
        link = self.links.get(peer_id)
        if link is not None:
            self.drop(link, "peer-left", reason)

    def description(self, peer_id: str, name: str, type_: str, sdp: str) -> None:
        link = self.links.get(peer_id)
        if link is None:
            if type_ != "offer":
                return  # an answer for a peer already dropped
            # An offer before add-peer (the daemon sends add-peer first; be lenient anyway).
            self.add_peer(peer_id, name, offer=False)
            link = self.links[peer_id]
        link.deliver("description", (type_, sdp))

    def candidate(self, peer_id: str, candidate: dict[str, Any]) -> None:
        link = self.links.get(peer_id)
        if link is not None:
            link.deliver("candidate", candidate)

    def rename(self, peer_id: str, name: str) -> None:
        link = self.links.get(peer_id)
        if link is not None:
            link.name = name

    def warn(self, link: PeerLink, message: str) -> None:
        self.inbox.put(Report("peer-warning", {**link.ident, "message": message}))

    def drop(self, link: PeerLink, event: str, reason: str) -> None:
        """Forget ``link``, report ``event`` with ``reason``, and close it in the background."""
        if link.closing:
            return
        link.closing = True
        if self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
        self.inbox.put(Report(event, {**link.ident, "reason": reason}))
        task = asyncio.get_running_loop().create_task(link.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def run_stats(self) -> None:
        """Post a stats sample per peer every ``stats_interval`` seconds; runs until cancelled."""
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            await asyncio.gather(*(self._sample(link) for link in list(self.links.values())))

    async def _sample(self, link: PeerLink) -> None:
        try:
            # Generous: on a loaded machine getStats can lag; a late sample beats none.
            async with asyncio.timeout(max(self.settings.stats_interval, 5.0)):
                self.inbox.put(await link.sample())
        except TimeoutError:
            log.debug("no stats from %s in time", link.peer_id)
        except Exception:  # a bug of ours or aiortc's; the peer itself carries on
            log.warning("stats of %s failed", link.peer_id, exc_info=True)

    async def close(self, reason: str) -> None:
        """Close every link (concurrently) and wait for them, bounded by the close timeout."""
        for link in list(self.links.values()):
            self.drop(link, "peer-left", reason)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=self.settings.close_timeout * 3)
