"""Who may do what: the admin token, and join tokens (JWTs signed with a secret of the daemon).

A join token is a JWT (HS256, via PyJWT) carrying the room, the holder's identity (``sub``),
a display name, grants and an expiry. The daemon signs them with a secret kept in its data
directory (``join-secret``, mode 0600), so tokens stay valid across restarts and only this
daemon can make them. ``Access`` is what a connection proved: the engine decides with it
whether a hello is admitted and which requests the session may make.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from pathlib import Path

import jwt

from daemon.config import write_secret_file
from daemon.core.access import ADMIN, ALL_GRANTS, ANONYMOUS, Access
from protocol import Grant
from protocol.errors import ErrorCode, ProtocolError
from protocol.jointoken import ALGORITHM, AUDIENCE, ISSUER, LEEWAY, claims, secret_of
from protocol.local import JOIN_SECRET_FILE


def same_secret(given: str, expected: str) -> bool:
    """Compare two secrets in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


class Authority:
    """Signs and checks join tokens, and recognises the admin token."""

    def __init__(self, secret: bytes, admin_token: Callable[[], str]) -> None:
        self._secret = secret
        self._admin_token = admin_token  # read at each check: the token can be rotated

    def issue(self, *, room: str, identity: str, name: str | None, grants: list[Grant],
              ttl: float, now: float) -> tuple[str, float]:
        """Return a signed join token and its expiry (Unix seconds)."""
        claimed = claims(room=room, identity=identity, name=name, grants=grants, ttl=ttl,
                         now=now)
        return jwt.encode(claimed, self._secret, algorithm=ALGORITHM), float(claimed["exp"])

    def check(self, token: str | None) -> Access:
        """Return the Access a hello's token proves: anonymous, admin, or a join token.

        Raises ProtocolError ``unauthorized`` for a token that is forged, expired or
        malformed. Whether the access suffices for a room is the engine's decision.
        """
        if token is None:
            return ANONYMOUS
        if same_secret(token, self._admin_token()):
            return ADMIN
        try:
            decoded = jwt.decode(token, self._secret, algorithms=[ALGORITHM], audience=AUDIENCE,
                                issuer=ISSUER, leeway=LEEWAY,
                                options={"require": ["exp", "sub", "room", "grants"]})
        except jwt.ExpiredSignatureError:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "the token has expired") from None
        except jwt.InvalidSignatureError:
            raise ProtocolError(ErrorCode.UNAUTHORIZED,
                                "the token's signature is not this daemon's") from None
        except jwt.ImmatureSignatureError:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "the token is not valid yet") from None
        except jwt.InvalidTokenError:
            # Neither the admin token nor a join token of ours; PyJWT's own wording ("Not
            # enough segments") means nothing to whoever reads this.
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "not a valid token") from None
        grants = decoded["grants"]
        room, identity, name = decoded["room"], decoded["sub"], decoded.get("name")
        if not (isinstance(grants, list) and all(g in ALL_GRANTS for g in grants)
                and isinstance(room, str) and isinstance(identity, str)
                and (name is None or (isinstance(name, str) and 0 < len(name) <= 64))):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "not a valid token (bad claims)")
        expires = decoded["exp"]
        return Access(grants=frozenset(Grant(g) for g in grants), room=room, identity=identity,
                      name=name, expires_at=float(expires) if isinstance(expires, int | float)
                      else None)


def ensure_join_secret(data_dir: Path) -> bytes:
    """Return the join-token signing secret kept in ``data_dir``, creating it (0600) once."""
    path = data_dir / JOIN_SECRET_FILE
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = ""
    if not secret:
        secret = secrets.token_hex(32)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret_file(path, secret + "\n")
    return secret_of(secret)
