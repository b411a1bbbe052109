"""The built-in chat app: names, statuses, messages, topic, pins and participant limits.

Written only against the app API (``daemon.apps.api``), as any third-party app would be.
Messages live in the room's log (one entry per message, body in MessagePack); topic,
pins, creator and the participant limit are the room's metadata.

A daemon may accept shorter message texts and display names than the protocol allows
(``max_text``, ``max_name``); longer ones get ``too-large`` and change nothing. (Beyond
the protocol's own bounds the decoder answers ``bad-request`` before the app sees them.)
"""

from __future__ import annotations

from typing import Any

import msgspec

from daemon.apps.api import App, Context, handles
from daemon.core.records import LogEntry
from protocol import ErrorCode, Grant, ProtocolError
from protocol.chat import (
    CHAT_EVENTS,
    MAX_PINS,
    ChatMessage,
    ChatParticipantMeta,
    ChatRoomMeta,
    GetMessages,
    MessagePosted,
    Messages,
    Pin,
    PinsChanged,
    SendMessage,
    SetName,
    SetStatus,
    SetTopic,
    TopicChanged,
    Unpin,
)
from protocol.limits import MAX_DISPLAY_NAME, MAX_FRAME_BYTES, MAX_MESSAGE_TEXT
from protocol.messages import Hello

DEFAULT_NAME = "guest"
# What an administrator's update-room may change (pins and the creator are the room's own).
UPDATABLE = frozenset({"topic", "max_participants", "public"})

_encode_message = msgspec.msgpack.Encoder().encode
_decode_message = msgspec.msgpack.Decoder(ChatMessage).decode
_decode_participant = msgspec.msgpack.Decoder(ChatParticipantMeta).decode


class ChatApp(App[ChatRoomMeta, ChatParticipantMeta]):
    """Rooms where participants chat; the default app of ``roomctl serve``.

    Writing to the room's history and its shared state (messages, topic, pins) needs the
    ``post`` grant, and reading its history the ``read`` grant (which ``join`` includes);
    names and statuses need only being in the room.
    """

    name = "chat"
    room_meta_type = ChatRoomMeta
    events = CHAT_EVENTS

    def __init__(self, *, max_text: int = MAX_MESSAGE_TEXT,
                 max_name: int = MAX_DISPLAY_NAME) -> None:
        if not 1 <= max_text <= MAX_MESSAGE_TEXT:
            raise ValueError(f"max_text must be 1 to {MAX_MESSAGE_TEXT}")
        if not 1 <= max_name <= MAX_DISPLAY_NAME:
            raise ValueError(f"max_name must be 1 to {MAX_DISPLAY_NAME}")
        self.max_text = max_text
        self.max_name = max_name

    def create_room(self, options: dict[str, Any] | None, *, creator: str | None) -> ChatRoomMeta:
        meta = super().create_room(options, creator=creator)
        if meta.creator is None and creator is not None:
            meta = msgspec.structs.replace(meta, creator=creator)
        return meta

    def max_participants(self, meta: ChatRoomMeta) -> int | None:
        return meta.max_participants

    def update_room(self, meta: ChatRoomMeta, changes: dict[str, Any]) -> ChatRoomMeta:
        unknown = sorted(set(changes) - UPDATABLE)
        if unknown:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"invalid room options: {unknown[0]!r} cannot be changed; "
                                f"update-room changes {', '.join(sorted(UPDATABLE))}")
        return super().update_room(meta, changes)

    def room_updated(self, ctx: Context, before: ChatRoomMeta, after: ChatRoomMeta) -> None:
        if after.topic != before.topic:
            ctx.broadcast(TopicChanged(topic=after.topic))

    def decode_session_meta(self, data: bytes) -> ChatParticipantMeta:
        return _decode_participant(data)

    def admit(self, ctx: Context, hello: Hello) -> ChatParticipantMeta:
        if hello.name is not None:
            self._check_name(hello.name)
        return ChatParticipantMeta(name=hello.name or DEFAULT_NAME)

    def _check_name(self, name: str) -> None:
        """Raise ProtocolError ``too-large`` for a name over this daemon's limit."""
        if len(name) > self.max_name:
            raise ProtocolError(ErrorCode.TOO_LARGE,
                                f"the name is {len(name)} characters; this daemon accepts at "
                                f"most {self.max_name}")

    # --- requests ----------------------------------------------------------------------------

    @handles(SetName)
    def set_name(self, ctx: Context, request: SetName) -> None:
        self._check_name(request.name)
        ctx.set_session_meta(msgspec.structs.replace(ctx.session_meta, name=request.name))
        ctx.ok()

    @handles(SetStatus)
    def set_status(self, ctx: Context, request: SetStatus) -> None:
        meta = msgspec.structs.replace(ctx.session_meta, status=request.status,
                                       status_text=request.text)
        ctx.set_session_meta(meta)
        ctx.ok()

    @handles(SendMessage, grant=Grant.POST)
    def send_message(self, ctx: Context, request: SendMessage) -> None:
        if len(request.text) > self.max_text:
            raise ProtocolError(ErrorCode.TOO_LARGE,
                                f"the message is {len(request.text)} characters; this daemon "
                                f"accepts at most {self.max_text}")
        assert ctx.session is not None
        if request.key is not None and self._replay(ctx, request.key):
            return
        sender: ChatParticipantMeta = ctx.session_meta
        message = ChatMessage(
            seq=ctx.allocate_seq(),
            at=ctx.now,
            sender_id=ctx.session.id,
            sender_name=sender.name,
            text=request.text,
        )

        def posted(after: Context) -> None:
            if after.session is not None and after.session.room is after.room:
                # The count is part of the participant view, but announcing it per message
                # would double the room's traffic; clients see it in participant lists.
                meta: ChatParticipantMeta = after.session_meta
                after.set_session_meta(
                    msgspec.structs.replace(meta, messages_sent=meta.messages_sent + 1),
                    announce=False,
                )
            after.ok(seq=message.seq, at=message.at)
            after.broadcast(MessagePosted(message=message))

        ctx.persist(ctx.log_entry(message.seq, _encode_message(message), key=request.key),
                    then=posted)

    @staticmethod
    def _replay(ctx: Context, key: str) -> bool:
        """Answer a post whose idempotency key was used before; return whether it was.

        A committed key gets the first post's seq at once; a key whose first post is still
        on its way to the store gets it once that commits (or ``unavailable`` if it failed).
        Nothing is stored or broadcast again.
        """
        known = ctx.seq_for_key(key)
        if known is None:
            return False
        seq, at = known
        if at is not None:
            ctx.ok(seq=seq, at=at)
            return True

        def settled(after: Context) -> None:
            now_known = after.seq_for_key(key)
            if now_known is not None and now_known[0] == seq and now_known[1] is not None:
                after.ok(seq=seq, at=now_known[1])
            else:
                after.error(ErrorCode.UNAVAILABLE, "the first post with this key was not "
                            "stored; send it again", retry_after=0.1)

        ctx.persist(then=settled)  # no write: runs in order, after the first post's commit
        return True

    @handles(GetMessages, grant=Grant.READ)
    def get_messages(self, ctx: Context, request: GetMessages) -> None:
        limit = request.limit

        def respond(after: Context, entries: list[LogEntry]) -> None:
            has_more = len(entries) > limit
            if has_more:
                # One extra entry was read to learn whether the page is cut; drop it from
                # the far end: the newest when paging forward, the oldest when backward.
                entries = entries[:limit] if request.after is not None else entries[-limit:]
            messages = [_decode_message(e.body) for e in entries]
            forward = request.after is not None
            fitting = _fit_in_frame(messages if forward else messages[::-1])
            if len(fitting) < len(messages):
                has_more = True
                messages = fitting if forward else fitting[::-1]
            after.reply(Messages(ref=after.ref, messages=messages, has_more=has_more))

        ctx.query(after=request.after, before=request.before, limit=limit + 1, respond=respond)

    @handles(SetTopic, grant=Grant.POST)
    def set_topic(self, ctx: Context, request: SetTopic) -> None:
        by = ctx.session.id if ctx.session is not None else None
        previous = ctx.room_meta
        write = ctx.set_room_meta(msgspec.structs.replace(previous, topic=request.topic))

        def changed(after: Context) -> None:
            after.ok()
            after.broadcast(TopicChanged(topic=request.topic, by=by))

        ctx.persist(write, then=changed, undo=ctx.room_meta_undo(previous))

    @handles(Pin, Unpin, grant=Grant.POST)
    def pin(self, ctx: Context, request: Pin | Unpin) -> None:
        meta: ChatRoomMeta = ctx.room_meta
        if request.seq > ctx.room.last_seq:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no message {request.seq} in this room")
        pinning = isinstance(request, Pin)
        if (request.seq in meta.pins) == pinning:
            ctx.ok()  # pinned already, or not pinned: both idempotent, nothing changes
            return
        if pinning and len(meta.pins) >= MAX_PINS:
            raise ProtocolError(ErrorCode.CONFLICT, f"a room holds at most {MAX_PINS} pins")
        pins = sorted([*meta.pins, request.seq]) if pinning else \
            [seq for seq in meta.pins if seq != request.seq]
        by = ctx.session.id if ctx.session is not None else None
        write = ctx.set_room_meta(msgspec.structs.replace(meta, pins=pins))

        def changed(after: Context) -> None:
            after.ok()
            after.broadcast(PinsChanged(pins=pins, by=by))

        ctx.persist(write, then=changed, undo=ctx.room_meta_undo(meta))


def from_config(config: Any) -> ChatApp:
    """Return the chat app with a daemon's text and name limits (the ``roomctl.apps`` entry
    point of chat)."""
    return ChatApp(max_text=config.max_text, max_name=config.max_name)


# A page of history must fit in one frame, in either format (JSON is the larger): at most
# this many bytes of messages, leaving room for the envelope. One message always fits.
PAGE_BYTES = MAX_FRAME_BYTES - 4096
_json_size = msgspec.json.Encoder()


def _fit_in_frame(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Return the longest prefix of ``messages`` whose JSON fits in ``PAGE_BYTES``."""
    total = 0
    for count, message in enumerate(messages):
        total += len(_json_size.encode(message)) + 1
        if total > PAGE_BYTES and count > 0:
            return messages[:count]
    return messages
