"""Which web pages may open a WebSocket to the daemon: the browser's ``Origin`` check.

Browsers send ``Origin`` with every WebSocket handshake and let any page connect to any
host, so without this check a page on another site could join rooms with the visitor's
network position (for example a daemon bound to 127.0.0.1). A handshake that carries an
``Origin`` is accepted when it is the daemon's own (the scheme is http or https and the
host and port are those of the ``Host`` header) or one of the allowed origins. Clients
that are not browsers (the CLI, aiortc peers, scripts) send no ``Origin`` and are not
affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["ANY_ORIGIN", "normalize_origin", "origin_allowed"]

ANY_ORIGIN = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str:
    """Return ``origin`` as browsers serialise it: ``scheme://host[:port]``, lower case.

    The default port of the scheme is left out, as browsers do. ``*`` stays ``*``.
    Raises ValueError for anything but an http or https origin with a host and no path.
    """
    text = origin.strip()
    if text == ANY_ORIGIN:
        return text
    scheme, host, port = _parts(text)
    return f"{scheme}://{_host_text(host)}" + ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")


def origin_allowed(origin: str, host_header: str | None, allowed: tuple[str, ...]) -> bool:
    """Return whether a handshake from ``origin`` may proceed.

    ``allowed`` holds normalised origins (see ``normalize_origin``); ``*`` allows any.
    The daemon's own origin has the Host header's host and port, with either scheme; a
    Host without a port (the default one, as a TLS-terminating proxy forwards it)
    matches http://host and https://host.
    """
    if ANY_ORIGIN in allowed:
        return True
    try:
        scheme, host, port = _parts(origin.strip())
    except ValueError:
        return False  # "null" (sandboxed frames, file: pages) or garbage
    if normalize_origin(origin) in allowed:
        return True
    if host_header is None:
        return False
    own = _host_port(host_header.strip().lower())
    if own is None:
        return False
    own_host, own_port = own
    expected_port = _DEFAULT_PORTS[scheme] if own_port is None else own_port
    return (own_host, expected_port) == (host, port)


def _parts(origin: str) -> tuple[str, str, int]:
    parts = urlsplit(origin)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{origin!r} is not an http or https origin")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment \
            or parts.username is not None:
        raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{origin!r} has a bad port") from None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _host_port(host_header: str) -> tuple[str, int | None] | None:
    """Split a Host header (``name``, ``name:port``, ``[v6]:port``); None if malformed."""
    parts = urlsplit(f"//{host_header}")
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, port
