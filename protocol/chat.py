"""Wire messages of the built-in chat app: names, statuses, messages, topic and pins.

They derive from the core bases, so they share the tagged union and its rules; the
daemon merges them into its decoder when the chat app is installed.
"""

from typing import Literal

import msgspec

from protocol.limits import (
    DisplayName,
    IdempotencyKey,
    MaxParticipants,
    MessageText,
    PageLimit,
    Seq,
    SeqCursor,
    SessionId,
    StatusText,
    TopicText,
)
from protocol.messages import Event, Reply, Request

Status = Literal["online", "away", "busy"]
MAX_PINS = 50


class ChatRoomMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The chat app's typed room metadata (``RoomInfo.meta`` of a chat room)."""

    topic: TopicText = ""
    pins: list[Seq] = []
    creator: str | None = None
    max_participants: MaxParticipants | None = None
    public: bool = False  # listed in the web page's lobby (GET /v1/rooms)


class ChatParticipantMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The chat app's part of the participant view (``Participant.meta`` in a chat room)."""

    name: str = ""
    status: Status = "online"
    status_text: str = ""
    messages_sent: int = 0


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One stored chat message; ``seq`` increases by one per message within a room."""

    seq: int
    at: float
    sender_id: str
    sender_name: str
    text: str


# --- requests --------------------------------------------------------------------------------


class SetName(Request, tag="set-name", frozen=True, kw_only=True):
    name: DisplayName


class SetStatus(Request, tag="set-status", frozen=True, kw_only=True):
    status: Status
    text: StatusText = ""


class SendMessage(Request, tag="send-message", frozen=True, kw_only=True):
    """Post a message; the ``ok`` carries its ``seq`` and is sent only once it is on disk.

    ``key`` (new in v1, optional) makes a retry safe: a second ``send-message`` with the
    same key in the same room within ``IDEMPOTENCY_WINDOW`` stores nothing and is answered
    with the first one's ``seq``.
    """

    text: MessageText
    key: IdempotencyKey | None = None


class GetMessages(Request, tag="get-messages", frozen=True, kw_only=True):
    """Page through history by sequence number; answered by ``messages``.

    With ``after``: the first ``limit`` messages after it. Otherwise the last ``limit``
    messages (before ``before`` if given). Always in ascending order.
    """

    after: SeqCursor | None = None
    before: SeqCursor | None = None
    limit: PageLimit = 50


class SetTopic(Request, tag="set-topic", frozen=True, kw_only=True):
    topic: TopicText


class Pin(Request, tag="pin", frozen=True, kw_only=True):
    seq: Seq


class Unpin(Request, tag="unpin", frozen=True, kw_only=True):
    seq: Seq


# --- events ----------------------------------------------------------------------------------


class MessagePosted(Event, tag="message-posted", frozen=True, kw_only=True):
    message: ChatMessage


class Messages(Reply, tag="messages", frozen=True, kw_only=True):
    """The answer to ``get-messages``; ``has_more`` says the page was cut at ``limit``."""

    messages: list[ChatMessage] = []
    has_more: bool = False


class TopicChanged(Event, tag="topic-changed", frozen=True, kw_only=True):
    topic: str
    by: SessionId | None = None


class PinsChanged(Event, tag="pins-changed", frozen=True, kw_only=True):
    pins: list[int]
    by: SessionId | None = None


CHAT_REQUESTS: tuple[type[Request], ...] = (
    SetName,
    SetStatus,
    SendMessage,
    GetMessages,
    SetTopic,
    Pin,
    Unpin,
)
CHAT_EVENTS: tuple[type[Event], ...] = (MessagePosted, Messages, TopicChanged, PinsChanged)
