"""Plain HTTP requests to the daemon's HTTP API, from the standard library alone.

For the commands whose whole exchange is one request (``status``), so that they need no
event loop and no WebSocket client at start-up. Failures are CliErrors with the exit code
a script branches on, as everywhere in the CLI.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from roomctl.errors import CliError, ExitCode
from roomctl.target import Target

__all__ = ["Answer", "request"]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status and its JSON body (None when it has none)."""

    status: int
    body: Any

    @property
    def error(self) -> tuple[str, str] | None:
        """The (code, message) of an error answer (``{"error": {...}}``), else None."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if not isinstance(error, dict):
            return None
        return str(error.get("code", "")), str(error.get("message", ""))


def request(target: Target, method: str, path: str, *, token: str | None = None) -> Answer:
    """Send one request to the daemon ``target`` names and return its answer.

    Raises CliError: UNREACHABLE when nothing answers there (refused, DNS, TLS), TIMEOUT
    after ``target.timeout`` seconds.
    """
    parts = urlsplit(target.url)
    host = parts.hostname or ""
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection: http.client.HTTPConnection
    if target.secure:
        connection = http.client.HTTPSConnection(host, parts.port or 443,
                                                 timeout=target.timeout,
                                                 context=target.ssl_context())
    else:
        connection = http.client.HTTPConnection(host, parts.port or 80, timeout=target.timeout)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        data = response.read()
    except TimeoutError:
        raise CliError(ExitCode.TIMEOUT,
                       f"no answer from {target.url} in {target.timeout:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise CliError(ExitCode.UNREACHABLE,
                       f"cannot reach {target.url}: TLS: the daemon's certificate is not "
                       f"trusted ({exc.verify_message or exc.reason}); give its CA with "
                       "--ca-file, or skip the check with --insecure") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise CliError(ExitCode.UNREACHABLE, f"cannot reach {target.url}: {reason}") from None
    finally:
        connection.close()
    try:
        body = json.loads(data) if data else None
    except ValueError:
        raise CliError(ExitCode.UNREACHABLE, f"{target.url} answered {path} with something "
                                             "other than JSON: is it a roomctl daemon?") from None
    return Answer(response.status, body)
