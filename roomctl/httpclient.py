"""Plain HTTP requests to the daemon's HTTP API, from the standard library alone.

For the commands whose whole exchange is a request or two (``status``, ``room create``,
``list``, ``show``, ``delete``, ``kick``, ``token create``), so that they need no event
loop and no WebSocket client at start-up. The HTTP API serves each on the admin endpoint,
so the answers and refusals are those the WebSocket would give. Failures are CliErrors
with the exit code a script branches on, as everywhere in the CLI.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from roomctl.errors import CliError, ExitCode, exit_for_code
from roomctl.rules import explain_refusal
from roomctl.target import Target, admin_token_refused, no_admin_token

__all__ = ["Answer", "admin", "request"]


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


def request(target: Target, method: str, path: str, *, token: str | None = None,
            body: Any = None) -> Answer:
    """Send one request (``body`` as JSON) to the daemon ``target`` names; return its answer.

    Raises CliError: UNREACHABLE when nothing answers there (refused, DNS, TLS), TIMEOUT
    after ``target.timeout`` seconds.
    """
    parts = urlsplit(target.url)
    host = parts.hostname or ""
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data: bytes | None = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection: http.client.HTTPConnection
    if target.secure:
        connection = http.client.HTTPSConnection(host, parts.port or 443,
                                                 timeout=target.timeout,
                                                 context=target.ssl_context())
    else:
        connection = http.client.HTTPConnection(host, parts.port or 80, timeout=target.timeout)
    try:
        connection.request(method, path, body=data, headers=headers)
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


def admin(target: Target, method: str, path: str, body: Any = None,
          explain: type | None = None) -> Any:
    """One call of the HTTP API with the admin token (or a join token given); return the
    answer's body (None for 204).

    Raises CliError: UNAUTHORIZED without a token, or when the daemon refuses a token read
    from a data directory (naming the file); the daemon's refusal otherwise (exit code by
    error code; a decoder's wording about a field of ``explain`` put in words); and what
    ``request`` raises.
    """
    credential = target.credential()
    if credential is None:
        raise no_admin_token(target)
    answer = request(target, method, path, token=credential.token, body=body)
    if answer.status < 400:
        return answer.body
    code, message = answer.error or ("", f"HTTP {answer.status}")
    if not code:
        raise CliError(ExitCode.REFUSED, f"{target.url} answered {method} {path} with "
                                         f"{message}: is it a roomctl daemon?")
    if code == "unauthorized" and credential.implicit:
        raise admin_token_refused(target, credential, message, code=code)
    if code == "bad-request" and explain is not None:
        message = explain_refusal(message, explain)
    grant = answer.body["error"].get("grant")
    raise CliError(exit_for_code(code), f"{code}: {message}", code=code,
                   grant=grant if isinstance(grant, str) else None)
