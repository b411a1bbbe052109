"""Error codes (answers to one request) and close codes (the end of a connection)."""

import enum


class ErrorCode(enum.StrEnum):
    """Stable codes carried by an ``error`` frame; clients branch on these, never on messages."""

    BAD_REQUEST = "bad-request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    ROOM_FULL = "room-full"
    RATE_LIMITED = "rate-limited"
    TOO_LARGE = "too-large"
    CONFLICT = "conflict"
    LIMIT_REACHED = "limit-reached"  # a daemon-wide limit, such as its number of rooms
    UNAVAILABLE = "unavailable"  # the store cannot be reached now; retry after retry_after
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the daemon uses; 4000-4999 are roomctl's own."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the daemon is shutting down
    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008  # the peer kept sending bad frames, or kept over the rate limit
    MESSAGE_TOO_BIG = 1009  # a frame over the size limit
    INTERNAL_ERROR = 1011  # a bug (only this connection is closed), or no pong to a ping
    UNAUTHORIZED = 4001  # no valid token: missing (where one is needed), forged or expired
    FORBIDDEN = 4003  # a valid token that does not allow this (another room, no such grant)
    ROOM_NOT_FOUND = 4004  # unknown room and the daemon does not auto-create rooms
    HELLO_TIMEOUT = 4008  # no valid hello within the handshake time
    KICKED = 4009  # an administrator removed this participant
    ROOM_DELETED = 4010
    SLOW_CONSUMER = 4011  # the outbound queue overflowed: the peer does not read fast enough
    SESSION_RESUMED = 4012  # the same session was resumed on another connection
    ROOM_FULL = 4013
    # Several nodes: the room moved to another node, or the way to it broke. Reconnect
    # (to any node) and resume the session with its resume token: nothing acknowledged
    # was lost.
    ROOM_MOVED = 4014


class ProtocolError(Exception):
    """The peer misbehaved; ``code`` and ``message`` say what to answer it.

    Raised by validation and by handlers; the connection turns it into an ``error``
    frame carrying the request's ``ref``.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
