"""The daemon's log: its two formats, and lines that clients can cause at will kept in check.

Every record the daemon writes carries its context in ``extra``: ``event`` (a stable
name such as ``room-created``), and where they apply ``room``, ``session``, ``conn`` and
``peer``. ``JsonFormatter`` turns each record into one JSON object per line, for a log
pipeline: ``time`` (UTC, ISO 8601), ``level``, ``event``, ``message``, ``node`` (this
host), ``logger``, then the context and any other field of the record's ``extra``.
``TextFormatter`` is the line a person reads: time, level, logger, message.
``configure`` installs one of them on the root logger (``auto``: text on a terminal,
JSON otherwise).

A refused token, a rate-limit close or a room made by a visit is worth one line each, but

A refused token, a rate-limit close or a room made by a visit is worth one line each, but
anyone can cause thousands a second. Each kind of such line goes through a ``LogThrottle``:
a token bucket lets ``burst`` lines through at once and ``rate`` a second after that; the
lines it holds back are counted, and the next line that passes says how many there were
(``suppressed``), as does the daemon's last words (``flush``). The metrics count every
event regardless.
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
from collections.abc import Mapping
from typing import IO, Any, Final

from daemon.net.ratelimit import TokenBucket

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogThrottle", "TextFormatter", "configure"]

LOG_FORMATS: Final = ("auto", "text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}
# Context fields first, under the names a log pipeline sees ("conn" is "connection").
_CONTEXT: Final = (("room", "room"), ("session", "session"), ("conn", "connection"),
                   ("peer", "peer"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module's docstring for the keys).

    ``event`` is ``log`` for a record that names none (a library's warning, say). Values
    that JSON cannot hold are written as their ``str``; a traceback goes in ``exception``.
    """

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node if node is not None else socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        fields = vars(record)
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
                            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": fields.get("event") or "log",
            "message": record.getMessage(),
            "node": self.node,
            "logger": record.name,
        }
        for attribute, name in _CONTEXT:
            value = fields.get(attribute)
            if value is not None:
                line[name] = value
        for name, value in fields.items():
            if name not in _STANDARD and name not in line and name not in (
                    "event", *(a for a, _ in _CONTEXT)):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message``, the line a person reads on a terminal."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)


def configure(level: str, log_format: str, stream: IO[str], *,
              node: str | None = None) -> logging.Formatter:
    """Send every log record at ``level`` or above to ``stream`` in ``log_format``.

    ``log_format`` is one of LOG_FORMATS; ``auto`` means text when ``stream`` is a
    terminal and JSON lines otherwise (a service manager's journal, a pipe, a file).
    ``node`` names the daemon in JSON lines (``Config.node_name``; the host's name without
    it). Replaces the root logger's handlers; returns the formatter installed.
    """
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    formatter: logging.Formatter = JsonFormatter(node) if log_format == "json" \
        else TextFormatter()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return formatter


class LogThrottle:
    """One kind of line: at most ``burst`` at once, then ``rate`` per second; the rest counted."""

    __slots__ = ("_bucket", "_logger", "held_back")

    def __init__(self, logger: logging.Logger, now: float, *, rate: float = 0.2,
                 burst: int = 10) -> None:
        self._logger = logger
        self._bucket = TokenBucket(rate, burst, now)
        self.held_back = 0  # lines dropped since the last one that passed

    def info(self, now: float, message: str, *args: Any,
             extra: Mapping[str, Any] | None = None) -> bool:
        """Log ``message % args`` at info level unless over the limit; return whether it was.

        A line that passes after others were held back ends with how many, and carries
        that count as ``suppressed`` in its record, next to ``extra``.
        """
        if not self._bucket.take(now):
            self.held_back += 1
            return False
        held, self.held_back = self.held_back, 0
        if held:
            message += " (%d similar lines suppressed before this one)"
            args = (*args, held)
        self._logger.info(message, *args, extra={**(extra or {}), "suppressed": held})
        return True

    def flush(self, what: str) -> None:
        """Say how many ``what`` lines are still held back, if any (at shutdown)."""
        if self.held_back:
            self._logger.info("%d more %s lines were suppressed", self.held_back, what,
                              extra={"event": "suppressed", "suppressed": self.held_back})
            self.held_back = 0
