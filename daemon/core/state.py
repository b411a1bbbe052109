"""The engine's state: rooms, and the sessions in them, each with one explicit lifecycle.

A session is ``LIVE`` while a connection carries it, ``AWAY`` after that connection dropped
(for the grace period, when a hello with its resume token can bring it back), and ``ENDED``
once it is gone for good: left, timed out, kicked, or its room deleted. Only the engine
moves a session between states, and only ``Engine._end`` ends one.
"""

from __future__ import annotations

import enum
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.core.access import ALL_GRANTS
from daemon.core.effects import ConnId
from protocol import Grant
from protocol.messages import MediaState

if TYPE_CHECKING:
    from daemon.core.app import App


class SessionState(enum.Enum):
    LIVE = "live"  # a connection carries it
    AWAY = "away"  # its connection dropped; it can resume until the grace period runs out
    ENDED = "ended"  # gone for good


@dataclass(eq=False, slots=True)
class Session:
    id: str
    room: Room
    resume_token: str
    hidden: bool
    joined_at: float
    meta: Any
    conn: ConnId | None = None
    state: SessionState = SessionState.LIVE
    in_call: bool = False
    media: MediaState = field(default_factory=MediaState)
    grants: frozenset[Grant] = ALL_GRANTS
    identity: str | None = None  # the join token's subject
    # False: a sender (hello ``subscribe: false``), to whom no broadcast goes; only the
    # answers to its own requests.
    subscribed: bool = True
    # Mesh edges: the ids this session has (or is setting up) a peer connection with.
    # Both sets are made on first use: most sessions never join a call, and an empty set
    # is 216 bytes of every idle connection.
    peers: set[str] | None = None
    # Edges dropped while this session was away: it is told to remove them on resume.
    stale_peers: set[str] | None = None

    @property
    def live(self) -> bool:
        return self.state is SessionState.LIVE

    def edges(self) -> AbstractSet[str]:
        return self.peers or NO_EDGES

    def add_edge(self, peer_id: str) -> None:
        if self.peers is None:
            self.peers = set()
        self.peers.add(peer_id)

    def add_stale_edge(self, peer_id: str) -> None:
        if self.stale_peers is None:
            self.stale_peers = set()
        self.stale_peers.add(peer_id)


NO_EDGES: frozenset[str] = frozenset()


@dataclass(eq=False, slots=True)
class Room:
    name: str
    app: App[Any, Any]
    created_at: float
    meta: Any
    private: bool = False  # joining needs a token
    last_seq: int = 0  # highest committed log sequence number
    next_seq: int = 0  # highest allocated one (>= last_seq; allocated before commit)
    sessions: dict[str, Session] = field(default_factory=dict)
    # Made by a hello rather than create-room; cleared for good by a change to its
    # metadata (a topic, a pin) or by create-room with if_missing.
    implicit: bool = False
    # Idempotency keys of posts: committed (key -> seq, at; oldest first, kept for the
    # window), and allocated but not yet committed (key -> seq).
    keys: dict[str, tuple[int, float]] = field(default_factory=dict)
    pending_keys: dict[str, int] = field(default_factory=dict)

    def remember_key(self, key: str, seq: int, at: float, *, window: float) -> None:
        """Note that ``key`` got ``seq``; forget keys older than ``window`` seconds."""
        self.pending_keys.pop(key, None)
        self.keys[key] = (seq, at)
        for old, (_, used) in list(self.keys.items()):
            if used >= at - window:
                break
            del self.keys[old]

    @property
    def expirable(self) -> bool:
        """Whether the room goes away after staying empty: implicit, and no message ever."""
        return self.implicit and self.next_seq == 0

    def connections(self, exclude: str | None = None) -> tuple[ConnId, ...]:
        """Return the connections a broadcast goes to: every subscribed, connected session's."""
        return tuple(
            s.conn for s in self.sessions.values()
            if s.conn is not None and s.subscribed and s.id != exclude
        )

    def visible(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.hidden]

    def visible_count(self) -> int:
        return sum(1 for s in self.sessions.values() if not s.hidden)
