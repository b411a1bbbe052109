"""The core wire messages of protocol v1: sessions, participants and the WebRTC relay.

Every frame is one Struct in a tagged union (``tag_field="type"``) with an explicit
kebab-case tag, so a class rename never changes the wire. Requests are imperatives
(``SetMediaState``), events are facts (``ParticipantLeft``). Structs are frozen and
keyword-only; fields are only ever added, always with defaults.

App-specific messages (the chat app's, see ``protocol.chat``) derive from the same
bases and are merged into the decoders at start-up.
"""

import enum
from typing import Any, Literal

import msgspec

from protocol.errors import ErrorCode
from protocol.limits import (
    MAX_DISPLAY_NAME,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_TEXT,
    AppName,
    CandidateLine,
    DisplayName,
    Ref,
    RoomName,
    Sdp,
    SeqCursor,
    SessionId,
    ShortText,
    Token,
)

PROTOCOL_VERSION = 1


class Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every frame in either direction."""


class Request(Frame, frozen=True, kw_only=True):
    """A frame from a client. ``ref`` is echoed in the ``ok``/``error`` that answers it."""

    ref: Ref | None = None


class Event(Frame, frozen=True, kw_only=True):
    """A frame from the daemon."""


class Reply(Event, frozen=True, kw_only=True):
    """An event that answers one request; ``ref`` is that request's."""

    ref: Ref | None = None


# --- shared value types (not frames) ---------------------------------------------------------


class Grant(enum.StrEnum):
    """What a token allows; a join token carries a list of these (the admin token, all).

    ``join``: enter the room as a listed participant (who sees the room, as ``read``);
    ``read``: see the room without entering it: its history, its participants and its live
    events, as a hidden observer (new in v1); ``post``: messages, the topic and pins, also
    without entering the room (a hello with ``subscribe: false``); ``media``: take part in
    the call; ``hidden``: with ``join``, observe unlisted (as before ``read`` existed);
    ``admin``: manage that one room on the admin endpoint (get-room, update-room, kick,
    delete-room). On the wire, the lower-case value.
    """

    JOIN = "join"
    READ = "read"
    POST = "post"
    MEDIA = "media"
    HIDDEN = "hidden"
    ADMIN = "admin"


class ConnectionLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What this daemon allows one connection (``welcome.limits``), so a client can stay
    within it instead of learning it from refusals. ``rate`` 0: requests are not limited
    (the admin token's connections are never limited)."""

    rate: float = 0.0  # requests per second, sustained
    burst: int = 0  # requests at once after a quiet spell
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_text: int = MAX_MESSAGE_TEXT  # characters of a chat message
    max_name: int = MAX_DISPLAY_NAME  # characters of a display name
    max_participants: int | None = None  # in this room (hidden observers not counted)


class MediaState(msgspec.Struct, frozen=True, kw_only=True):
    """What a participant sends into the call, as its own client reports it."""

    audio_muted: bool = True
    video_muted: bool = True


class Participant(msgspec.Struct, frozen=True, kw_only=True):
    """The participant view: core fields plus ``meta``, the room app's own view of the session."""

    id: SessionId
    live: bool = True  # False while the participant is disconnected inside the grace period
    joined_at: float = 0.0
    in_call: bool = False  # has sent ``join`` (is a peer of the WebRTC mesh)
    media: MediaState = MediaState()
    meta: Any = None
    identity: str | None = None  # the ``sub`` of the join token it came with, if any


class RoomInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A room as clients see it; ``meta`` is the room app's typed room metadata."""

    name: RoomName
    app: AppName
    created_at: float
    participants: int = 0
    last_seq: SeqCursor = 0
    meta: Any = None
    private: bool = False  # joining needs a join token


class SessionDescription(msgspec.Struct, frozen=True, kw_only=True):
    """An RTCSessionDescriptionInit, as browsers produce it."""

    type: Literal["offer", "answer", "pranswer", "rollback"]
    sdp: Sdp = ""


class IceCandidate(msgspec.Struct, frozen=True, kw_only=True):
    """An RTCIceCandidateInit, with the browser's field names on the wire."""

    candidate: CandidateLine = ""  # "" means end of candidates
    sdp_mid: ShortText | None = msgspec.field(default=None, name="sdpMid")
    sdp_m_line_index: int | None = msgspec.field(default=None, name="sdpMLineIndex")
    username_fragment: ShortText | None = msgspec.field(default=None, name="usernameFragment")


# --- requests: client -> daemon --------------------------------------------------------------


class Hello(Request, tag="hello", frozen=True, kw_only=True):
    """The first frame of every connection.

    ``resume`` carries the resume token of a session that dropped inside the grace period;
    ``hidden`` makes an observer that never appears as a participant (``roomctl tail``);
    ``create: false`` refuses to create a missing room even where the daemon auto-creates.
    ``subscribe: false`` (new in v1, hidden sessions only) makes a *sender*: it gets none
    of the room's events, only the answers to its own requests, and enters with any token
    for the room (``roomctl post``, the HTTP API): each request still needs its grant.
    """

    name: DisplayName | None = None
    token: Token | None = None
    resume: Token | None = None
    hidden: bool = False
    protocol: int = PROTOCOL_VERSION
    create: bool = True
    subscribe: bool = True


class Leave(Request, tag="leave", frozen=True, kw_only=True):
    """Leave the room now (no grace period); the daemon then closes the connection with 1000."""


class GetParticipants(Request, tag="get-participants", frozen=True, kw_only=True):
    """Ask for the visible participants of the room; answered by ``participants``."""


class Join(Request, tag="join", frozen=True, kw_only=True):
    """Enter the room's WebRTC mesh; every other peer gets ``add-peer``."""


class Part(Request, tag="part", frozen=True, kw_only=True):
    """Leave the WebRTC mesh (but stay in the room); peers get ``remove-peer``."""


class RelayIceCandidate(Request, tag="relay-ice-candidate", frozen=True, kw_only=True):
    """Send an ICE candidate to one peer of the same room."""

    peer_id: SessionId
    candidate: IceCandidate


class RelaySessionDescription(Request, tag="relay-session-description", frozen=True, kw_only=True):
    """Send an offer or answer to one peer of the same room."""

    peer_id: SessionId
    description: SessionDescription


class SetMediaState(Request, tag="set-media-state", frozen=True, kw_only=True):
    """Report whether this participant's microphone and camera are muted."""

    audio_muted: bool
    video_muted: bool


# --- events: daemon -> client ----------------------------------------------------------------


class Welcome(Reply, tag="welcome", frozen=True, kw_only=True):
    """The answer to ``hello``: who you are, how to resume, and the room as it is now."""

    session_id: SessionId
    resume_token: str = ""
    resumed: bool = False
    room: RoomInfo | None = None
    participants: list[Participant] = []
    grace: float = 60.0
    protocol: int = PROTOCOL_VERSION
    server: str = ""
    limits: ConnectionLimits | None = None  # new in v1: absent from older daemons


class Ok(Reply, tag="ok", frozen=True, kw_only=True):
    """A request succeeded; ``seq`` is set when it created a numbered record (a message),
    and ``at`` (new in v1) is then the record's time (Unix seconds)."""

    seq: int | None = None
    at: float | None = None


class Error(Reply, tag="error", frozen=True, kw_only=True):
    """A request failed; ``code`` is stable, ``message`` is for people.

    ``retry_after``: seconds to wait before trying again (``rate-limited``); ``grant``: the
    grant the request needed and the token lacks (``forbidden``). Both new in v1, absent
    where they do not apply.
    """

    code: ErrorCode
    message: str = ""
    retry_after: float | None = None
    grant: Grant | None = None


class Participants(Reply, tag="participants", frozen=True, kw_only=True):
    """The answer to ``get-participants``."""

    participants: list[Participant] = []


class ParticipantJoined(Event, tag="participant-joined", frozen=True, kw_only=True):
    participant: Participant


class ParticipantUpdated(Event, tag="participant-updated", frozen=True, kw_only=True):
    participant: Participant


LeaveReason = Literal["left", "timeout", "kicked"]


class ParticipantLeft(Event, tag="participant-left", frozen=True, kw_only=True):
    participant_id: SessionId
    reason: LeaveReason = "left"


class AddPeer(Event, tag="add-peer", frozen=True, kw_only=True):
    """``peer_id`` is in the mesh with you; if ``should_create_offer``, you send the offer.

    ``participant``, when set, is that peer's participant view: it just joined the call,
    and this frame stands in for the ``participant-updated`` saying so.
    """

    peer_id: SessionId
    should_create_offer: bool = False
    participant: Participant | None = None


class RemovePeer(Event, tag="remove-peer", frozen=True, kw_only=True):
    """Close your connection to ``peer_id``."""

    peer_id: SessionId


class IceCandidateRelayed(Event, tag="ice-candidate", frozen=True, kw_only=True):
    """An ICE candidate from ``peer_id``."""

    peer_id: SessionId
    candidate: IceCandidate


class SessionDescriptionRelayed(Event, tag="session-description", frozen=True, kw_only=True):
    """An offer or answer from ``peer_id``."""

    peer_id: SessionId
    description: SessionDescription


CORE_REQUESTS: tuple[type[Request], ...] = (
    Hello,
    Leave,
    GetParticipants,
    Join,
    Part,
    RelayIceCandidate,
    RelaySessionDescription,
    SetMediaState,
)
CORE_EVENTS: tuple[type[Event], ...] = (
    Welcome,
    Ok,
    Error,
    Participants,
    ParticipantJoined,
    ParticipantUpdated,
    ParticipantLeft,
    AddPeer,
    RemovePeer,
    IceCandidateRelayed,
    SessionDescriptionRelayed,
)
