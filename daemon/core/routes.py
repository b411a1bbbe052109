"""One table per endpoint: each request type, the grant it needs, and its handler.

Handlers are methods marked with ``@handles(RequestType, grant=Grant.X)``; a class's
table is read from its marked methods (inherited ones included), so the type, its grant
and its code are written once, side by side. The engine's core requests and every app's
requests are routed the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from protocol import Grant, Request

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__roomctl_handles__"


def handles(*types: type[Request], grant: Grant | None = None) -> Callable[[F], F]:
    """Mark a method ``(self, ctx, request)`` as the handler of ``types``.

    ``grant`` is what the session's token must grant for the request to run (None: being
    in the room is enough); without it the request is answered ``forbidden``.
    """
    if not types:
        raise TypeError("handles() needs at least one request type")

    def mark(func: F) -> F:
        setattr(func, _MARK, (types, grant))
        return func

    return mark


@dataclass(frozen=True, slots=True)
class Route:
    """How one request type is handled: the grant it needs and the (unbound) handler."""

    grant: Grant | None
    handler: Callable[..., Any]


def routes_of(cls: type) -> dict[type[Request], Route]:
    """Return the route table of ``cls``: its ``@handles`` methods, subclasses winning.

    Raises TypeError when two methods of one class claim the same request type.
    """
    table: dict[type[Request], Route] = {}
    for klass in reversed(cls.__mro__):
        own: dict[type[Request], str] = {}
        for name, attribute in vars(klass).items():
            marked: Any = getattr(attribute, _MARK, None)
            if marked is None:
                continue
            types, grant = marked
            for request_type in types:
                if request_type in own:
                    raise TypeError(f"{klass.__name__}.{name} and .{own[request_type]} both "
                                    f"handle {request_type.__name__}")
                own[request_type] = name
                table[request_type] = Route(grant, attribute)
    return table
