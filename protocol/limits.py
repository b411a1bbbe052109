"""Every bound on the wire, declared once: the numbers, and the named constraint types built
from them.

Validation happens at the boundary (the decoder); code past it trusts the types. Daemon and
CLI read the numbers from here (a daemon may lower some of them, never raise them).
"""

from typing import Annotated

from msgspec import Meta

MAX_FRAME_BYTES = 64 * 1024
"""Largest frame the daemon accepts (an SDP offer with many codecs is ~10 KiB)."""

ROOM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ROOM_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_ROOM_NAME = 64
MAX_SESSION_ID = 64
MAX_REF = 64
MAX_TOKEN = 4096
MAX_DISPLAY_NAME = 64
MAX_STATUS_TEXT = 128
MAX_MESSAGE_TEXT = 4000
MAX_TOPIC = 512
MAX_PAGE = 1000  # messages in one get-messages page
MAX_ROOM_PARTICIPANTS = 10_000  # the highest max_participants a room may ask for
MAX_SDP = 48 * 1024
MAX_CANDIDATE = 1024
MAX_TOKEN_TTL = 366 * 24 * 3600  # seconds a join token may live
MAX_SHORT_TEXT = 256
MAX_IDENTITY = 128
MAX_IDEMPOTENCY_KEY = 128
IDEMPOTENCY_WINDOW = 24 * 3600  # seconds a post's key is remembered (at the least)

RoomName = Annotated[str, Meta(pattern=ROOM_NAME_PATTERN, description=ROOM_NAME_RULE)]
AppName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
SessionId = Annotated[str, Meta(min_length=1, max_length=MAX_SESSION_ID)]
Ref = Annotated[str, Meta(max_length=MAX_REF)]
Token = Annotated[str, Meta(min_length=1, max_length=MAX_TOKEN)]
DisplayName = Annotated[str, Meta(min_length=1, max_length=MAX_DISPLAY_NAME)]
StatusText = Annotated[str, Meta(max_length=MAX_STATUS_TEXT)]
MessageText = Annotated[str, Meta(min_length=1, max_length=MAX_MESSAGE_TEXT)]
TopicText = Annotated[str, Meta(max_length=MAX_TOPIC)]
Seq = Annotated[int, Meta(ge=1)]
SeqCursor = Annotated[int, Meta(ge=0)]
PageLimit = Annotated[int, Meta(ge=1, le=MAX_PAGE)]
MaxParticipants = Annotated[int, Meta(ge=1, le=MAX_ROOM_PARTICIPANTS)]
Sdp = Annotated[str, Meta(max_length=MAX_SDP)]
CandidateLine = Annotated[str, Meta(max_length=MAX_CANDIDATE)]
TokenTtl = Annotated[float, Meta(gt=0, le=MAX_TOKEN_TTL)]
ShortText = Annotated[str, Meta(max_length=MAX_SHORT_TEXT)]
Identity = Annotated[str, Meta(min_length=1, max_length=MAX_IDENTITY)]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)]
