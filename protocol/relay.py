"""Relayed signaling as the daemon reads and writes it: the payload stays the sender's bytes.

``RelaySessionDescription`` and ``RelayIceCandidate`` (``protocol.messages``) are what
clients build and what roomctl-protocol(7) documents; ``SessionDescriptionRelayed`` and
``IceCandidateRelayed`` are what clients get. The daemon decodes and encodes the same
frames as the ``Forward*`` types below, whose payload is ``msgspec.Raw``: the description
or candidate is checked against its schema on arrival (a recipient never gets garbage,
and every bound holds), then forwarded as the bytes its sender sent. Fields the daemon
does not know are kept, missing optional ones are not filled in, and nothing is
re-encoded.

A payload is a JSON object or a MessagePack map (the check guarantees it), so its first
byte says which encoding it is in; ``Codec.encode`` converts it only when the recipient
speaks the other wire format.
"""

import msgspec

from protocol.limits import SessionId
from protocol.messages import (
    Event,
    IceCandidate,
    RelayIceCandidate,
    RelaySessionDescription,
    Request,
    SessionDescription,
)


class ForwardIceCandidate(Request, tag="relay-ice-candidate", frozen=True, kw_only=True):
    """``relay-ice-candidate`` as the daemon reads it: the candidate as sent."""

    peer_id: SessionId
    candidate: msgspec.Raw


class ForwardSessionDescription(Request, tag="relay-session-description", frozen=True,
                                kw_only=True):
    """``relay-session-description`` as the daemon reads it: the description as sent."""

    peer_id: SessionId
    description: msgspec.Raw


class IceCandidateForwarded(Event, tag="ice-candidate", frozen=True, kw_only=True):
    """``ice-candidate`` as the daemon writes it."""

    peer_id: SessionId
    candidate: msgspec.Raw


class SessionDescriptionForwarded(Event, tag="session-description", frozen=True, kw_only=True):
    """``session-description`` as the daemon writes it."""

    peer_id: SessionId
    description: msgspec.Raw


PAYLOADS: dict[type, tuple[str, type[msgspec.Struct]]] = {
    ForwardIceCandidate: ("candidate", IceCandidate),
    ForwardSessionDescription: ("description", SessionDescription),
    IceCandidateForwarded: ("candidate", IceCandidate),
    SessionDescriptionForwarded: ("description", SessionDescription),
}
"""Each forwarding type's payload field and the schema the payload is checked against."""

FORWARDING: dict[type[Request], type[Request]] = {
    RelayIceCandidate: ForwardIceCandidate,
    RelaySessionDescription: ForwardSessionDescription,
}
"""The request types the daemon decodes as forwarding types instead."""


def forwarding(types: tuple[type[Request], ...]) -> tuple[type[Request], ...]:
    """Return ``types`` with the relay requests replaced by their forwarding readings."""
    return tuple(FORWARDING.get(t, t) for t in types)


def is_json(payload: msgspec.Raw) -> bool:
    """Return whether a checked payload is JSON (an object) rather than MessagePack (a map)."""
    view = memoryview(payload)
    return len(view) > 0 and view[0] == 0x7B  # "{"; a MessagePack map starts at 0x80
