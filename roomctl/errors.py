"""How a command fails: its exit code, and the error it prints on stderr.

An error is one line, ``roomctl: message``; with ``--json`` it is one JSON object instead,
``{"error": {"code", "message", "exit"}}``, where ``code`` is the daemon's error code when
the daemon refused (``not-found``, ``forbidden``...) and otherwise names the exit code
(``usage``, ``unreachable``, ``timeout``...). Light on purpose: the entry point imports it
before it knows which command runs.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterator
from typing import Any


class ExitCode(enum.IntEnum):
    """The exit codes of every client command; documented in roomctl(1) and stable."""

    OK = 0
    REFUSED = 1  # the daemon answered with an error (its code is printed)
    USAGE = 2  # bad command line (Typer/Click's own code)
    NOT_FOUND = 3  # no such room or participant
    UNAUTHORIZED = 4  # missing, wrong or under-granted token
    UNREACHABLE = 5  # no daemon at the URL (connection refused, DNS, TLS failure)
    TIMEOUT = 6  # --timeout (or wait's --timeout) ran out
    INTERRUPTED = 130  # wait stopped by a signal; any command stopped by a second one
    OUTPUT_CLOSED = 141  # stdout's reader went away (128 + SIGPIPE, as coreutils)


# The "code" of an error the daemon did not name, by exit code.
CODE_FOR_EXIT: dict[ExitCode, str] = {
    ExitCode.REFUSED: "refused",
    ExitCode.USAGE: "usage",
    ExitCode.NOT_FOUND: "not-found",
    ExitCode.UNAUTHORIZED: "unauthorized",
    ExitCode.UNREACHABLE: "unreachable",
    ExitCode.TIMEOUT: "timeout",
    ExitCode.INTERRUPTED: "interrupted",
}


_EXIT_FOR_CODE: dict[str, ExitCode] = {
    "not-found": ExitCode.NOT_FOUND,
    "unauthorized": ExitCode.UNAUTHORIZED,
    "forbidden": ExitCode.UNAUTHORIZED,
    # With several nodes: the rooms' store (Redis) or the room's node cannot be reached
    # for now. Like an unreachable daemon, trying again later may work.
    "unavailable": ExitCode.UNREACHABLE,
}


def exit_for_code(code: str) -> ExitCode:
    """Return the exit code of a refusal with the daemon's error ``code``."""
    return _EXIT_FOR_CODE.get(code, ExitCode.REFUSED)


class CliError(Exception):
    """A command failed; ``message`` is the one line for stderr, ``exit_code`` the status."""

    def __init__(self, exit_code: ExitCode, message: str, *, code: str | None = None,
                 grant: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
        self.code = code  # the daemon's error code, when it refused
        self.grant = grant  # the grant the daemon said the token lacks (forbidden)


class _Mode:
    json = False  # set for a command run with --json (see use_json)


def use_json(on: bool) -> None:
    """Print errors as JSON objects from now on (the command was given ``--json``)."""
    _Mode.json = on


def json_errors() -> bool:
    """Whether errors are printed as JSON objects."""
    return _Mode.json


def report(message: str, exit_code: ExitCode, *, code: str | None = None,
           **details: Any) -> None:
    """Print an error on stderr: ``roomctl: message``, or one JSON object with --json.

    ``code`` is the daemon's error code (a ``code: `` prefix of ``message`` is then not
    repeated in the JSON message); ``details`` (a ``line``...) go into the JSON object.
    """
    if not _Mode.json:
        print(f"roomctl: {message}", file=sys.stderr, flush=True)
        return
    if code is not None:
        message = message.removeprefix(f"{code}: ")
    error: dict[str, Any] = {"code": code or CODE_FOR_EXIT.get(exit_code, "error"),
                             "message": message, "exit": int(exit_code),
                             **{k: v for k, v in details.items() if v is not None}}
    print(json.dumps({"error": error}), file=sys.stderr, flush=True)


def exception_leaves(exc: BaseException) -> Iterator[BaseException]:
    """Yield the exceptions inside ``exc``, however deeply nurseries grouped them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from exception_leaves(inner)
    else:
        yield exc
