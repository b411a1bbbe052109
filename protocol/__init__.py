"""roomctl's wire protocol, version 1: typed msgspec messages and their codecs.

Pure data: this package imports nothing but msgspec and the standard library.
"""

from protocol import admin, chat, relay
from protocol.codec import SUBPROTOCOLS, Codec, WireFormat, negotiate
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.messages import (
    CORE_EVENTS,
    CORE_REQUESTS,
    PROTOCOL_VERSION,
    ConnectionLimits,
    Event,
    Frame,
    Grant,
    Reply,
    Request,
)

__all__ = [
    "CORE_EVENTS",
    "CORE_REQUESTS",
    "PROTOCOL_VERSION",
    "SUBPROTOCOLS",
    "CloseCode",
    "Codec",
    "ConnectionLimits",
    "ErrorCode",
    "Event",
    "Frame",
    "Grant",
    "ProtocolError",
    "Reply",
    "Request",
    "WireFormat",
    "admin",
    "chat",
    "negotiate",
    "relay",
]
