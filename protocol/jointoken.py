"""The join token's format: a JWT (HS256) and its claims, declared once for both sides.

The daemon signs and checks join tokens (``daemon.tokens``); ``roomctl token create``
signs one itself from the data directory's ``join-secret`` when the daemon on this
machine is down. Both build the claims here, so a token made either way is the same.
Pure data: the signing (PyJWT) is each side's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from protocol.messages import Grant

ISSUER = "roomctl"
AUDIENCE = "roomctl-room"
ALGORITHM = "HS256"
LEEWAY = 5.0  # seconds of clock skew tolerated on expiry


def claims(*, room: str, identity: str, name: str | None, grants: Iterable[Grant],
           ttl: float, now: float) -> dict[str, Any]:
    """Return the claims of a join token for ``room`` valid ``ttl`` seconds from ``now``.

    ``exp`` is a whole second, rounded up: the token never expires before ``now + ttl``.
    """
    claimed: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "room": room, "sub": identity,
        "grants": sorted(set(grants)), "iat": int(now), "exp": int(now + ttl) + 1,
    }
    if name is not None:
        claimed["name"] = name
    return claimed


def secret_of(text: str) -> bytes:
    """Return the signing key a ``join-secret`` file's text holds (hex, or else its bytes)."""
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        return text.encode()
    return key if len(text) >= 32 else text.encode()
