"""The protocol's limits, told in words: for checking values before sending them.

Every bound comes from ``protocol.limits`` (the ``Meta`` of a named constraint type) and is
never retyped here. The CLI refuses a value the daemon would refuse before connecting, with
the rule in words (``options.check`` makes the Typer callbacks); what the daemon still
refuses with a decoder's message (a daemon of another version, say) is put in words by
``explain_refusal``.
"""

from __future__ import annotations

import re
from typing import Any, get_args, get_type_hints

import msgspec
from msgspec import Meta

from protocol.chat import ChatRoomMeta


def meta_of(constrained: Any) -> Meta:
    """Return the ``Meta`` of an ``Annotated[..., Meta(...)]`` constraint type."""
    found = [arg for arg in get_args(constrained)[1:] if isinstance(arg, Meta)]
    if not found:
        raise TypeError(f"{constrained!r} carries no msgspec Meta")
    return found[0]


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def rule(constrained: Any) -> str:
    """Return the rule of a constraint type in words ("1 to 64 characters")."""
    meta = meta_of(constrained)
    if meta.description:
        return meta.description
    if meta.max_length is not None:
        low = meta.min_length or 0
        return (f"at most {meta.max_length} characters" if low == 0
                else f"{low} to {meta.max_length} characters")
    if meta.min_length is not None:
        return f"at least {meta.min_length} characters"
    if meta.ge is not None and meta.le is not None:
        return f"{_number(meta.ge)} to {_number(meta.le)}"
    parts = []
    if meta.ge is not None:
        parts.append(f"at least {_number(meta.ge)}")
    if meta.gt is not None:
        parts.append(f"more than {_number(meta.gt)}")
    if meta.le is not None:
        parts.append(f"at most {_number(meta.le)}")
    if meta.lt is not None:
        parts.append(f"less than {_number(meta.lt)}")
    return " and ".join(parts) or "a valid value"


def allows(constrained: Any, value: Any) -> bool:
    """Whether ``value`` meets the constraint type (checked by msgspec itself)."""
    try:
        msgspec.convert(value, constrained)
    except msgspec.ValidationError:
        return False
    return True


def problem(constrained: Any, value: Any, what: str) -> str | None:
    """Return why ``value`` is not a valid ``what`` ("room name"), or None if it is."""
    if allows(constrained, value):
        return None
    shown = f"a {len(value)}-character text" if isinstance(value, str) and len(value) > 40 \
        else repr(value)
    return f"{shown} is not a valid {what}: {rule(constrained)}"


_AT_FIELD = re.compile(r"Expected .* - at `\$\.(?P<field>[A-Za-z_]+)`")


def explain_refusal(message: str, request: msgspec.Struct | type) -> str:
    """Return a daemon's refusal of ``request`` in words, if it is a decoder's message.

    A message like "invalid frame: Expected `int` <= 10000 - at `$.max_participants`"
    becomes "max participants: 1 to 10000" when the field is one this client knows the
    rule of; any other message is returned as it is.
    """
    match = _AT_FIELD.search(message)
    if match is None:
        return message
    field = match["field"]
    for struct in (request if isinstance(request, type) else type(request), ChatRoomMeta):
        hint = get_type_hints(struct, include_extras=True).get(field)
        if hint is None:
            continue
        for candidate in (hint, *get_args(hint)):  # X | None: the constrained X inside
            try:
                return f"{field.replace('_', ' ')}: {rule(candidate)}"
            except TypeError:
                continue
    return f"{field.replace('_', ' ')}: a value this daemon does not accept"
