"""Printing results: aligned tables and short lines for people, stable JSON for scripts."""

from __future__ import annotations

import os
import select
import stat
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import msgspec

_json = msgspec.json.Encoder()


class OutputClosed(Exception):
    """Standard output was closed by its reader (``roomctl tail R | head -1`` has had enough).

    Not an OSError on purpose: it must never pass for a network failure. Commands end
    quietly on it, with status 141 (128 + SIGPIPE), as coreutils do.
    """


def write(data: bytes) -> None:
    """Write ``data`` to stdout and flush it; raise OutputClosed if the reader went away."""
    try:
        sys.stdout.flush()  # whatever print() left in the text layer goes first
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except BrokenPipeError:
        _closed()


def flush() -> None:
    """Flush stdout; raise OutputClosed if the reader went away."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _closed()


async def watch_closed() -> None:
    """Raise OutputClosed as soon as stdout's reader goes away; wait forever otherwise.

    A follower (``roomctl tail R | head -1``) would otherwise notice only at its next
    write, which in a quiet room may never come, and the pipeline would never end. Only a
    pipe can lose its reader; a terminal or file never does.
    """
    import trio  # here: printing a result needs no event loop (start-up time)

    fd = sys.stdout.fileno()
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        await trio.sleep_forever()
    errors = select.poll()
    errors.register(fd, 0)  # POLLERR: the pipe has no reader any more
    while True:
        # A pipe's write end is never readable, but trio wakes readers on EPOLLERR too.
        await trio.lowlevel.wait_readable(fd)
        if errors.poll(0):
            _closed()
        await trio.sleep(0.1)  # woken without an error: do not spin


def _closed() -> NoReturn:
    # Point stdout at /dev/null, so that nothing complains when Python flushes it at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise OutputClosed


def emit_json(document: Any) -> None:
    """Write one JSON document (a struct, dict or list) and a newline to stdout, flushed."""
    write(_json.encode(document) + b"\n")


def emit_lines(lines: Iterable[str]) -> None:
    """Write lines of text to stdout, flushed."""
    write("".join(f"{line}\n" for line in lines).encode())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``headers`` in left-aligned columns (the last one unpadded)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    emit_lines(lines)


def when(timestamp: float) -> str:
    """Return a Unix time as local ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def clock(timestamp: float) -> str:
    """Return a Unix time as local ``HH:MM:SS`` (for one-line events)."""
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def iso(timestamp: float) -> str:
    """Return a Unix time as UTC ISO 8601 with milliseconds (for JSON)."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{whole}.{int(timestamp * 1000) % 1000:03d}Z"
