"""Keeping libasound's own error lines off stderr.

FFmpeg's ALSA input opens the device through libasound, which prints its errors straight to
stderr ("ALSA lib conf.c:4580:(snd_config_update_r) Cannot access file ...") before FFmpeg
returns its own error. ``roomctl join`` says what failed in one line, so the library is given
an error handler that prints nothing. Redirecting file descriptor 2 around the open would
also hide whatever another thread prints meanwhile, and could not be undone if the open hung.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("roomctl.media")

# void (*snd_lib_error_handler_t)(const char *file, int line, const char *function, int err,
#                                 const char *fmt, ...): the variadic rest is never read.
_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_char_p)


@_HANDLER_TYPE
def _say_nothing(file: bytes, line: int, function: bytes, err: int, fmt: bytes) -> None:
    """The error handler given to libasound (kept alive at module level, as ctypes needs)."""


_silenced: set[str] = set()


def _loaded_libasound() -> list[str]:
    """Return the paths of the libasound copies loaded in this process (PyAV bundles one)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libasound" in line}
    except OSError:  # not Linux: nothing to silence that we know of
        return []
    return sorted(path for path in paths if path.startswith("/"))


def silence_alsa() -> None:
    """Give every loaded libasound an error handler that prints nothing (once each)."""
    for path in _loaded_libasound():
        if path in _silenced:
            continue
        try:
            library = ctypes.CDLL(path)
            library.snd_lib_error_set_handler(_say_nothing)
        except (OSError, AttributeError) as exc:
            log.debug("cannot silence %s: %s", path, exc)
        _silenced.add(path)
