"""The outbound side of a WebSocket: frames built once, written through one ordered buffer.

* Server-to-client frames are never masked, so a broadcast's frame bytes are the same
  for every recipient; ``frame`` builds them once.
* Every byte for a connection (the 101 response, data frames, and the control frames
  wsproto makes: pongs, pings, the close frame) goes through one ``OutputStream``.
  ``write`` is synchronous: when nothing is pending it writes straight to the socket
  (one ``os.write``, no task switch); what the kernel does not take waits, in order, for
  a flusher task, which writes everything pending with one ``os.writev`` whenever the
  socket is writable, and ends once nothing is pending (an idle connection holds no
  flusher task, no buffer and no event). Order is all that keeps frames whole, and one
  buffer gives it.
* Without a socket file descriptor (TLS, in-memory streams) the flusher writes through
  the wrapped stream's ``send_all`` instead, in batches.

Data frames are written whole and unfragmented, the one kind of frame that leaves
wsproto's state untouched, so they need not go through wsproto at all.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

import trio

_TEXT = 0x81  # FIN + text opcode
_BINARY = 0x82  # FIN + binary opcode
_IOV_MAX = 512  # buffers per writev (Linux allows 1024)


def frame(payload: bytes, *, binary: bool) -> bytes:
    """Return one complete, unmasked server-to-client WebSocket data frame."""
    first = _BINARY if binary else _TEXT
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 65536:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


class OutputStream(trio.abc.SendStream):
    """A connection's output: synchronous writes through one ordered buffer.

    ``fd`` is the socket's file descriptor when the stream is a plain TCP socket (the
    fast path); None otherwise. ``on_stall`` is called when pending output made no
    progress for ``stall_timeout`` seconds (the peer stopped reading). Flusher tasks run
    in ``nursery``. An idle stream holds no buffer, no event and no task (see __slots__).
    """

    __slots__ = ("_closed", "_cork", "_drained", "_flushing", "_head_started", "_inner",
                 "_nursery", "_pending", "error", "fd", "on_stall", "stall_timeout")
    # _flushing: None, or the cancel scope of the running flusher (release() cancels it,
    # so the flusher may run in a nursery shared by many connections).

    def __init__(self, inner: trio.abc.SendStream, fd: int | None, nursery: trio.Nursery, *,
                 stall_timeout: float = 10.0, on_stall: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self.fd = fd
        self._nursery = nursery  # where flusher tasks run
        self._flushing: trio.CancelScope | None = None
        self._cork: list[bytes] | None = None
        # What waits for the socket, oldest first; None while nothing does. A list, not a
        # deque: it is short-lived, bounded by the daemon's outbound_queue, and an empty
        # deque alone costs ~600 bytes per idle connection.
        self._pending: list[bytes] | None = None
        self._head_started = False  # the first pending item is the rest of a half-written frame
        self._drained: trio.Event | None = None  # made only while someone waits for a drain
        self._closed = False
        self.error: OSError | None = None
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall

    # --- writing ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Return how many writes wait for the socket (not counting corked ones)."""
        return len(self._pending) if self._pending is not None else 0

    @property
    def corked(self) -> bool:
        return self._cork is not None

    def cork(self) -> None:
        """Hold writes back until ``uncork``, which writes them together (one syscall)."""
        if self._cork is None:
            self._cork = []

    def uncork(self) -> None:
        """Write what ``cork`` held back, as one write."""
        held, self._cork = self._cork, None
        if held:
            self.write(held[0] if len(held) == 1 else b"".join(held))

    def write(self, data: bytes) -> None:
        """Queue ``data`` after everything written before it; write now if nothing waits.

        Never blocks. After the stream closed or failed, data is dropped (the
        connection's reader notices the failure and ends the session).
        """
        if self._closed or self.error is not None:
            return
        if self._cork is not None:
            self._cork.append(data)
            return
        if self._pending is None:
            if self.fd is not None:
                try:
                    written = os.write(self.fd, data)
                except BlockingIOError:
                    written = 0
                except OSError as exc:
                    self._fail(exc)
                    return
                if written == len(data):
                    return
                if written:
                    data = data[written:]
                    self._head_started = True
            self._pending = [data]
        else:
            self._pending.append(data)
        if self._flushing is None:
            self._flushing = trio.CancelScope()
            self._nursery.start_soon(self._flush, self._flushing)

    def discard_pending(self) -> None:
        """Drop what waits, except the rest of a frame already half on the wire."""
        self._cork = None
        if self._pending is not None and self._head_started:
            del self._pending[1:]
        else:
            self._drop_pending()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` in order with the other writes, then wait until it is written.

        Raises ClosedResourceError after ``aclose``, BrokenResourceError once a write failed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self.error is not None:
            raise trio.BrokenResourceError("the connection failed") from self.error
        self.write(bytes(data))
        await self.wait_send_all_might_not_block()
        if self.error is not None:
            raise trio.BrokenResourceError("the connection failed") from self.error

    async def wait_send_all_might_not_block(self) -> None:
        """Return once nothing waits for the socket (at once when nothing does)."""
        if self._pending is None and self._flushing is None:
            await trio.lowlevel.checkpoint()
            return
        if self._drained is None:
            self._drained = trio.Event()
        await self._drained.wait()

    def release(self) -> None:
        """Stop writing for good; from here on writes are dropped.

        Call it before the socket is closed by anyone else: its descriptor number may be
        reused by the next connection at once. Also drops ``on_stall``, which usually
        refers back to the connection that owns this stream.
        """
        self._closed = True
        self.fd = None
        self._cork = None
        self.on_stall = None
        self._drop_pending()
        if self._flushing is not None:
            self._flushing.cancel()

    async def aclose(self) -> None:
        self.release()
        await self._inner.aclose()

    def _fail(self, exc: OSError) -> None:
        # Kept without its traceback, whose frames hold this stream: a reference cycle.
        self.error = exc.with_traceback(None)
        self.error.__context__ = None
        self._drop_pending()

    def _drop_pending(self) -> None:
        self._pending = None
        self._head_started = False
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.set()

    # --- the flusher -----------------------------------------------------------------------

    async def _flush(self, scope: trio.CancelScope) -> None:
        """Write pending output as the socket takes it; ends when nothing is pending."""
        try:
            with scope:
                while self._pending is not None and not self._closed and self.error is None:
                    with trio.move_on_after(self.stall_timeout) as waited:
                        await self._flush_some()
                    if waited.cancelled_caught and self._pending and self.on_stall is not None:
                        # Once; the close that follows is bounded elsewhere.
                        on_stall, self.on_stall = self.on_stall, None
                        on_stall()
        finally:
            self._flushing = None
            if not self._pending:
                self._drop_pending()

    async def _flush_some(self) -> None:
        pending = self._pending
        assert pending is not None
        fd = self.fd
        if fd is None:
            batch = b"".join(pending)
            self._drop_pending_keep_waiters()
            try:
                await self._inner.send_all(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(OSError(errno.EPIPE, str(exc)))
            return
        try:
            await trio.lowlevel.wait_writable(fd)
        except trio.ClosedResourceError:
            self._fail(OSError(errno.EBADF, "socket closed"))
            return
        if self.fd is None or self._pending is not pending:
            return  # released or discarded while we waited
        try:
            written = os.writev(fd, pending[:_IOV_MAX])
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        done = 0
        for head in pending:
            if written < len(head):
                break
            written -= len(head)
            done += 1
        del pending[:done]
        if written:
            pending[0] = pending[0][written:]
            self._head_started = True
        elif done:
            self._head_started = False
        if not pending:
            self._pending = None

    def _drop_pending_keep_waiters(self) -> None:
        # The batch is handed to send_all: nothing waits here, but waiters for a drain
        # must wait until send_all returns (the flusher's finally wakes them).
        self._pending = None
        self._head_started = False
