"""TLS for the daemon's port: the server-side SSL context, from a PEM certificate and key.

The front (``daemon.net.front``) wraps each accepted TCP stream in a ``trio.SSLStream`` with
this context, so https and wss share the port exactly as http and ws do without it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["TlsSetupError", "server_context"]

_MAX_PEM_BYTES = 1 << 20  # a long chain is a few KiB; /dev/zero is not a certificate


class TlsSetupError(OSError):
    """The certificate or key cannot be used; the message is one line for the operator."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Return a server SSLContext for ``cert`` (a PEM chain) and ``key`` (a PEM key).

    TLS 1.2 at least, Python's default ciphers, ALPN ``http/1.1`` (WebSocket upgrades
    need HTTP/1.1). Raises TlsSetupError saying which file is wrong and how.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    # OpenSSL's own errors ("[SSL] PEM lib") name neither the file nor the problem.
    for label, path, marker, kind in (
        ("TLS certificate", cert, b"-----BEGIN CERTIFICATE-----", "PEM certificate"),
        ("TLS key", key, b"PRIVATE KEY-----", "PEM private key"),
    ):
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_PEM_BYTES)
        except OSError as exc:
            raise TlsSetupError(f"{label} {path}: {exc.strerror or exc}") from None
        if marker not in data:
            raise TlsSetupError(f"{label} {path}: not a {kind}")
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise TlsSetupError(f"TLS certificate {cert} and key {key}: {_reason(exc)}") from None
    except OSError as exc:
        raise TlsSetupError(f"TLS certificate {cert} and key {key}: "
                            f"{exc.strerror or exc}") from None
    return context


def _reason(exc: ssl.SSLError) -> str:
    reason = exc.reason or ""
    if reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    if reason in ("PEM_LIB", "NO_START_LINE", "BAD_END_LINE", "BAD_BASE64_DECODE"):
        return "not a PEM certificate and private key"
    if reason.startswith("EE_KEY_TOO_SMALL") or reason == "CA_MD_TOO_WEAK":
        return f"the certificate is too weak ({reason})"
    return reason or str(exc)
