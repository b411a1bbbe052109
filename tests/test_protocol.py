"""The wire contract: every message type round-trips in both formats, and bad input is typed.

Message types are discovered from the protocol modules, so a new type without an example
here fails ``test_every_message_type_has_an_example``.
"""

from __future__ import annotations

import ast
import inspect
import json
import pathlib
import re
from types import ModuleType
from typing import Any

import msgspec
import pytest

from protocol import admin, chat, messages, relay
from protocol.codec import Codec, WireFormat, negotiate
from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import MAX_FRAME_BYTES
from protocol.messages import (
    Event,
    Frame,
    IceCandidate,
    MediaState,
    Participant,
    Reply,
    Request,
    RoomInfo,
    SessionDescription,
)

MODULES: tuple[ModuleType, ...] = (messages, chat, admin)
BASES = (Frame, Request, Event, Reply)


def _defined_here(module: ModuleType) -> list[type]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if obj.__module__ == module.__name__]


def _frame_types() -> list[type[Frame]]:
    found: list[type[Frame]] = []
    for module in MODULES:
        for cls in _defined_here(module):
            if issubclass(cls, Request | Event) and cls not in BASES:
                found.append(cls)
    return found


def _struct_types() -> list[type[msgspec.Struct]]:
    return [cls for module in MODULES for cls in _defined_here(module)
            if issubclass(cls, msgspec.Struct)]


FRAME_TYPES = _frame_types()
REQUEST_TYPES = [t for t in FRAME_TYPES if issubclass(t, Request)]
EVENT_TYPES = [t for t in FRAME_TYPES if issubclass(t, Event)]

# 7 core requests + 11 core events, 7 chat requests + 4 chat events, 5 admin requests +
# 2 admin replies. Adding a type means adding an example below and bumping this.
EXPECTED_FRAME_TYPES = 40


def _tag(cls: type[Frame]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


# --- one representative instance per type, with non-default values wherever possible ------

_ALICE_VIEW = {"name": "alice", "status": "away", "status_text": "lunch", "messages_sent": 3}
_PARTICIPANT = Participant(
    id="a1b2c3", live=False, joined_at=1_700_000_000.25, in_call=True,
    media=MediaState(audio_muted=False, video_muted=True), meta=_ALICE_VIEW,
)
_ROOM = RoomInfo(
    name="lobby", app="chat", created_at=1_700_000_000.5, participants=2, last_seq=41,
    meta={"topic": "standup", "pins": [3, 7], "creator": "alice", "max_participants": 8},
)
_CANDIDATE = IceCandidate(
    candidate="candidate:1 1 udp 2122260223 192.0.2.7 54321 typ host",
    sdp_mid="0", sdp_m_line_index=0, username_fragment="uFrag",
)
_OFFER = SessionDescription(type="offer", sdp="v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n")
_MESSAGE = chat.ChatMessage(seq=42, at=1_700_000_123.75, sender_id="a1b2c3",
                            sender_name="alice", text="héllo, wörld ✓")

EXAMPLES: dict[type[Frame], Frame] = {
    # core requests
    messages.Hello: messages.Hello(ref="r1", name="alice", token="t0ken", resume="res-tok",
                                   hidden=True, protocol=1, subscribe=False),
    messages.GetParticipants: messages.GetParticipants(ref="r2"),
    messages.Join: messages.Join(ref="r3"),
    messages.Part: messages.Part(ref="r4"),
    messages.Leave: messages.Leave(ref="r9"),
    messages.RelayIceCandidate: messages.RelayIceCandidate(ref="r5", peer_id="b2",
                                                           candidate=_CANDIDATE),
    messages.RelaySessionDescription: messages.RelaySessionDescription(
        ref="r6", peer_id="b2", description=_OFFER),
    messages.SetMediaState: messages.SetMediaState(ref="r7", audio_muted=False,
                                                   video_muted=True),
    # core events
    messages.Welcome: messages.Welcome(
        ref="r1", session_id="a1b2c3", resume_token="secret", resumed=True, room=_ROOM,
        participants=[_PARTICIPANT], grace=12.5, protocol=1, server="roomctl/0.1.0"),
    messages.Ok: messages.Ok(ref="r8", seq=42, at=1_700_000_123.75),
    messages.Error: messages.Error(ref="r9", code=ErrorCode.ROOM_FULL, message="full"),
    messages.Participants: messages.Participants(ref="r2", participants=[_PARTICIPANT]),
    messages.ParticipantJoined: messages.ParticipantJoined(participant=_PARTICIPANT),
    messages.ParticipantUpdated: messages.ParticipantUpdated(participant=_PARTICIPANT),
    messages.ParticipantLeft: messages.ParticipantLeft(participant_id="a1b2c3",
                                                       reason="timeout"),
    messages.AddPeer: messages.AddPeer(peer_id="b2", should_create_offer=True),
    messages.RemovePeer: messages.RemovePeer(peer_id="b2"),
    messages.IceCandidateRelayed: messages.IceCandidateRelayed(peer_id="a1",
                                                               candidate=_CANDIDATE),
    messages.SessionDescriptionRelayed: messages.SessionDescriptionRelayed(
        peer_id="a1", description=SessionDescription(type="answer", sdp="v=0\r\n")),
    # chat requests
    chat.SetName: chat.SetName(ref="c1", name="Alice Ω"),
    chat.SetStatus: chat.SetStatus(ref="c2", status="busy", text="in a meeting"),
    chat.SendMessage: chat.SendMessage(ref="c3", text="hello ✓", key="job-7"),
    chat.GetMessages: chat.GetMessages(ref="c4", after=10, before=20, limit=5),
    chat.SetTopic: chat.SetTopic(ref="c5", topic="release day"),
    chat.Pin: chat.Pin(ref="c6", seq=3),
    chat.Unpin: chat.Unpin(ref="c7", seq=3),
    # chat events
    chat.MessagePosted: chat.MessagePosted(message=_MESSAGE),
    chat.Messages: chat.Messages(ref="c4", messages=[_MESSAGE], has_more=True),
    chat.TopicChanged: chat.TopicChanged(topic="release day", by="a1b2c3"),
    chat.PinsChanged: chat.PinsChanged(pins=[3, 7], by="a1b2c3"),
    # admin requests
    admin.CreateRoom: admin.CreateRoom(ref="a1", room="ops", app="chat",
                                       meta={"topic": "t", "max_participants": 4},
                                       if_missing=True),
    admin.ListRooms: admin.ListRooms(ref="a2", after="dev", limit=50),
    admin.GetRoom: admin.GetRoom(ref="a3", room="ops"),
    admin.UpdateRoom: admin.UpdateRoom(ref="a7", room="ops", meta={"topic": "t"}, private=True),
    admin.DeleteRoom: admin.DeleteRoom(ref="a4", room="ops"),
    admin.Kick: admin.Kick(ref="a5", room="ops", participant_id="a1b2c3"),
    admin.CreateToken: admin.CreateToken(ref="a6", room="ops", identity="alice@example.org",
                                         name="Alice", grants=["join", "post"], ttl=600.0),
    # admin replies
    admin.TokenIssued: admin.TokenIssued(ref="a6", token="eyJ.x.y", room="ops",
                                         identity="alice@example.org", grants=["join", "post"],
                                         expires_at=1795760378.0),
    admin.RoomDetails: admin.RoomDetails(ref="a3", room=_ROOM, participants=[_PARTICIPANT]),
    admin.RoomList: admin.RoomList(ref="a2", rooms=[_ROOM], next="ops"),
}

FORMATS = [WireFormat.JSON, WireFormat.MSGPACK]


def _codec(fmt: WireFormat, frame_type: type[Frame], **kw: Any) -> Codec:
    incoming = REQUEST_TYPES if issubclass(frame_type, Request) else EVENT_TYPES
    return Codec(fmt, incoming, **kw)


# --- the message set ------------------------------------------------------------------------


def test_discovery_finds_every_frame_type() -> None:
    assert len(FRAME_TYPES) == EXPECTED_FRAME_TYPES
    # The modules' own registries agree with what discovery finds.
    registered = {*messages.CORE_REQUESTS, *messages.CORE_EVENTS, *chat.CHAT_REQUESTS,
                  *chat.CHAT_EVENTS, *admin.ADMIN_REQUESTS, *admin.ADMIN_EVENTS}
    assert registered == set(FRAME_TYPES)


def test_every_message_type_has_an_example() -> None:
    missing = [t.__name__ for t in FRAME_TYPES if t not in EXAMPLES]
    assert missing == []
    assert set(EXAMPLES) == set(FRAME_TYPES)
    for frame_type, example in EXAMPLES.items():
        assert type(example) is frame_type


@pytest.mark.parametrize("frame_type", FRAME_TYPES, ids=_tag)
def test_tags_are_explicit_kebab_case(frame_type: type[Frame]) -> None:
    tag = frame_type.__struct_config__.tag
    assert frame_type.__struct_config__.tag_field == "type"
    assert isinstance(tag, str)
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", tag), tag
    # Explicit: msgspec's implicit tag would be the class name.
    assert tag != frame_type.__name__


def test_tags_are_written_in_the_class_statement() -> None:
    # A class rename must never change the wire: each tag is a literal in its class header.
    declared: dict[str, str] = {}
    for module in MODULES:
        assert module.__file__ is not None
        tree = ast.parse(pathlib.Path(module.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for keyword in node.keywords:
                    if keyword.arg == "tag" and isinstance(keyword.value, ast.Constant):
                        declared[node.name] = str(keyword.value.value)
    assert {t.__name__: _tag(t) for t in FRAME_TYPES} == declared


def test_tags_are_unique() -> None:
    tags = [_tag(t) for t in FRAME_TYPES]
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize("struct_type", _struct_types(), ids=lambda t: t.__name__)
def test_structs_are_frozen_and_keyword_only(struct_type: type[msgspec.Struct]) -> None:
    assert struct_type.__struct_config__.frozen
    params = inspect.signature(struct_type).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), struct_type


def test_requests_and_replies_carry_an_optional_ref() -> None:
    # The ref protocol depends on it: every request may carry one, every reply echoes it.
    for frame_type in FRAME_TYPES:
        if issubclass(frame_type, Request | Reply):
            ref = inspect.signature(frame_type).parameters["ref"]
            assert ref.default is None, frame_type
        else:
            assert "ref" not in frame_type.__struct_fields__, frame_type


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("frame_type", FRAME_TYPES, ids=_tag)
def test_round_trip(frame_type: type[Frame], fmt: WireFormat) -> None:
    example = EXAMPLES[frame_type]
    encoder = Codec(fmt, [frame_type])
    decoder = _codec(fmt, frame_type)
    data = encoder.encode(example)
    assert isinstance(data, bytes)
    assert decoder.decode(data) == example
    if fmt is WireFormat.JSON:
        # Browsers send JSON in text frames, which arrive as str.
        assert decoder.decode(data.decode()) == example
        assert json.loads(data)["type"] == _tag(frame_type)
    else:
        assert msgspec.msgpack.decode(data)["type"] == _tag(frame_type)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_defaults_round_trip(fmt: WireFormat) -> None:
    # The smallest valid frames: what a hand-written client sends.
    codec = Codec(fmt, REQUEST_TYPES)
    for frame in (messages.Hello(), messages.Join(), chat.GetMessages(),
                  chat.SendMessage(text="x")):
        assert codec.decode(codec.encode(frame)) == frame


def test_ice_candidate_uses_the_browsers_field_names() -> None:
    wire = json.loads(msgspec.json.encode(_CANDIDATE))
    assert wire == {
        "candidate": _CANDIDATE.candidate,
        "sdpMid": "0",
        "sdpMLineIndex": 0,
        "usernameFragment": "uFrag",
    }
    # What a browser's RTCIceCandidate.toJSON() produces decodes as such.
    browser = {"type": "relay-ice-candidate", "peer_id": "b2",
               "candidate": {"candidate": "candidate:2 1 udp 1 192.0.2.8 9 typ host",
                             "sdpMid": "1", "sdpMLineIndex": 1, "usernameFragment": None}}
    frame = Codec(WireFormat.JSON, REQUEST_TYPES).decode(json.dumps(browser))
    assert isinstance(frame, messages.RelayIceCandidate)
    assert frame.candidate.sdp_mid == "1"
    assert frame.candidate.sdp_m_line_index == 1
    assert frame.candidate.username_fragment is None


def test_msgpack_also_uses_the_browsers_field_names() -> None:
    wire = msgspec.msgpack.decode(Codec(WireFormat.MSGPACK, EVENT_TYPES).encode(
        EXAMPLES[messages.IceCandidateRelayed]))
    assert set(wire["candidate"]) == {"candidate", "sdpMid", "sdpMLineIndex",
                                      "usernameFragment"}


def test_negotiation() -> None:
    assert negotiate([]) is WireFormat.JSON
    assert negotiate(["roomctl.v1.msgpack", "roomctl.v1"]) is WireFormat.MSGPACK
    assert negotiate(["chat", " roomctl.v1 "]) is WireFormat.JSON
    assert negotiate(["chat"]) is None


# --- codec errors ---------------------------------------------------------------------------


def _error(codec: Codec, data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode(data)
    return info.value


JSON_CODEC = Codec(WireFormat.JSON, REQUEST_TYPES)
MSGPACK_CODEC = Codec(WireFormat.MSGPACK, REQUEST_TYPES)


@pytest.mark.parametrize(
    ("case", "frame"),
    [
        ("unknown type", {"type": "launch-rockets", "ref": "x1"}),
        ("no type", {"ref": "x1", "text": "hi"}),
        ("missing field", {"type": "send-message", "ref": "x1"}),
        ("wrong type", {"type": "send-message", "ref": "x1", "text": 5}),
        ("wrong nested type", {"type": "relay-ice-candidate", "ref": "x1", "peer_id": "p",
                               "candidate": {"sdpMLineIndex": "zero"}}),
        ("text over MessageText max", {"type": "send-message", "ref": "x1", "text": "x" * 4001}),
        ("empty text", {"type": "send-message", "ref": "x1", "text": ""}),
        ("limit out of range", {"type": "get-messages", "ref": "x1", "limit": 0}),
        ("bad status", {"type": "set-status", "ref": "x1", "status": "asleep"}),
        ("not an object", ["send-message", "x1"]),
    ],
)
@pytest.mark.parametrize("codec", [JSON_CODEC, MSGPACK_CODEC], ids=["JSON", "MSGPACK"])
def test_invalid_frames_are_bad_requests(codec: Codec, case: str, frame: Any) -> None:
    data = (msgspec.json.encode(frame) if codec.format is WireFormat.JSON
            else msgspec.msgpack.encode(frame))
    err = _error(codec, data)
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.message
    expected_ref = "x1" if isinstance(frame, dict) and "ref" in frame else None
    assert codec.ref_of(data) == expected_ref


def test_text_of_exactly_the_limit_is_accepted() -> None:
    frame = JSON_CODEC.decode(json.dumps({"type": "send-message", "text": "é" * 4000}))
    assert frame == chat.SendMessage(text="é" * 4000)


@pytest.mark.parametrize("data", [b'{"type": "hello"', b"{nope}", b"", b"\xff\xfe\x00",
                                  '{"type": "send-message", "text": "hi", "ref": "x1"'])
def test_malformed_json(data: str | bytes) -> None:
    err = _error(JSON_CODEC, data)
    assert err.code is ErrorCode.BAD_REQUEST
    assert JSON_CODEC.ref_of(data) is None


@pytest.mark.parametrize("data", [b"\xc1", b"\x92\x01", b"\x81\xa4type", b"{}"])
def test_malformed_msgpack(data: bytes) -> None:
    err = _error(MSGPACK_CODEC, data)
    assert err.code is ErrorCode.BAD_REQUEST


def test_frame_over_max_frame_bytes_is_too_large() -> None:
    codec = Codec(WireFormat.JSON, REQUEST_TYPES, max_frame_bytes=100)
    frame = {"type": "set-topic", "ref": "x1", "topic": "t" * 100}
    data = msgspec.json.encode(frame)
    assert len(data) > 100
    assert _error(codec, data).code is ErrorCode.TOO_LARGE
    assert _error(codec, data.decode()).code is ErrorCode.TOO_LARGE
    assert codec.ref_of(data) is None  # not even parsed
    # The default limit is the documented one.
    assert Codec(WireFormat.JSON, REQUEST_TYPES).max_frame_bytes == MAX_FRAME_BYTES == 65536
    big = msgspec.json.encode({"type": "set-topic", "topic": "t" * MAX_FRAME_BYTES})
    assert _error(JSON_CODEC, big).code is ErrorCode.TOO_LARGE


def test_frame_limit_counts_bytes_of_text_frames() -> None:
    codec = Codec(WireFormat.JSON, REQUEST_TYPES, max_frame_bytes=1000)
    text = json.dumps({"type": "set-topic", "topic": "€" * 400}, ensure_ascii=False)
    assert len(text) < 1000 < len(text.encode())  # 1200+ bytes on the wire
    assert _error(codec, text).code is ErrorCode.TOO_LARGE


def test_ref_of_recovers_the_ref_of_bad_frames() -> None:
    bad = {"type": "send-message", "ref": "abc", "text": 42}
    assert JSON_CODEC.ref_of(json.dumps(bad)) == "abc"
    assert JSON_CODEC.ref_of(msgspec.json.encode(bad)) == "abc"
    assert MSGPACK_CODEC.ref_of(msgspec.msgpack.encode(bad)) == "abc"
    # Absent, mistyped or over-long refs are not echoed.
    assert JSON_CODEC.ref_of(json.dumps({"type": "x"})) is None
    assert JSON_CODEC.ref_of(json.dumps({"type": "x", "ref": 7})) is None
    assert JSON_CODEC.ref_of(json.dumps({"type": "x", "ref": "r" * 65})) is None
    assert JSON_CODEC.ref_of(b"[1, 2]") is None
    assert MSGPACK_CODEC.ref_of(b"\xc1") is None


def test_a_text_frame_on_the_msgpack_codec_is_a_bad_request() -> None:
    text = json.dumps({"type": "hello", "ref": "h1"})
    err = _error(MSGPACK_CODEC, text)
    assert err.code is ErrorCode.BAD_REQUEST
    assert "binary" in err.message


def test_json_may_arrive_in_a_binary_frame() -> None:
    frame = JSON_CODEC.decode(b'{"type": "join", "ref": "j"}')
    assert frame == messages.Join(ref="j")


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    frame = JSON_CODEC.decode(b'{"type": "join", "ref": "j", "future_field": [1, 2]}')
    assert frame == messages.Join(ref="j")


def test_a_codec_needs_frame_types() -> None:
    with pytest.raises(ValueError):
        Codec(WireFormat.JSON, [])


# --- relayed payloads: checked, then passed on as sent (protocol.relay) ----------------------

FORWARDING_TYPES = relay.forwarding(tuple(REQUEST_TYPES))
FORWARDED_EVENTS = (relay.IceCandidateForwarded, relay.SessionDescriptionForwarded)


def test_the_daemon_reads_relays_with_their_payload_as_sent() -> None:
    assert relay.ForwardIceCandidate in FORWARDING_TYPES
    assert messages.RelayIceCandidate not in FORWARDING_TYPES
    for fmt, encode in ((WireFormat.JSON, msgspec.json.encode),
                        (WireFormat.MSGPACK, msgspec.msgpack.encode)):
        codec = Codec(fmt, FORWARDING_TYPES)
        payload = {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host", "x-new": [1]}
        frame = codec.decode(encode({"type": "relay-ice-candidate", "peer_id": "b2",
                                     "candidate": payload}))
        assert isinstance(frame, relay.ForwardIceCandidate)
        assert bytes(frame.candidate) == encode(payload)
        assert relay.is_json(frame.candidate) is (fmt is WireFormat.JSON)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_a_relayed_payload_must_fit_its_schema(fmt: WireFormat) -> None:
    codec = Codec(fmt, FORWARDING_TYPES)
    encode = msgspec.json.encode if fmt is WireFormat.JSON else msgspec.msgpack.encode
    for bad in [{"type": "relay-session-description", "peer_id": "b", "description": 7},
                {"type": "relay-session-description", "peer_id": "b",
                 "description": {"type": "nope"}},
                {"type": "relay-ice-candidate", "peer_id": "b",
                 "candidate": {"sdpMLineIndex": "0"}}]:
        err = _error(codec, encode(bad))
        assert err.code is ErrorCode.BAD_REQUEST
        assert "$.description" in err.message or "$.candidate" in err.message, err.message


@pytest.mark.parametrize("source", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("target", FORMATS, ids=lambda f: f.name)
def test_a_forwarded_payload_is_converted_only_between_formats(
        source: WireFormat, target: WireFormat) -> None:
    payload = {"type": "offer", "sdp": "v=0\r\n", "x-extra": {"a": [1, None, "ü"]}}
    incoming = Codec(source, FORWARDING_TYPES).decode(
        (msgspec.json.encode if source is WireFormat.JSON else msgspec.msgpack.encode)(
            {"type": "relay-session-description", "peer_id": "b2", "description": payload}))
    assert isinstance(incoming, relay.ForwardSessionDescription)
    event = relay.SessionDescriptionForwarded(peer_id="a1", description=incoming.description)
    data = Codec(target, FORWARDED_EVENTS).encode(event)
    wire = json.loads(data) if target is WireFormat.JSON else msgspec.msgpack.decode(data)
    assert wire == {"type": "session-description", "peer_id": "a1", "description": payload}
    if source is target:  # the very bytes, not a re-encoding
        assert bytes(incoming.description) in data
    # A client's typed codec reads it as the documented event.
    typed = Codec(target, EVENT_TYPES).decode(data)
    assert typed == messages.SessionDescriptionRelayed(
        peer_id="a1", description=SessionDescription(type="offer", sdp="v=0\r\n"))
