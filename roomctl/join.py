"""``roomctl join``: take part in a room's video call as an aiortc WebRTC mesh peer.

This module only parses and checks the command line; aiortc and PyAV are imported when the
command runs (``roomctl.media``), so other commands never pay for them.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from roomctl.client import ExitCode
from roomctl.media.settings import (
    DEFAULT_FPS,
    CallSettings,
    SourceSpec,
    audio_source,
    ice_address,
    ice_server,
    parse_size,
    split_list,
    video_source,
)
from roomctl.options import (
    Context,
    check_name,
    check_room,
    client_command,
    fail,
    parse_duration,
    run,
)
from roomctl.output import OutputClosed

MEDIA_EXTRA = "roomctl[media]"  # the extra that installs aiortc and PyAV (pyproject.toml)
DEFAULT_VIDEO = "testsrc"
DEFAULT_AUDIO = "silence"
Media = "Media"
Network = "Network (ICE)"


def _duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@client_command
def join(
    ctx: Context,
    room: Annotated[str, typer.Argument(
        metavar="ROOM", help="The room; it must exist.", callback=check_room)],
    name: Annotated[str, typer.Option(
        "--name", envvar="ROOMCTL_NAME", metavar="NAME", callback=check_name,
        help="The name others see.")] = "roomctl",
    video: Annotated[str | None, typer.Option(
        metavar="SRC", rich_help_panel=Media, show_default=DEFAULT_VIDEO,
        help="testsrc, lavfi:GRAPH, a V4L2 device (/dev/video0, v4l2:PATH), or a file or "
             "URL.")] = None,
    audio: Annotated[str | None, typer.Option(
        metavar="SRC", rich_help_panel=Media, show_default=DEFAULT_AUDIO,
        help="sine, silence, lavfi:GRAPH, alsa:DEVICE, pulse:DEVICE, or a file or URL.")
    ] = None,
    no_video: Annotated[bool, typer.Option(
        "--no-video", rich_help_panel=Media, help="Send no video (still receive it).")] = False,
    no_audio: Annotated[bool, typer.Option(
        "--no-audio", rich_help_panel=Media, help="Send no audio (still receive it).")] = False,
    loop: Annotated[bool, typer.Option(
        "--loop", rich_help_panel=Media,
        help="Play file sources again from the start when they end.")] = False,
    video_size: Annotated[str, typer.Option(
        metavar="WxH", rich_help_panel=Media,
        help="Size of testsrc, and the size asked of a V4L2 device.")] = "640x480",
    fps: Annotated[int, typer.Option(
        min=1, max=120, rich_help_panel=Media,
        help="Frame rate of testsrc, and the rate asked of a V4L2 device.")] = DEFAULT_FPS,
    record: Annotated[Path | None, typer.Option(
        metavar="DIR", file_okay=False, rich_help_panel=Media,
        help="Record each remote peer's audio and video into files in DIR.")] = None,
    duration: Annotated[str | None, typer.Option(
        metavar="DURATION", help="Leave after this long (30, 30s, 5m, 1h).")] = None,
    stats_interval: Annotated[str, typer.Option(
        metavar="DURATION", help="How often to print each peer's stats.")] = "5s",
    ice_servers: Annotated[list[str] | None, typer.Option(
        "--ice-server", metavar="URL", envvar="ROOMCTL_ICE_SERVERS", rich_help_panel=Network,
        help="A STUN or TURN server: stun:HOST[:PORT], turn:[USER:PASS@]HOST[:PORT]; "
             "repeat for more.", show_default="none")] = None,
    allow_loopback: Annotated[bool, typer.Option(
        "--allow-loopback", envvar="ROOMCTL_ALLOW_LOOPBACK", rich_help_panel=Network,
        help="Also offer 127.0.0.1 and ::1 as ICE candidates (hosts with only lo, "
             "tests).")] = False,
    ice_addresses: Annotated[list[str] | None, typer.Option(
        "--ice-address", metavar="ADDRESS", envvar="ROOMCTL_ICE_ADDRESSES",
        rich_help_panel=Network,
        help="Offer host candidates only on this local address; repeat for more.",
        show_default="every address but loopback")] = None,
    connect_timeout: Annotated[str, typer.Option(
        metavar="DURATION", rich_help_panel=Network,
        help="Drop a peer not connected this long after it was added.")] = "20s",
) -> None:
    """Take part in a room's call: send video and audio, receive (and record) the others'.

    Runs until Ctrl-C, SIGTERM or --duration, then parts, closes every peer connection,
    leaves the room and exits 0. Events and per-peer stats go to stderr (and stdout as JSON
    lines with --json).
    """
    if no_video and video is not None:
        raise typer.BadParameter("--video and --no-video exclude each other", param_hint="--video")
    if no_audio and audio is not None:
        raise typer.BadParameter("--audio and --no-audio exclude each other", param_hint="--audio")
    try:
        size = parse_size(video_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--video-size") from None
    video_spec: SourceSpec | None = None
    audio_spec: SourceSpec | None = None
    try:
        if not no_video:
            video_spec = video_source(video or DEFAULT_VIDEO, size=size, fps=fps, loop=loop)
        if not no_audio:
            audio_spec = audio_source(audio or DEFAULT_AUDIO, loop=loop)
    except ValueError as exc:
        fail(f"cannot open source {exc}", ExitCode.REFUSED)
    try:
        servers = tuple(ice_server(url) for url in split_list(ice_servers or []))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ice-server") from None
    try:
        addresses = tuple(ice_address(a) for a in split_list(ice_addresses or []))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ice-address") from None
    leave_after = _duration(duration)
    interval = _duration(stats_interval)
    peer_timeout = _duration(connect_timeout)
    assert interval is not None and peer_timeout is not None
    if record is not None:
        try:
            record.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot record in {record}: {exc.strerror or exc}", ExitCode.REFUSED)
        if not os.access(record, os.W_OK | os.X_OK):
            fail(f"cannot record in {record}: not writable", ExitCode.REFUSED)

    settings = CallSettings(
        video=video_spec, audio=audio_spec, record_dir=record, ice_servers=servers,
        allow_loopback=allow_loopback, ice_addresses=addresses,
        connect_timeout=peer_timeout, stats_interval=interval)

    missing = missing_media()
    if missing is not None:
        fail(f"join needs {missing}, which a daemon-only install leaves out: "
             f"pip install '{MEDIA_EXTRA}'", ExitCode.REFUSED)
    # Deferred: aiortc and PyAV take a good part of a second to import.
    from roomctl.media.call import Call, Printer
    from roomctl.media.ice import check_addresses

    try:
        check_addresses(addresses)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ice-address") from None

    call = Call(ctx.target, room, name, settings, duration=leave_after,
                printer=Printer(ctx.json))
    try:
        run(call.run)
    except typer.Exit as exc:  # run() turned a CliError into its exit status
        _exit_without_stragglers(clean=call.clean, status=exc.exit_code)
        raise
    except OutputClosed:  # stdout's reader went away (--json): end quietly, after leaving
        _exit_without_stragglers(clean=call.clean, status=ExitCode.OUTPUT_CLOSED)
        raise
    _exit_without_stragglers(clean=call.clean, status=0)


def missing_media() -> str | None:
    """Return which of aiortc and PyAV (``av``) cannot be imported, or None if both can.

    ``pip install roomctl`` leaves them out (a daemon host does not need codecs); the
    ``media`` extra brings them.
    """
    missing = []
    for module in ("aiortc", "av"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append({"av": "PyAV"}.get(module, module))
    return " and ".join(missing) or None


def _exit_without_stragglers(*, clean: bool, status: int, grace: float = 3.0) -> None:
    """Exit with ``status`` now if a media thread outlived the shutdown (it would hold exit).

    aiortc's decoder threads are not daemon threads; they stop when their peer connection
    closes. If a close timed out, one may never stop, and the interpreter would wait for it
    forever.
    """
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        if thread.name.startswith(("ThreadPoolExecutor", "asyncio_", "roomctl-record")):
            continue  # idle pool workers: the interpreter tells them to stop at exit
        thread.join(max(deadline - time.monotonic(), 0))
        if thread.is_alive():
            clean = False
    if not clean:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
