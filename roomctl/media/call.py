"""The trio side of ``roomctl join``: the room's WebSocket, the output, and leaving cleanly.

One task reads the room and posts what concerns the call to the mesh on the media loop; one
task takes what the mesh says (offers and answers to relay, events, stats) and sends or
prints it. All sends to the daemon after the join happen in that task or, once both have
stopped, in the leaving code, so replies are never read by two tasks at once.

Stopping: SIGINT, SIGTERM or ``--duration`` cancel one scope; the leaving code then runs
shielded with its own deadlines: ``part`` (peers get remove-peer at once), close every peer
connection and recording, ``leave`` (no grace period), stop the sources and the loop.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import trio

from protocol.messages import (
    AddPeer,
    Error,
    IceCandidateRelayed,
    Join,
    Leave,
    Part,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RelaySessionDescription,
    RemovePeer,
    SessionDescription,
    SessionDescriptionRelayed,
    SetMediaState,
)
from roomctl import output
from roomctl.client import CliError, ExitCode, Session, Target, open_room
from roomctl.media.bridge import AsyncioThread, TrioInbox
from roomctl.media.ice import apply_host_candidate_policy
from roomctl.media.peers import Mesh, MeshItem, Outgoing, Report
from roomctl.media.settings import CallSettings
from roomctl.media.sources import SourceError, Sources
from roomctl.media.stats import Sample
from roomctl.options import until_signalled
from roomctl.rooms import participant_meta

INBOX_SIZE = 1024  # mesh -> trio items not yet printed or sent (see TrioInbox)
LEAVE_TIMEOUT = 5.0  # for part and leave each


class Printer:
    """Events and stats: a line on stderr always, a JSON object on stdout with ``--json``."""

    def __init__(self, json_output: bool) -> None:
        self.json = json_output

    def event(self, event: str, fields: dict[str, Any], at: float | None = None) -> None:
        at = time.time() if at is None else at
        print(f"{output.clock(at)} {_describe(event, fields)}", file=sys.stderr, flush=True)
        if self.json:
            output.emit_json({"event": event, **fields, "at": output.iso(at)})

    def stats(self, sample: Sample) -> None:
        print(f"{output.clock(sample.at)} stats {sample.line()}", file=sys.stderr, flush=True)
        if self.json:
            output.emit_json({**sample.to_json(), "at": output.iso(sample.at)})


def _describe(event: str, f: dict[str, Any]) -> str:
    who = f"{f.get('name')} ({f.get('peer')})"
    match event:
        case "joined":
            return f"joined room {f['room']} as {f['name']} ({f['session']})"
        case "peer-added":
            return f"{who}: connecting, {'offering' if f['offer'] else 'waiting for an offer'}"
        case "peer-connected":
            return f"{who}: connected in {f['after']:.2f} s"
        case "first-frame":
            return f"{who}: first {f['kind']} frame {f['after']:.2f} s after start"
        case "peer-failed":
            return f"{who}: failed, dropped: {f['reason']}"
        case "peer-left":
            return f"{who}: closed ({f['reason']})"
        case "peer-warning":
            return f"{who}: {f['message']}"
        case "recording":
            return f"{who}: {f['frames']} {f['kind']} frames recorded in {f['path']}"
        case "source-ended":
            return f"the {f['kind']} source ended; sending no more {f['kind']}"
        case "left":
            return f"left room {f['room']} ({f['reason']})"
        case "warning":
            return f"warning: {f['message']}"
    return f"{event} {f}"


class Call:
    """One ``roomctl join`` run."""

    def __init__(self, target: Target, room: str, name: str, settings: CallSettings,
                 *, duration: float | None, printer: Printer) -> None:
        self.target = target
        self.room = room
        self.name = name
        self.settings = settings
        self.duration = duration
        self.out = printer
        self.started_at = time.monotonic()
        self.stop = trio.CancelScope()
        self.reason = "connection closed"
        self.clean = True  # False if the media loop did not stop in time
        self.names: dict[str, str] = {}
        self.refs: dict[str, str] = {}  # ref of a relay -> the peer it was for
        self.ended: set[str] = set()
        self.left = False  # "left" was reported: it is the last event of a run

    async def run(self) -> None:
        """Run until a signal or ``--duration``; raises CliError for what ends it otherwise.

        A second signal while leaving ends the process at once (``until_signalled``).
        """
        await until_signalled(self._run_until_stopped, self._signalled)

    async def _run_until_stopped(self) -> None:
        with self.stop:
            await self._run_media()

    def _signalled(self, signum: signal.Signals) -> None:
        self.reason = signum.name
        self.stop.cancel()

    async def _run_media(self) -> None:
        apply_host_candidate_policy(self.settings)
        media = AsyncioThread()
        media.start()
        inbox = TrioInbox[MeshItem](INBOX_SIZE)
        sources = Sources(lambda kind: inbox.put(Report("source-ended", {"kind": kind})),
                          self.target.timeout)
        mesh = Mesh(self.settings, sources, inbox, self.started_at)
        try:
            try:
                with trio.fail_after(self.target.timeout + 1):
                    await media.call(sources.open(self.settings.video, self.settings.audio))
            except SourceError as exc:
                raise CliError(ExitCode.REFUSED, f"cannot open source {exc}") from None
            except trio.TooSlowError:
                raise CliError(ExitCode.REFUSED, "the sources did not open in "
                                                 f"{self.target.timeout:g} s") from None
            async with open_room(self.target, self.room, name=self.name) as session:
                await self._in_room(session, media, mesh, inbox)
        finally:
            with trio.CancelScope(shield=True):
                timeout = self.settings.close_timeout
                with trio.move_on_after(timeout * 3):
                    await media.call(mesh.close("leaving"))
                with trio.move_on_after(timeout):
                    await media.call(sources.close())
                with trio.move_on_after(timeout) as scope:
                    await media.stop()
                self.clean = not scope.cancelled_caught
                self._drain(inbox)

    async def _in_room(self, session: Session, media: AsyncioThread, mesh: Mesh,
                       inbox: TrioInbox[MeshItem]) -> None:
        welcome = session.welcome
        assert welcome is not None  # open_room yields welcomed sessions
        for participant in welcome.participants:
            self.names[participant.id] = participant_meta(participant).name
        me = self.names.get(welcome.session_id, self.name)
        self.out.event("joined", {"room": self.room, "session": welcome.session_id,
                                  "name": me})
        try:
            await session.request(Join(ref=session.next_ref()))
            await session.request(self._media_state(session))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_room, session, media, mesh)
                nursery.start_soon(self._forward, session, inbox)
                nursery.start_soon(media.call, mesh.run_stats())
                if self.duration is not None:
                    nursery.start_soon(self._stop_after, self.duration)
        finally:
            with trio.CancelScope(shield=True):
                await self._leave(session, media, mesh, inbox)

    def _media_state(self, session: Session) -> SetMediaState:
        video, audio = self.settings.video, self.settings.audio
        return SetMediaState(
            ref=session.next_ref(),
            audio_muted=audio is None or audio.silent or "audio" in self.ended,
            video_muted=video is None or "video" in self.ended)

    async def _stop_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.reason = "duration"
        self.stop.cancel()

    async def _read_room(self, session: Session, media: AsyncioThread, mesh: Mesh) -> None:
        while True:
            frame = await session.receive()
            match frame:
                case AddPeer():
                    media.post(mesh.add_peer, frame.peer_id, self._name(frame.peer_id),
                               frame.should_create_offer)
                case RemovePeer():
                    media.post(mesh.remove_peer, frame.peer_id, "removed from the call")
                case ParticipantLeft():
                    self.names.pop(frame.participant_id, None)
                    media.post(mesh.remove_peer, frame.participant_id,
                               f"left the room: {frame.reason}")
                case SessionDescriptionRelayed():
                    media.post(mesh.description, frame.peer_id, self._name(frame.peer_id),
                               frame.description.type, frame.description.sdp)
                case IceCandidateRelayed():
                    c = frame.candidate
                    media.post(mesh.candidate, frame.peer_id, {
                        "candidate": c.candidate, "sdp_mid": c.sdp_mid,
                        "sdp_m_line_index": c.sdp_m_line_index})
                case ParticipantJoined() | ParticipantUpdated():
                    p = frame.participant
                    self.names[p.id] = participant_meta(p).name
                    media.post(mesh.rename, p.id, self.names[p.id])
                case Error(ref=ref) if ref in self.refs:
                    peer = self.refs.pop(ref)
                    self.out.event("peer-warning", {
                        "peer": peer, "name": self._name(peer),
                        "message": f"the daemon refused a relay: {frame.code}: {frame.message}"})
                case Error():
                    self.out.event("warning", {"message": f"{frame.code}: {frame.message}"})
                case _:
                    ref = getattr(frame, "ref", None)
                    if ref is not None:
                        self.refs.pop(ref, None)

    def _name(self, peer_id: str) -> str:
        return self.names.get(peer_id, "guest")

    async def _forward(self, session: Session, inbox: TrioInbox[MeshItem]) -> None:
        async for item in inbox.receive:
            if isinstance(item, Outgoing):
                ref = session.next_ref()
                self.refs[ref] = item.peer_id
                await session.send(RelaySessionDescription(
                    ref=ref, peer_id=item.peer_id,
                    description=SessionDescription(type=item.type, sdp=item.sdp)))  # type: ignore[arg-type]
            elif isinstance(item, Report):
                self.out.event(item.event, item.fields, item.at)
                if item.event == "source-ended":
                    self.ended.add(item.fields["kind"])
                    await session.send(self._media_state(session))
            else:
                self.out.stats(item)

    def _drain(self, inbox: TrioInbox[MeshItem]) -> None:
        """Print the events that closing produced (the forwarding task has stopped).

        Once "left" is out, nothing follows it: what closing the sources and the loop
        reports afterwards is dropped.
        """
        while True:
            try:
                item = inbox.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            if isinstance(item, Report) and not self.left:
                self.out.event(item.event, item.fields, item.at)

    async def _leave(self, session: Session, media: AsyncioThread, mesh: Mesh,
                     inbox: TrioInbox[MeshItem]) -> None:
        try:
            with trio.move_on_after(LEAVE_TIMEOUT):
                await session.request(Part(ref=session.next_ref()))
        except CliError:
            pass  # the connection is gone: peers hear of it from the daemon
        with trio.move_on_after(self.settings.close_timeout * 3):
            await media.call(mesh.close("leaving"))
        self._drain(inbox)
        try:
            with trio.move_on_after(LEAVE_TIMEOUT):
                await session.request(Leave(ref=session.next_ref()))
        except CliError:
            pass
        self.out.event("left", {"room": self.room, "reason": self.reason})
        self.left = True
