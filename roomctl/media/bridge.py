"""A private asyncio event loop in its own thread, and the two ways across to trio.

aiortc is asyncio-only, and the client is trio. DESIGN section 8: trio-asyncio hung in
``pc.close()`` about one run in ten and changes asyncio globally, so aiortc runs on its own
loop in a thread instead, and every aiortc call, synchronous ones included, happens there.

- trio -> asyncio: ``AsyncioThread.call(coro)`` runs a coroutine on the loop and waits for
  its result (cancelling the trio caller cancels the asyncio task); ``post(fn, *args)``
  schedules a plain call and does not wait.
- asyncio -> trio: ``TrioInbox.put(item)``, callable from any thread, lands ``item`` in a
  bounded trio memory channel through the trio token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncioThread:
    """An asyncio loop running forever in a daemon thread until ``stop``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="roomctl-asyncio", daemon=True)
        self._started = False

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        If the trio caller is cancelled, the asyncio task is cancelled too and Cancelled is
        raised at once; the task may still be finishing its own cleanup on the loop.
        """
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # the trio side is gone; nobody waits for this result any more

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop; returns at once. Ignored once stopped."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: we are shutting down
            log.debug("dropped a call to %r after the loop stopped", fn)

    async def stop(self) -> None:
        """Cancel what still runs on the loop, stop it, and wait for the thread to end.

        Callers bound this with a trio deadline; if it runs out, the daemon thread is left
        behind (it cannot keep the process alive).
        """
        if not self._started or not self._thread.is_alive():
            return
        try:
            await self.call(_cancel_all())
        except Exception as exc:  # a task that fails while cancelled: stop anyway
            log.debug("while cancelling the loop's tasks: %r", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)


async def _cancel_all() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


class TrioInbox(Generic[T]):
    """A bounded trio channel that any thread may put into.

    Overflow policy: when ``capacity`` items are waiting, a new item is dropped and counted
    (``dropped``). The trio side only prints or forwards what it gets, so this does not happen
    in practice; if it did, a lost stats sample is harmless and a lost offer or answer ends as
    a peer that does not connect in time, reported and dropped like any other.
    """

    def __init__(self, capacity: int) -> None:
        self._send, self.receive = trio.open_memory_channel[T](capacity)
        self._token = trio.lowlevel.current_trio_token()
        self.dropped = 0

    def put(self, item: T) -> None:
        """Hand ``item`` to the trio side; callable from any thread, never blocks."""
        try:
            self._token.run_sync_soon(self._put, item)
        except trio.RunFinishedError:
            pass  # trio has finished: nobody reads any more

    def _put(self, item: T) -> None:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1
            log.warning("media events are %d behind; dropped %r", self.dropped, item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
