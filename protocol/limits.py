"""Named constraint types: every bound on the wire is declared once, here.

Validation happens at the boundary (the decoder); code past it trusts the types.
"""

from typing import Annotated

from msgspec import Meta

MAX_FRAME_BYTES = 64 * 1024
"""Largest frame the daemon accepts (an SDP offer with many codecs is ~10 KiB)."""

RoomName = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    ),
]
AppName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
SessionId = Annotated[str, Meta(min_length=1, max_length=64)]
Ref = Annotated[str, Meta(max_length=64)]
Token = Annotated[str, Meta(min_length=1, max_length=4096)]
DisplayName = Annotated[str, Meta(min_length=1, max_length=64)]
StatusText = Annotated[str, Meta(max_length=128)]
MessageText = Annotated[str, Meta(min_length=1, max_length=4000)]
TopicText = Annotated[str, Meta(max_length=512)]
Seq = Annotated[int, Meta(ge=1)]
SeqCursor = Annotated[int, Meta(ge=0)]
PageLimit = Annotated[int, Meta(ge=1, le=1000)]
MaxParticipants = Annotated[int, Meta(ge=1, le=10_000)]
Sdp = Annotated[str, Meta(max_length=48 * 1024)]
CandidateLine = Annotated[str, Meta(max_length=1024)]
TokenTtl = Annotated[float, Meta(gt=0, le=366 * 24 * 3600)]  # seconds a join token lives
ShortText = Annotated[str, Meta(max_length=256)]
