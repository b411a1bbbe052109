"""Printing results: aligned tables and short lines for people, stable JSON for scripts."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import msgspec

_json = msgspec.json.Encoder()


def emit_json(document: Any) -> None:
    """Write one JSON document (a struct, dict or list) and a newline to stdout, flushed."""
    sys.stdout.buffer.write(_json.encode(document) + b"\n")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``headers`` in left-aligned columns (the last one unpadded)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    sys.stdout.flush()


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
