"""The trio half of the store: one task that group-commits every write, in order.

See ``daemon.store.sqlite`` for the theory of operation. The queue is one ordered deque:
``submit_nowait`` appends to it without waiting (so effects applied from a commit
callback, with no chance to await, still commit in the order they were made), and
producers that can wait call ``wait_for_room`` first. That is the queue's bound: a
request path waits while ``queue_size`` jobs are queued; callbacks may add past it, at
most what one committed batch's callbacks write, since they run only after a commit.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import trio

from daemon.core.records import AppendLog, DeleteRoom, LogEntry, PutRoom, StoredRoom, Write
from daemon.store.sqlite import Store, StoreError

logger = logging.getLogger(__name__)

DoneCallback: TypeAlias = Callable[[BaseException | None], None]

@dataclass(frozen=True, slots=True)
class Job:
    """Writes to commit together, and what to call once they are (or failed)."""

    writes: tuple[Write, ...]
    on_done: DoneCallback


class OrderedWriter:
    """One ordered queue of write jobs, committed in batches by one task, callbacks in order.

    The queue and its contract (``submit_nowait``, ``wait_for_room``, ``run``, ``aclose``)
    are the same for every store; a store says how one batch is committed
    (``_commit_batch``) and how the log is read. Start it with
    ``await nursery.start(writer.run)`` and stop it with ``aclose()``.
    """

    write_types: tuple[type, ...] = (PutRoom, DeleteRoom, AppendLog)

    def __init__(self, *, queue_size: int = 4096) -> None:
        # Called after the callbacks of each committed batch, from the same task with no
        # checkpoint in between (the daemon joins a batch's frames into one write).
        self.on_batch_done: Callable[[], None] | None = None
        self._queue: collections.deque[Job] = collections.deque()
        self._queue_size = queue_size
        self._closed = False
        self._queued = trio.Event()  # set while the queue holds something (or on close)
        self._room = trio.Event()  # set while the queue is below its bound
        self._room.set()
        # Held by whichever task is draining the queue: run(), or aclose() when run()
        # is not running. There is only ever one consumer, so jobs keep their order.
        self._serve_lock = trio.Lock()

    async def _commit_batch(self, jobs: list[Job]) -> list[Exception | None]:
        """Commit ``jobs`` (in order); return each one's failure, or None."""
        raise NotImplementedError

    async def _close_store(self) -> None:
        """Release the store, once the queue is drained."""

    async def read_log(self, room: str, *, after: int | None = None,
                       before: int | None = None, limit: int = 50) -> list[LogEntry]:
        """Read a page of ``room``'s log, in ascending seq order (see ``Store.read_log``)."""
        raise NotImplementedError

    async def load_rooms(self, keys_since: float = 0.0) -> list[StoredRoom]:
        """Return the rooms to restore at start, with their keys since ``keys_since``."""
        raise NotImplementedError

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit submitted jobs until ``aclose`` is called.

        Start with ``await nursery.start(writer.run)``. Returns after ``aclose`` once
        the queue is drained. If cancelled, a batch already taken off the queue is
        still committed and its callbacks run. Jobs still queued stay queued for
        ``aclose`` or a later ``run``.

        Raises:
            RuntimeError: another task is already running this writer.
        """
        if self._serve_lock.locked():
            raise RuntimeError(f"{type(self).__name__} is already being run by another task")
        async with self._serve_lock:
            task_status.started()
            await self._serve()

    async def _serve(self) -> None:
        while True:
            await self._queued.wait()
            if not self._queue:
                return  # closed, and drained
            jobs = list(self._queue)
            self._queue.clear()
            self._queued = trio.Event()
            if self._closed:
                self._queued.set()
            self._room.set()
            # These jobs have left the queue. Nobody else will ever commit them or call
            # their callbacks, so finish the batch whatever happens to this task.
            with trio.CancelScope(shield=True):
                results = await self._commit_batch(jobs)
            # Run callbacks synchronously, with no checkpoint in between. A
            # cancellation cannot land between a commit and its callback, and
            # callbacks from different batches cannot interleave.
            for job, result in zip(jobs, results, strict=True):
                try:
                    job.on_done(result)
                except Exception:
                    logger.exception("store write callback %r raised", job.on_done)
            if self.on_batch_done is not None:
                try:
                    self.on_batch_done()
                except Exception:
                    logger.exception("store batch callback raised")

    def submit_nowait(self, writes: Sequence[Write], on_done: DoneCallback) -> None:
        """Queue ``writes`` to be committed atomically, then ``on_done`` to be called.

        Never waits: jobs are committed in the order they were submitted, whoever
        submitted them. ``on_done(None)`` runs after the commit, ``on_done(exc)`` if it
        failed, either way from the writer task, in submission order. Callers that can
        wait should ``await wait_for_room()`` first, which is what bounds the queue.

        Raises:
            trio.ClosedResourceError: the writer has been closed.
            TypeError: an item of ``writes`` is not a store write.
        """
        if self._closed:
            raise trio.ClosedResourceError("the store writer is closed")
        for item in writes:
            if not isinstance(item, self.write_types):
                raise TypeError(f"not a store write: {item!r}")
        self._queue.append(Job(tuple(writes), on_done))
        self._queued.set()
        if len(self._queue) >= self._queue_size and self._room.is_set():
            self._room = trio.Event()

    async def wait_for_room(self) -> None:
        """Wait while the queue holds ``queue_size`` jobs or more (backpressure)."""
        await self._room.wait()

    async def submit(self, writes: Sequence[Write], on_done: DoneCallback) -> None:
        """Wait for room in the queue, then ``submit_nowait``.

        Raises:
            trio.ClosedResourceError: the writer has been closed.
            TypeError: an item of ``writes`` is not a store write.
        """
        await self.wait_for_room()
        self.submit_nowait(writes, on_done)

    async def commit(self, writes: Sequence[Write]) -> None:
        """Submit ``writes`` and wait until they are committed.

        If this call is cancelled after submitting, the writes are still committed
        later. Cancelling only stops the waiting.

        Raises:
            StoreError: the commit failed; none of ``writes`` is stored.
            trio.ClosedResourceError: the writer has been closed.
        """
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def on_done(exc: BaseException | None) -> None:
            outcome.append(exc)
            done.set()

        await self.submit(writes, on_done)
        await done.wait()
        exc = outcome[0]
        if exc is None:
            return
        if isinstance(exc, StoreError):
            raise exc
        raise StoreError(f"commit failed: {exc}") from exc

    async def flush(self) -> None:
        """Wait until every job submitted before this call is committed (or failed).

        Their callbacks have run by the time this returns. Does not raise for their
        failures, which go to their callbacks.

        Raises:
            trio.ClosedResourceError: the writer has been closed.
        """
        # An empty job is a marker. Jobs complete in order, so once the marker's
        # callback runs, everything queued before it is done.
        done = trio.Event()
        await self.submit((), lambda _exc: done.set())
        await done.wait()

    async def aclose(self) -> None:
        """Stop accepting jobs, commit everything queued, stop ``run`` and close the Store.

        Idempotent. Drains the queue itself if ``run`` is not running. If cancelled
        while waiting for the drain, it still closes the Store. Any jobs a running
        ``run`` has not committed by then fail with StoreError through their
        callbacks.
        """
        # From here submit() raises ClosedResourceError; run() returns once the queue
        # is empty.
        self._closed = True
        self._queued.set()
        self._room.set()
        try:
            async with self._serve_lock:
                await self._serve()
        finally:
            with trio.CancelScope(shield=True):
                await self._close_store()


class StoreWriter(OrderedWriter):
    """Serialises all writes to the SQLite store through one task that group-commits them."""

    def __init__(self, store: Store, *, queue_size: int = 4096) -> None:
        super().__init__(queue_size=queue_size)
        self._store = store
        # A private thread slot for commits. Reads use the default limiter, so a
        # burst of slow reads cannot delay a commit waiting for a thread.
        self._write_limiter = trio.CapacityLimiter(1)

    async def _commit_batch(self, jobs: list[Job]) -> list[Exception | None]:
        return await trio.to_thread.run_sync(self._commit_jobs, jobs, abandon_on_cancel=False,
                                             limiter=self._write_limiter)

    def _commit_jobs(self, jobs: list[Job]) -> list[Exception | None]:
        # Runs in the worker thread. One thread hop per batch, retries included.
        writes = [w for job in jobs for w in job.writes]
        if not writes:
            return [None] * len(jobs)
        try:
            self._store.write(writes)
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
            logger.warning("batch of %d jobs failed (%s), retrying one by one", len(jobs), exc)
        else:
            return [None] * len(jobs)
        results: list[Exception | None] = []
        for job in jobs:
            if not job.writes:
                results.append(None)  # flush() markers have nothing to retry
                continue
            try:
                self._store.write(job.writes)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    async def read_log(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[LogEntry]:
        """Run ``Store.read_log`` in a worker thread. Sees committed data only.

        Returns:
            The entries in ascending seq order (see ``Store.read_log``).

        Raises:
            StoreError: the store is closed or the query failed.
        """

        def read() -> list[LogEntry]:
            return self._store.read_log(room, after=after, before=before, limit=limit)

        # Abandoning a read on cancellation is harmless: it has no side effects.
        return await trio.to_thread.run_sync(read, abandon_on_cancel=True)

    async def load_rooms(self, keys_since: float = 0.0) -> list[StoredRoom]:
        """Forget idempotency keys older than ``keys_since``; load every room (a thread).

        Returns:
            All stored rooms ordered by name, with their keys since ``keys_since``.

        Raises:
            StoreError: the store is closed or the query failed.
        """

        def load() -> list[StoredRoom]:
            self._store.forget_keys(keys_since)
            return self._store.load_rooms(keys_since)

        return await trio.to_thread.run_sync(load, abandon_on_cancel=True)

    async def _close_store(self) -> None:
        await trio.to_thread.run_sync(self._store.close)
