"""What a connection proved with its token, and what each grant allows.

Pure data: the engine decides with an ``Access``; ``daemon.tokens`` makes them from
tokens (the admin token, or a JWT join token).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import Grant

ALL_GRANTS: frozenset[Grant] = frozenset(Grant)
# What anyone may do in an open room without a token: everything but manage it.
OPEN_ROOM_GRANTS: frozenset[Grant] = ALL_GRANTS - {Grant.ADMIN}


@dataclass(frozen=True)
class Access:
    """What a connection proved with its token.

    ``room`` is None for the admin token (every room); otherwise the one room the join
    token is for. ``anonymous`` means no token was given at all.
    """

    grants: frozenset[Grant]
    room: str | None = None
    identity: str | None = None
    name: str | None = None
    anonymous: bool = False
    expires_at: float | None = None  # a join token's expiry (Unix seconds)

    @property
    def is_admin(self) -> bool:
        return self.room is None and not self.anonymous

    def allows(self, grant: Grant, room: str) -> bool:
        """Whether this access grants ``grant`` in ``room``."""
        if self.is_admin:
            return True
        if self.room is not None and self.room != room:
            return False
        return grant in self.grants


ANONYMOUS = Access(grants=OPEN_ROOM_GRANTS, anonymous=True)
ADMIN = Access(grants=ALL_GRANTS)
