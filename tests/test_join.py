"""``roomctl join``: real aiortc mesh peers in a room of a real ``roomctl serve``.

Every peer is a real ``roomctl join --json`` process, mostly sending FFmpeg's test pattern
(320x240 at 15 fps, so that four peers fit on this 2-core machine) and a sine tone, or a
short WebM file made here; one meets two real Chromium pages (the room page). Media flows
peer to peer over real WebRTC on 127.0.0.1 only (``--ice-address 127.0.0.1``). Assertions
read the peers' own JSON events and stats, the room as ``roomctl room show`` sees it, and
recordings decoded with PyAV.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import pytest
import trio
import trio_websocket
from playwright.sync_api import Browser

from roomctl.media import settings
from tests.browser_util import RoomPage, browser, playwright  # noqa: F401 - fixtures
from tests.conftest import ServeProcess, start_serve
from tests.join_util import (
    LOOPBACK_ONLY,
    TEST_MEDIA,
    WAIT,
    Joiner,
    cli_env,
    roomctl,
    wait_until,
)

FRAMES_IN_5S = 20  # of the 75 that 15 fps gives in 5 s: generous for a loaded machine
ERROR_WITHIN = 10.0  # seconds a failing join may take to say so


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One ``roomctl serve`` for the module; each test makes its own room."""
    sp = start_serve(tmp_path_factory.mktemp("join") / "data", "--memory",
                     "--log-level", "warning")
    yield sp
    sp.proc.terminate()
    sp.proc.wait(timeout=WAIT)


@pytest.fixture
def room(daemon: ServeProcess, request: pytest.FixtureRequest) -> str:
    """A new room, named after the test."""
    name = re.sub(r"[^A-Za-z0-9]", "", request.node.name)[-60:]
    created = roomctl(daemon, "room", "create", name)
    assert created.returncode == 0, created.stderr
    return name


@pytest.fixture
def join(daemon: ServeProcess, room: str, tmp_path: Path) -> Iterator[Callable[..., Joiner]]:
    """``join(name, *args)`` starts ``roomctl join ROOM``; all are killed at teardown."""
    started: list[Joiner] = []

    def start(name: str, *args: str) -> Joiner:
        joiner = Joiner(daemon, room, name, *args, stderr_path=tmp_path / f"{name}.stderr")
        started.append(joiner)
        return joiner

    yield start
    for joiner in started:
        joiner.kill()


def stop_all(*running: Joiner, signum: int = signal.SIGTERM) -> list[int]:
    """Signal every joiner at once, then return their exit statuses (bounded)."""
    for joiner in running:
        joiner.proc.send_signal(signum)
    return [joiner.finish() for joiner in running]


def frames_after_connecting(joiner: Joiner, peer: str, seconds: float) -> int:
    """Video frames ``joiner`` had from ``peer`` in its last sample at most ``seconds`` after
    the two connected (stats come every second)."""
    connected = _epoch(joiner.wait_event("peer-connected", peer=peer)["at"])
    limit = connected + seconds + 0.5
    wait_until(lambda: any(_epoch(s["at"]) > limit for s in joiner.of("stats", peer=peer)),
               f"{joiner.name}: a stats sample of {peer} after {seconds} s")
    in_time = [s for s in joiner.of("stats", peer=peer) if _epoch(s["at"]) <= limit]
    assert in_time, joiner.of("stats", peer=peer)
    return int(in_time[-1]["video_frames_in"])


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def receiving(joiner: Joiner, peer: str, frames: int, since: int = 0) -> bool:
    """Whether, in the events from index ``since`` on, ``joiner``'s stats show ``peer``
    connected and ``frames`` more video and audio frames from it (a polling helper)."""
    samples = [e for e in joiner.events[since:] if e["event"] == "stats" and e["peer"] == peer]
    if len(samples) < 2:
        return False
    first, last = samples[0], samples[-1]
    return (last["state"] == "connected"
            and last["video_frames_in"] - first["video_frames_in"] >= frames
            and last["audio_frames_in"] - first["audio_frames_in"] >= frames)


EVERY_SECOND = ("--stats-interval", "1")


def test_four_peers_mesh_record_and_one_leaves(join: Callable[..., Joiner],
                                              tmp_path: Path) -> None:
    record = tmp_path / "rec"
    common = (*TEST_MEDIA, *LOOPBACK_ONLY, *EVERY_SECOND)
    alice = join("alice", *common, "--record", str(record))
    bob = join("bob", *common)
    carol = join("carol", *common)
    first_three = [alice, bob, carol]
    ids = {j.name: j.session for j in first_three}

    # Each of the three receives video and audio from both others, promptly.
    for joiner in first_three:
        for other in first_three:
            if other is joiner:
                continue
            peer = ids[other.name]
            joiner.wait_event("first-frame", peer=peer, kind="video")
            joiner.wait_event("first-frame", peer=peer, kind="audio")
            assert frames_after_connecting(joiner, peer, 5.0) >= FRAMES_IN_5S
            stats = joiner.last_stats(peer)
            assert stats is not None and stats["video_size_in"] == "320x240"
            assert stats["name"] == other.name
            assert stats["audio_frames_in"] > 0 and stats["video_frames_out"] > 0

    # A fourth joins late and connects to all three (it offers: it is the newcomer).
    dave = join("dave", *common)
    ids["dave"] = dave.session
    for joiner in first_three:
        assert dave.wait_event("peer-added", peer=ids[joiner.name])["offer"] is True
        assert frames_after_connecting(dave, ids[joiner.name], 5.0) >= FRAMES_IN_5S
        assert joiner.wait_event("peer-added", peer=ids["dave"])["offer"] is False
        joiner.wait_event("peer-connected", peer=ids["dave"])

    # Carol leaves with SIGTERM: exit 0, and the others drop her and keep each other.
    assert carol.stop(signal.SIGTERM) == 0
    assert carol.of("left")[-1]["reason"] == "SIGTERM"
    remaining = [alice, bob, dave]
    for joiner in remaining:
        joiner.wait_event("peer-left", peer=ids["carol"])
    marks = {j.name: len(j.events) for j in remaining}
    for joiner in remaining:
        for other in remaining:
            if other is not joiner:
                wait_until(lambda j=joiner, o=other: receiving(j, ids[o.name], 10, marks[j.name]),
                           f"{joiner.name} still receiving from {other.name}")
        assert not joiner.of("peer-failed"), joiner.of("peer-failed")
        assert not [s for s in joiner.events[marks[joiner.name]:]
                    if s["event"] == "stats" and s["peer"] == ids["carol"]]

    # Everyone else leaves (Ctrl-C for alice); her recordings decode to what she counted.
    assert stop_all(alice, signum=signal.SIGINT) + stop_all(bob, dave) == [0, 0, 0]
    recordings = alice.of("recording")
    assert {(r["name"], r["kind"]) for r in recordings} == {
        (n, k) for n in ("bob", "carol", "dave") for k in ("video", "audio")}
    for entry in recordings:
        path = Path(entry["path"])
        assert path.parent == record
        assert path.name.startswith(f"{entry['name']}-{entry['peer']}.")
        with av.open(str(path)) as container:
            if entry["kind"] == "video":
                frames = list(container.decode(video=0))
                assert len(frames) == entry["frames"] >= FRAMES_IN_5S
                assert {(f.width, f.height) for f in frames} == {(320, 240)}
            else:
                samples = sum(f.samples for f in container.decode(audio=0))
                # Each received audio frame is 20 ms; Opus pads the end by up to one frame.
                assert abs(samples - entry["frames"] * 960) <= 960 * 2, (samples, entry)
                assert entry["frames"] >= 50


def test_a_background_join_stops_on_sigterm_and_left_is_its_last_event(
        daemon: ServeProcess, room: str, tmp_path: Path) -> None:
    common = (*TEST_MEDIA, *LOOPBACK_ONLY)
    first = Joiner(daemon, room, "first", *common, stderr_path=tmp_path / "first.stderr",
                   background=True)
    second = Joiner(daemon, room, "second", *common, stderr_path=tmp_path / "second.stderr")
    try:
        # Media flows both ways, so that both sources are in use when they leave.
        first.wait_event("first-frame", peer=second.session, kind="audio")
        second.wait_event("first-frame", peer=first.session, kind="audio")
        first.proc.send_signal(signal.SIGINT)  # ignored, as the shell asked
        time.sleep(1.0)
        first.check_running()
        assert first.stop(signal.SIGTERM) == 0
        assert second.stop(signal.SIGINT) == 0
        for joiner, reason in ((first, "SIGTERM"), (second, "SIGINT")):
            events = [e["event"] for e in joiner.events if e["event"] != "stats"]
            assert events[-1] == "left" and joiner.of("left")[0]["reason"] == reason, events
            assert "source-ended" not in events  # stopping them is not their ending
            lines = joiner.stderr().strip().splitlines()
            assert "left room" in lines[-1], lines
    finally:
        first.kill()
        second.kill()


@contextmanager
def silent_participant(sp: ServeProcess, room: str, name: str) -> Iterator[None]:
    """A participant that enters the call and then never signals (a crashed browser tab).

    A real WebSocket client on its own trio loop in a thread, for the length of the block.
    """
    done = threading.Event()
    joined = threading.Event()

    async def main() -> None:
        async with trio_websocket.open_websocket_url(
                f"{sp.url}/v1/rooms/{room}", subprotocols=["roomctl.v1"],
                connect_timeout=WAIT) as ws:
            for frame in ({"type": "hello", "ref": "1", "name": name},
                          {"type": "join", "ref": "2"}):
                await ws.send_message(json.dumps(frame))
            joined.set()
            while not done.is_set():
                with trio.move_on_after(0.1):
                    await ws.get_message()  # add-peer telling it to offer: it never does

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    try:
        assert joined.wait(WAIT)
        yield
    finally:
        done.set()
        thread.join(WAIT)


def test_peers_that_cannot_connect_are_dropped_and_the_others_carry_on(
        join: Callable[..., Joiner], daemon: ServeProcess, room: str) -> None:
    common = (*TEST_MEDIA, *EVERY_SECOND, "--connect-timeout", "3")
    a = join("a", *common, *LOOPBACK_ONLY)
    b = join("b", *common, *LOOPBACK_ONLY)
    # Candidates on ::1 only: nothing pairs with the others' 127.0.0.1, so ICE fails.
    lonely = join("lonely", *common, "--ice-address", "::1")
    lonely_id = lonely.session
    a.wait_event("peer-connected", peer=b.session)
    failed = a.wait_event("peer-failed", peer=lonely_id)
    assert failed["name"] == "lonely" and failed["reason"]
    lonely.wait_event("peer-failed", peer=a.session)
    lonely.check_running()

    # A peer that never offers: dropped when the connect timeout runs out, not before.
    with silent_participant(daemon, room, "silent"):
        added = a.wait_event("peer-added", name="silent")
        failed = a.wait_event("peer-failed", name="silent")
    waited = _epoch(failed["at"]) - _epoch(added["at"])
    assert 3 <= waited < 3 + 3, waited
    assert failed["reason"].startswith("not connected after 3 s (ICE new"), failed

    marks = len(a.events)
    wait_until(lambda: receiving(a, b.session, 5, marks), "a still receiving from b")
    assert not b.of("peer-failed", peer=a.session)
    assert stop_all(lonely, a, b) == [0, 0, 0]


def make_clip(path: Path, seconds: int = 1) -> None:
    """Write a short WebM with VP8 video (320x240, 15 fps) and Opus audio."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libvpx", rate=15)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = out.add_stream("libopus", rate=48000)
        audio.layout = "stereo"
        with av.open(f"testsrc=size=320x240:rate=15:duration={seconds},format=yuv420p",
                     format="lavfi") as pattern:
            for frame in pattern.decode(video=0):
                out.mux(video.encode(frame))
        out.mux(video.encode(None))
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000, frame_size=960)
        samples = 0
        with av.open(f"sine=sample_rate=48000:duration={seconds}", format="lavfi") as tone:
            for frame in tone.decode(audio=0):
                for chunk in resampler.resample(frame):
                    chunk.pts, samples = samples, samples + chunk.samples
                    out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))


def test_files_play_once_or_loop_to_a_receive_only_peer_and_duration_leaves(
        join: Callable[..., Joiner], daemon: ServeProcess, room: str, tmp_path: Path) -> None:
    clip = tmp_path / "clip.webm"
    make_clip(clip, seconds=1)
    viewer = join("viewer", "--no-video", "--no-audio", *LOOPBACK_ONLY, *EVERY_SECOND)
    looped = join("looped", "--video", str(clip), "--audio", str(clip), "--loop",
                  *LOOPBACK_ONLY, *EVERY_SECOND, "--duration", "8")
    once = join("once", "--video", str(clip), "--audio", str(clip), *LOOPBACK_ONLY)
    looped_id = looped.session
    started = time.monotonic()

    # A one-second clip, looped: three seconds' worth of frames arrive, at the clip's pace,
    # at a peer that sends nothing itself.
    sample = wait_until(lambda: next((s for s in viewer.of("stats", peer=looped_id)
                                      if s["video_frames_in"] >= 45), None),
                        "three seconds of the looped clip")
    assert sample["video_size_in"] == "320x240" and sample["audio_frames_in"] >= 100
    assert sample["video_fps_in"] < 25  # paced, not decoded as fast as possible
    stats = looped.last_stats(viewer.session)
    assert stats is not None and stats["video_frames_in"] == 0 and stats["video_frames_out"] > 0

    def media() -> dict[str, object]:
        shown = roomctl(daemon, "room", "show", room, "--json")
        return {m["name"]: m["media"] for m in json.loads(shown.stdout)["members"]}
    assert media()["looped"] == {"audio_muted": False, "video_muted": False}
    assert media()["viewer"] == {"audio_muted": True, "video_muted": True}  # receive-only

    # Played once, the clip ends: the room then sees that peer's camera and microphone off.
    assert once.wait_event("source-ended", kind="video")
    assert once.wait_event("source-ended", kind="audio")
    wait_until(lambda: media()["once"] == {"audio_muted": True, "video_muted": True},
               "the room seeing the ended sources as muted")

    # --duration: the looping peer leaves by itself, exit 0, and the others drop it.
    assert looped.finish() == 0
    assert time.monotonic() - started < 8 + WAIT / 2
    assert looped.of("left")[-1]["reason"] == "duration"
    viewer.wait_event("peer-left", peer=looped_id)
    assert any(re.search(r"stats viewer \(\w+\) connected: in 0 video", line)
               for line in looped.stderr().splitlines())
    assert "Traceback" not in looped.stderr()
    assert stop_all(viewer, once) == [0, 0]


def test_browsers_and_join_exchange_video_and_audio_either_side_offering(
        browser: Browser, join: Callable[..., Joiner], daemon: ServeProcess,  # noqa: F811
        room: str) -> None:
    contexts = [browser.new_context(viewport={"width": 1000, "height": 700}) for _ in range(2)]
    try:
        early = RoomPage(contexts[0], daemon.http, room, "early").join()
        cli = join("cli", *TEST_MEDIA, *LOOPBACK_ONLY, *EVERY_SECOND)
        cli_id = cli.session
        late = RoomPage(contexts[1], daemon.http, room, "late").join()
        for page, offers in ((early, True), (late, False)):
            added = cli.wait_event("peer-added", name=page.name)
            assert added["offer"] is offers  # join offers to the early page, the late one to it
            # The browser decodes our VP8; we decode its video and audio.
            page.assert_video_flows_from(cli_id, "cli")
            assert page.stats()[cli_id]["audioBytesReceived"] > 0
            wait_until(lambda p=added["peer"]: receiving(cli, p, 10),
                       f"cli receiving from {page.name}")
            assert not page.errors, page.errors
        assert not cli.of("peer-failed") and not cli.of("peer-warning")
        assert stop_all(cli) == [0]
        early.page.wait_for_function(
            "() => !document.querySelector('#tiles figure[data-name=\"cli\"]')",
            timeout=WAIT * 1000)
    finally:
        for context in contexts:
            context.close()


# --- failures: one line, the documented exit code, within seconds ------------------------------


def _fails(sp: ServeProcess | None, *args: str) -> tuple[int, str]:
    """Run a ``roomctl join`` that must fail; return its status and its one stderr line."""
    started = time.monotonic()
    # The arguments under test come last: the last of a repeated option wins.
    done = roomctl(sp, "join", *TEST_MEDIA, *LOOPBACK_ONLY, *args, timeout=WAIT)
    assert time.monotonic() - started < ERROR_WITHIN, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roomctl: "), done.stderr
    assert done.stdout == ""
    return done.returncode, lines[0]


def test_join_of_a_room_that_does_not_exist_exits_3(daemon: ServeProcess) -> None:
    code, line = _fails(daemon, "nosuchroom")
    assert code == 3 and "no room named 'nosuchroom'" in line
    listed = roomctl(daemon, "room", "list", "--json")
    assert "nosuchroom" not in listed.stdout  # joining never creates a room


@pytest.mark.parametrize("source", ["/dev/video9", "lavfi:no_such_filter"])
def test_a_video_source_that_cannot_open_exits_1(daemon: ServeProcess, room: str,
                                                 source: str) -> None:
    code, line = _fails(daemon, room, "--video", source)
    assert code == 1 and line.startswith(f"roomctl: cannot open source {source}: ")


def test_an_alsa_device_that_cannot_open_is_one_line_without_alsa_noise(
        daemon: ServeProcess, room: str) -> None:
    # libasound prints its own errors on stderr ("ALSA lib conf.c:...") before FFmpeg
    # fails; only roomctl's line may remain.
    code, line = _fails(daemon, room, "--audio", "alsa:hw:99")
    assert code == 1 and line.startswith("roomctl: cannot open source alsa:hw:99"), line


def test_a_missing_file_exits_1(daemon: ServeProcess, room: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.webm"
    code, line = _fails(daemon, room, "--audio", str(missing))
    assert code == 1 and line == f"roomctl: cannot open source {missing}: no such file"


def test_no_daemon_exits_5() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, line = _fails(None, "call", "--url", f"http://127.0.0.1:{port}")
    assert code == 5 and "cannot reach" in line


def test_a_daemon_that_dies_mid_call_ends_join_with_5(
        serve_process: Callable[..., ServeProcess], tmp_path: Path) -> None:
    sp = serve_process("--memory", "--log-level", "warning")
    assert roomctl(sp, "room", "create", "short").returncode == 0
    lone = Joiner(sp, "short", "lone", *TEST_MEDIA, *LOOPBACK_ONLY,
                  stderr_path=tmp_path / "lone.stderr")
    try:
        lone.wait_event("joined")
        sp.proc.kill()
        assert lone.finish(timeout=ERROR_WITHIN) == 5
        assert lone.of("left")[-1]["reason"] == "connection closed"
        # join prints JSON lines (--json), so its error is one JSON object too.
        last = json.loads(lone.stderr().strip().splitlines()[-1])["error"]
        assert last["exit"] == 5 and last["code"] == "unreachable", lone.stderr()
        assert last["message"].startswith("connection closed"), lone.stderr()
        assert "Traceback" not in lone.stderr()
    finally:
        lone.kill()


@pytest.mark.parametrize("args", [
    ("--video", "testsrc", "--no-video"),
    ("--video-size", "641x480"),
    ("--ice-server", "http://stun.example"),
    ("--ice-address", "192.0.2.250"),
    ("--duration", "soon"),
])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    done = roomctl(None, "join", "call", *args)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_other_commands_do_not_import_aiortc() -> None:
    code = ("import sys, roomctl.cli; "
            "sys.exit(1 if {'aiortc', 'av'} & set(sys.modules) else 0)")
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(None), timeout=WAIT,
                          check=False)
    assert done.returncode == 0


# --- the parsing behind the options --------------------------------------------------------------


def test_sources_parse_to_what_ffmpeg_opens(tmp_path: Path) -> None:
    test = settings.video_source("testsrc")
    assert (test.format, test.target) == (
        "lavfi", "testsrc=size=640x480:rate=15,format=yuv420p")
    cam = settings.video_source("/dev/video0", size=(320, 240), fps=30)
    assert cam.format == "video4linux2" and cam.options == {"video_size": "320x240",
                                                           "framerate": "30"}
    assert settings.audio_source("silence").silent
    assert settings.audio_source("alsa:hw:1").target == "hw:1"
    clip = tmp_path / "clip.webm"
    clip.write_bytes(b"")
    assert settings.video_source(str(clip), loop=True).loop
    assert settings.video_source("rtsp://camera/stream").kind == "file"
    with pytest.raises(ValueError, match="no such file"):
        settings.audio_source(str(tmp_path / "nope.ogg"))


def test_ice_server_urls() -> None:
    turn = settings.ice_server("turn:alice:s3cret@turn.example:3479?transport=tcp")
    assert turn == settings.IceServer("turn:turn.example:3479?transport=tcp", "alice", "s3cret")
    assert settings.ice_server("stun:[::1]:3478").url == "stun:[::1]:3478"
    for bad in ("stun:user:pw@host", "turns:h?transport=udp", "turn:h:99999", "ftp:h"):
        with pytest.raises(ValueError):
            settings.ice_server(bad)
    assert settings.split_list(["a,b c", "d"]) == ["a", "b", "c", "d"]


def test_recording_names_are_safe_and_never_overwrite(tmp_path: Path) -> None:
    from roomctl.media.recorder import recording_path

    first = recording_path(tmp_path, "Zoë ../x", "a1", "video")
    assert first.name == "Zo__.._x-a1.video.mkv" and first.parent == tmp_path
    first.touch()
    assert recording_path(tmp_path, "Zoë ../x", "a1", "video").name == "Zo__.._x-a1-2.video.mkv"


def test_no_ice_server_unless_named_and_host_candidates_as_asked() -> None:
    import aioice.ice

    from roomctl.media.ice import apply_host_candidate_policy, configuration

    plain = settings.CallSettings(video=None, audio=None)
    assert configuration(plain).iceServers == []  # aiortc would otherwise use Google's STUN
    named = settings.CallSettings(video=None, audio=None, ice_servers=(
        settings.ice_server("turn:u:p@turn.example:3478"),))
    [server] = configuration(named).iceServers
    assert (server.urls, server.username, server.credential) == (
        "turn:turn.example:3478", "u", "p")

    original = aioice.ice.get_host_addresses
    try:
        assert "127.0.0.1" not in original(True, True)  # why the switch exists
        apply_host_candidate_policy(plain)
        assert aioice.ice.get_host_addresses is original  # nothing asked, nothing changed
        apply_host_candidate_policy(settings.CallSettings(
            video=None, audio=None, ice_addresses=("127.0.0.1",)))
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
        apply_host_candidate_policy(settings.CallSettings(
            video=None, audio=None, allow_loopback=True))
        assert {"127.0.0.1", "::1"} <= set(aioice.ice.get_host_addresses(True, True))
        assert "::1" not in aioice.ice.get_host_addresses(True, False)
    finally:
        aioice.ice.get_host_addresses = original


def test_source_frames_are_paced_not_keyframes_and_keep_counting_across_loops(
        tmp_path: Path) -> None:
    import asyncio

    from av.video.frame import PictureType

    from roomctl.media.sources import Sources

    clip = tmp_path / "clip.webm"
    make_clip(clip, seconds=1)

    def in_own_loop(coro: Any) -> Any:
        # A thread of its own: Playwright's sync API may have left a loop running in this one.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result(timeout=WAIT)

    async def first_frames(spec: settings.SourceSpec, count: int) -> tuple[list[Any], float]:
        sources = Sources(lambda kind: None, timeout=WAIT)
        await sources.open(spec, None)
        track = sources.subscribe("video")
        assert track is not None
        started = time.monotonic()
        try:
            async with asyncio.timeout(WAIT):
                frames = [await track.recv() for _ in range(count)]
        finally:
            await sources.close()
        return frames, time.monotonic() - started

    # lavfi marks every frame a keyframe; the source clears it, once, for every encoder.
    test, _ = in_own_loop(first_frames(settings.video_source("testsrc", size=(160, 120)), 3))
    assert {(f.pict_type, f.format.name, f.width) for f in test} == {
        (PictureType.NONE, "yuv420p", 160)}
    # A one-second clip, looped: 25 frames take real time and their timestamps run on.
    looped, took = in_own_loop(first_frames(settings.video_source(str(clip), loop=True), 25))
    pts = [f.pts for f in looped]
    assert pts == sorted(set(pts)) and pts[-1] > 23 * 6000  # 90 kHz clock, 15 fps
    assert took > 1.2  # 25 frames at 15 fps: paced, not decoded at once
