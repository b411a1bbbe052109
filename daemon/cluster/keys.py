"""The Redis keys of the cluster: one hash tag per room, so a room's keys share a slot.

Every key of room NAME starts with ``{r:NAME}`` (Redis Cluster hashes only what is inside
the braces), so one Lua script may touch all of a room's keys, on a single Redis or a
cluster. Cluster-wide keys (the room index, the nodes, the secrets) have their own tags.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOM_INDEX = "{roomctl}:rooms"  # set: every room's name
SECRETS = "{roomctl}:secrets"  # hash: admin-token, join-secret (the cluster's, not a node's)


def node_key(node: str) -> str:
    """The node's heartbeat: present (with an expiry) while the node is alive."""
    return f"{{roomctl}}:node:{node}"


def inbox(node: str) -> str:
    """The pub/sub channel the node's links deliver to."""
    return f"roomctl:inbox:{node}"


@dataclass(frozen=True, slots=True)
class RoomKeys:
    """The keys of one room."""

    name: str

    @property
    def tag(self) -> str:
        return f"{{r:{self.name}}}"

    @property
    def room(self) -> str:
        """Hash: the room record (app, created_at, meta, private, implicit)."""
        return f"{self.tag}:room"

    @property
    def seq(self) -> str:
        """String: the last committed sequence number."""
        return f"{self.tag}:seq"

    @property
    def log(self) -> str:
        """Stream: the room's log, entry ids ``<seq>-0``, fields ``at`` and ``body``."""
        return f"{self.tag}:log"

    @property
    def lease(self) -> str:
        """String with an expiry: ``<node> <epoch>``, the owner's lease."""
        return f"{self.tag}:lease"

    @property
    def epoch(self) -> str:
        """String: the fencing epoch, one more at every claim, never less."""
        return f"{self.tag}:epoch"

    @property
    def sessions(self) -> str:
        """Hash: session id -> the session record a new owner rebuilds it from."""
        return f"{self.tag}:sessions"

    @property
    def keys(self) -> str:
        """Hash: idempotency key -> the seq its post got."""
        return f"{self.tag}:keys"

    @property
    def events(self) -> str:
        """Pub/sub channel: each appended entry, as the append script publishes it."""
        return f"{self.tag}:events"

    def all(self) -> tuple[str, ...]:
        """Every key of the room that holds data (for deleting it)."""
        return (self.room, self.seq, self.log, self.sessions, self.keys)
