"""The outbound side of a WebSocket: frames built once, written through one ordered buffer.

trio-websocket frames each ``send_message`` through wsproto and writes it with
``send_all``, which costs a task switch or three per frame, per recipient. Instead:

* Server-to-client frames are never masked, so a broadcast's frame bytes are the same
  for every recipient; ``frame`` builds them once.
* Every byte for a connection, ours and trio-websocket's own (the handshake response,
  pongs, the close frame), goes through one ``OutputStream``, which wraps the stream
  trio-websocket is given. ``write`` is synchronous: when nothing is pending it writes
  straight to the socket (one ``os.write``, no task switch); what the kernel does not
  take waits, in order, for a flusher task, which writes everything pending with one
  ``os.writev`` whenever the socket is writable, and ends once nothing is pending (an
  idle connection holds no flusher task). Order is all that keeps frames
  whole, and one buffer gives it.
* Without a socket file descriptor (TLS, in-memory streams) the flusher writes through
  the wrapped stream's ``send_all`` instead, in batches.

We only ever write whole, unfragmented data frames, the one kind of frame that leaves
wsproto's state untouched; control frames stay with trio-websocket.
"""

from __future__ import annotations

import collections
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


class OutputStream(trio.abc.Stream):
    """Wraps a connection's stream: reads pass through, writes go through one buffer.

    ``fd`` is the socket's file descriptor when the stream is a plain TCP socket (the
    fast path); None otherwise. ``on_stall`` is called when pending output made no
    progress for ``stall_timeout`` seconds (the peer stopped reading).
    """

    def __init__(self, inner: trio.abc.Stream, fd: int | None, nursery: trio.Nursery, *,
                 stall_timeout: float = 10.0, on_stall: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self._fd = fd
        self._nursery = nursery  # where flusher tasks run: the connection's own nursery
        self._flushing = False
        self._cork: list[bytes] | None = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._head_started = False  # the first pending item is the rest of a half-written frame
        self._drained = trio.Event()
        self._drained.set()
        self._closed = False
        self.error: OSError | None = None
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.bytes_written = 0
        self.receive_some = inner.receive_some  # type: ignore[method-assign]

    # --- reading: straight through ---------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    # --- writing ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Return how many writes wait for the socket (not counting corked ones)."""
        return len(self._pending)

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
        if not self._pending and self._fd is not None:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._fail(exc)
                return
            self.bytes_written += written
            if written == len(data):
                return
            if written:
                data = data[written:]
                self._head_started = True
        self._pending.append(data)
        if self._drained.is_set():
            self._drained = trio.Event()
        if not self._flushing:
            self._flushing = True
            self._nursery.start_soon(self._flush)

    def discard_pending(self) -> None:
        """Drop what waits, except the rest of a frame already half on the wire."""
        self._cork = None
        keep = self._pending[0] if (self._pending and self._head_started) else None
        self._pending.clear()
        if keep is not None:
            self._pending.append(keep)
        else:
            self._drained.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """trio-websocket's writes: queued in order with ours, then waits until written."""
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self.error is not None:
            raise trio.BrokenResourceError("the connection failed") from self.error
        self.write(bytes(data))
        await self._drained.wait()
        if self.error is not None:
            raise trio.BrokenResourceError("the connection failed") from self.error

    async def wait_send_all_might_not_block(self) -> None:
        await self._drained.wait()

    def release(self) -> None:
        """Stop writing for good; from here on writes are dropped.

        Call it before the socket is closed by anyone else: its descriptor number may be
        reused by the next connection at once.
        """
        self._closed = True
        self._fd = None
        self._pending.clear()
        self._cork = None
        self._drained.set()

    async def aclose(self) -> None:
        self.release()
        await self._inner.aclose()

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        self._pending.clear()
        self._drained.set()

    # --- the flusher -----------------------------------------------------------------------

    async def _flush(self) -> None:
        """Write pending output as the socket takes it; ends when nothing is pending."""
        try:
            while self._pending and not self._closed and self.error is None:
                with trio.move_on_after(self.stall_timeout) as waited:
                    await self._flush_some()
                if waited.cancelled_caught and self._pending and self.on_stall is not None:
                    self.on_stall()
                    self.on_stall = None  # once; the close handshake is bounded elsewhere
        finally:
            self._flushing = False
            if not self._pending:
                self._drained.set()

    async def _flush_some(self) -> None:
        fd = self._fd
        if fd is None:
            batch = b"".join(self._pending)
            self._pending.clear()
            self._head_started = False
            try:
                await self._inner.send_all(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(OSError(errno.EPIPE, str(exc)))
            self.bytes_written += len(batch)
            return
        try:
            await trio.lowlevel.wait_writable(fd)
        except trio.ClosedResourceError:
            self._fail(OSError(errno.EBADF, "socket closed"))
            return
        if self._fd is None:
            return
        try:
            written = os.writev(fd, list(_take(self._pending, _IOV_MAX)))
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        self.bytes_written += written
        while written:
            head = self._pending[0]
            if written >= len(head):
                written -= len(head)
                self._pending.popleft()
                self._head_started = False
            else:
                self._pending[0] = head[written:]
                self._head_started = True
                written = 0


def _take(items: collections.deque[bytes], limit: int) -> list[bytes]:
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in range(limit)]
