"""What ``roomctl join`` was asked to do, parsed and checked before anything starts.

Plain Python (no aiortc, no PyAV), so ``roomctl join --help`` and usage errors stay fast.
A bad value raises ``ValueError`` with a message fit for one line of stderr.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs

DEFAULT_SIZE = (640, 480)
DEFAULT_FPS = 15
SINE_HZ = 440

SourceKind = Literal["lavfi", "v4l2", "alsa", "pulse", "file"]


@dataclass(frozen=True)
class SourceSpec:
    """One source as FFmpeg opens it: ``av.open(target, format=..., options=...)``."""

    text: str  # what the user wrote, for messages
    kind: SourceKind
    target: str
    options: dict[str, str] = field(default_factory=dict)
    loop: bool = False
    silent: bool = False  # audio that is silence: reported to the room as muted

    @property
    def format(self) -> str | None:
        return {"lavfi": "lavfi", "v4l2": "video4linux2", "alsa": "alsa",
                "pulse": "pulse", "file": None}[self.kind]


@dataclass(frozen=True)
class IceServer:
    """An ICE server URL with its credentials split out (aiortc's RTCIceServer fields)."""

    url: str
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class CallSettings:
    """Everything the media side needs; built by ``roomctl join`` from its options."""

    video: SourceSpec | None
    audio: SourceSpec | None
    record_dir: Path | None = None
    ice_servers: tuple[IceServer, ...] = ()
    allow_loopback: bool = False
    ice_addresses: tuple[str, ...] = ()
    connect_timeout: float = 20.0  # a peer not connected by then is dropped
    stats_interval: float = 5.0
    close_timeout: float = 5.0  # the most any close (peer, recorder, source) may take


def parse_size(text: str) -> tuple[int, int]:
    """Return (width, height) for ``WxH``; raise ValueError."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a size like 640x480")
    width, height = int(match.group(1)), int(match.group(2))
    if not (16 <= width <= 7680 and 16 <= height <= 4320) or width % 2 or height % 2:
        raise ValueError(f"{text!r}: width and height must be even, 16x16 to 7680x4320")
    return width, height


def _is_url(text: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def video_source(text: str, *, size: tuple[int, int] = DEFAULT_SIZE, fps: int = DEFAULT_FPS,
                 loop: bool = False) -> SourceSpec:
    """Return the spec of a ``--video`` source; raise ValueError for one that cannot work.

    ``testsrc`` is FFmpeg's test pattern at ``size`` and ``fps``; ``lavfi:GRAPH`` any lavfi
    graph; ``/dev/video*`` or ``v4l2:PATH`` a V4L2 device asked for ``size`` and ``fps``;
    anything else a file or URL FFmpeg reads (``loop``: start again at its end).
    """
    width, height = size
    if text == "testsrc":
        # yuv420p here, once, instead of a conversion in every peer's encoder.
        return SourceSpec(text, "lavfi",
                          f"testsrc=size={width}x{height}:rate={fps},format=yuv420p")
    if text.startswith("lavfi:"):
        return SourceSpec(text, "lavfi", _nonempty(text, text.removeprefix("lavfi:")))
    if text.startswith(("/dev/video", "v4l2:")):
        return SourceSpec(text, "v4l2", _nonempty(text, text.removeprefix("v4l2:")),
                          {"video_size": f"{width}x{height}", "framerate": str(fps)})
    return _file_source(text, loop)


def audio_source(text: str, *, loop: bool = False) -> SourceSpec:
    """Return the spec of an ``--audio`` source; raise ValueError for one that cannot work.

    ``sine`` is a 440 Hz tone, ``silence`` silence, ``lavfi:GRAPH`` any lavfi graph,
    ``alsa:DEVICE`` and ``pulse:DEVICE`` capture devices, anything else a file or URL.
    """
    if text == "sine":
        return SourceSpec(text, "lavfi", f"sine=frequency={SINE_HZ}:sample_rate=48000")
    if text == "silence":
        return SourceSpec(text, "lavfi", "anullsrc=channel_layout=stereo:sample_rate=48000",
                          silent=True)
    if text.startswith("lavfi:"):
        return SourceSpec(text, "lavfi", _nonempty(text, text.removeprefix("lavfi:")))
    if text.startswith("alsa:"):
        return SourceSpec(text, "alsa", _nonempty(text, text.removeprefix("alsa:")))
    if text.startswith("pulse:"):
        return SourceSpec(text, "pulse", _nonempty(text, text.removeprefix("pulse:")))
    return _file_source(text, loop)


def _nonempty(text: str, rest: str) -> str:
    if not rest:
        raise ValueError(f"{text!r} names no device or graph after the colon")
    return rest


def _file_source(text: str, loop: bool) -> SourceSpec:
    if not text:
        raise ValueError("an empty source name")
    if not _is_url(text):
        path = Path(text)
        if not path.exists():
            raise ValueError(f"{text}: no such file")
        if path.is_dir():
            raise ValueError(f"{text}: is a directory")
    return SourceSpec(text, "file", text, loop=loop)


_ICE_URL = re.compile(
    r"(?P<scheme>stuns?|turns?):(?:(?P<userinfo>[^@/?]*)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@/?\[\]]+)"
    r"(?::(?P<port>\d{1,5}))?(?:\?(?P<query>.*))?")


def ice_server(text: str) -> IceServer:
    """Return the IceServer of ``stun:HOST[:PORT]`` or ``turn[s]:[USER:PASSWORD@]HOST[:PORT]``.

    A TURN URL may end in ``?transport=udp`` or ``?transport=tcp``. Raises ValueError.
    """
    match = _ICE_URL.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a stun:HOST[:PORT] or turn:[USER:PASS@]HOST[:PORT] URL")
    scheme, userinfo, host, port, query = match.group("scheme", "userinfo", "host", "port",
                                                       "query")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has a bad port")
    transport = None
    if query:
        values = parse_qs(query)
        if set(values) != {"transport"} or values["transport"][0] not in ("udp", "tcp"):
            raise ValueError(f"{text!r}: the only parameter is transport=udp or transport=tcp")
        transport = values["transport"][0]
    if scheme.startswith("stun") and (transport or userinfo is not None):
        raise ValueError(f"{text!r}: a STUN URL takes neither credentials nor a transport")
    if scheme == "turns" and transport == "udp":
        raise ValueError(f"{text!r}: turns works over tcp only")
    username = credential = None
    if userinfo is not None:
        username, sep, credential = userinfo.partition(":")
        if not username or not sep:
            raise ValueError(f"{text!r}: credentials are USER:PASSWORD@")
    url = f"{scheme}:{host}" + (f":{port}" if port else "") + \
        (f"?transport={transport}" if transport else "")
    return IceServer(url, username, credential)


def ice_address(text: str) -> str:
    """Return ``text`` as a normalised IP address; raise ValueError."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def split_list(values: list[str]) -> list[str]:
    """Split values given as ``a,b`` or ``a b`` (from an environment variable) into items."""
    return [item for value in values for item in re.split(r"[\s,]+", value) if item]
