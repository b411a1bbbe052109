"""Effects: what the sans-IO engine asks the server to do.

The engine never performs I/O; each input returns a list of these, and the server
applies them in order. Recipients of a ``Send`` are connection ids resolved when the
effect was made, which for deferred effects (``Persist.on_commit``) is commit time.
"""

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import msgspec

from protocol import CloseCode, Event

ConnId: TypeAlias = int
TimerKey: TypeAlias = tuple[str, str]


class Send(msgspec.Struct, frozen=True):
    """Send ``frame`` to each connection in ``to``; the server encodes it once per format."""

    to: tuple[ConnId, ...]
    frame: Event


class Close(msgspec.Struct, frozen=True):
    """Close one connection with a WebSocket close code and reason."""

    conn: ConnId
    code: CloseCode
    reason: str = ""


class Persist(msgspec.Struct, frozen=True):
    """Write ``writes`` in one transaction, then apply what ``on_commit`` returns.

    ``on_commit`` runs after the commit, in commit order; ``on_failure`` runs instead if
    the transaction failed. Both return further effects.
    """

    writes: tuple[Any, ...]
    on_commit: Callable[[], Sequence["Effect"]] | None = None
    on_failure: Callable[[BaseException], Sequence["Effect"]] | None = None


class Query(msgspec.Struct, frozen=True):
    """Read a page of a room's log, then apply what ``respond`` returns for the entries."""

    room: str
    after: int | None
    before: int | None
    limit: int
    respond: Callable[[list[Any]], Sequence["Effect"]]
    on_failure: Callable[[BaseException], Sequence["Effect"]] | None = None


class StartTimer(msgspec.Struct, frozen=True):
    """Call ``Engine.timer_fired(key, now)`` at ``deadline`` (replaces a timer with that key)."""

    key: TimerKey
    deadline: float


class CancelTimer(msgspec.Struct, frozen=True):
    key: TimerKey


Effect: TypeAlias = Send | Close | Persist | Query | StartTimer | CancelTimer
