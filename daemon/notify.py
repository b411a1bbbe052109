"""systemd's notify protocol, spoken directly: readiness, status, stopping, the watchdog.

A service with ``Type=notify`` gets ``NOTIFY_SOCKET`` in its environment: the address of a
unix datagram socket (a path, or ``@name`` for an abstract one). Each datagram is a few
``KEY=value`` lines: ``READY=1`` once the service does its job (the daemon accepts
connections), ``STATUS=...`` for ``systemctl status``, ``STOPPING=1`` when it begins to
shut down, and ``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds when the unit
has ``WatchdogSec=`` (and ``WATCHDOG_PID``, if set, is this process). That is all of
sd_notify(3) the daemon needs, so no library: see ``sd_notify`` in systemd's
``src/libsystemd/sd-daemon/sd-daemon.c``, which this follows.

Sending never blocks and never fails the daemon: a datagram the manager's queue cannot
take now is dropped (the next status replaces it), and a socket that is gone is reported
once in the log.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

import trio

__all__ = ["Notifier", "keep_informed"]

log = logging.getLogger(__name__)

# systemd asks for a watchdog ping within WATCHDOG_USEC; pinging twice as often leaves
# room for a late wake-up.
_WATCHDOG_SHARE = 0.5
_STATUS_EVERY = 5.0  # seconds between STATUS updates when there is no watchdog to pace them


class Notifier:
    """The service manager's notify socket; ``send`` writes one datagram to it."""

    def __init__(self, address: str, *, watchdog_interval: float | None = None) -> None:
        """``address`` as in NOTIFY_SOCKET; ``watchdog_interval`` in seconds, None: no pings.

        Raises ValueError for an address that is neither absolute nor abstract (``@``).
        """
        if address.startswith("@"):
            self.address: str | bytes = "\0" + address[1:]  # Linux's abstract namespace
        elif address.startswith("/"):
            self.address = address
        else:
            raise ValueError(f"NOTIFY_SOCKET={address!r} is not a socket path or @name")
        self.watchdog_interval = watchdog_interval
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier | None:
        """Return a Notifier for NOTIFY_SOCKET, or None when there is none (or it is unusable).

        The watchdog interval comes from WATCHDOG_USEC, unless WATCHDOG_PID names another
        process (the variables were inherited, not meant for us).
        """
        address = environ.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        interval: float | None = None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) / 1e6 * _WATCHDOG_SHARE
        try:
            return cls(address, watchdog_interval=interval)
        except ValueError as exc:
            log.warning("%s; not telling the service manager anything", exc,
                        extra={"event": "notify-unusable"})
            return None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (keyword names as keys); return whether it went out."""
        message = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode(), self.address)
        except BlockingIOError:
            return False
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager at %s: %s",
                            os.fsdecode(self.address).replace("\0", "@"), exc.strerror or exc,
                            extra={"event": "notify-failed"})
            return False
        return True

    def ready(self, status: str) -> None:
        """Tell the manager the service is up (``READY=1``), with its first status."""
        self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self, status: str = "shutting down") -> None:
        self.send(STOPPING="1", STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def close(self) -> None:
        self._socket.close()


async def keep_informed(notifier: Notifier, status: Callable[[], str]) -> None:
    """Ping the watchdog and send ``status()`` when it changed, until cancelled.

    Runs in the daemon's own trio loop, so a loop that stops running stops the pings, and
    systemd restarts a daemon that hangs.
    """
    period = min(notifier.watchdog_interval or _STATUS_EVERY, _STATUS_EVERY)
    shown = status()
    while True:
        await trio.sleep(period)
        if notifier.watchdog_interval is not None:
            notifier.watchdog()
        now = status()
        if now != shown:
            shown = now
            notifier.status(now)
