"""``roomctl post``: post messages as a sender, and exit 0 only once all are stored.

A sender (a hidden hello with ``subscribe: false``) is never listed and hears nothing but
the answers to its posts, so a token with the ``post`` grant alone is enough. The daemon
acknowledges a message (``ok`` with its ``seq``) only after it is committed to disk, so an
exit status of 0 means every message is stored. Messages are pipelined (up to ``WINDOW``
unacknowledged at once) and posted in order. With ``--lines`` a dropped connection is
retried with backoff; the messages not yet acknowledged are sent again, in order, with the
idempotency key each had the first time (one per run and line), so a message whose
acknowledgement was lost in the drop is answered with its first seq, never stored twice.

Every message is known by its line number in the input, so that whatever is not posted (a
line over the limit, one the daemon refused, the lines still queued when an outage made
``post`` give up) is named at the end, and the exit status is not 0.

SIGTERM or SIGINT stops reading stdin: the lines already read are still posted (within
``--timeout``) and the exit status says, as always, whether all of them are stored. During
an outage it gives up at once instead of retrying. A second signal ends it at once (130).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import os
import secrets
import signal
import sys
from typing import Annotated

import trio
import typer

from protocol.chat import SendMessage
from protocol.limits import MAX_DISPLAY_NAME, MAX_FRAME_BYTES, MAX_MESSAGE_TEXT
from protocol.messages import Error, Ok
from roomctl import output
from roomctl.client import Session, open_room, refused
from roomctl.errors import CliError, ExitCode, json_errors, report
from roomctl.options import (
    Context,
    check_name,
    check_room,
    client_command,
    fail,
    run,
    until_signalled,
)

WINDOW = 256  # messages in flight before reading more input (with the admin token)
# Without the admin token the daemon rate-limits requests; a refused message is sent again
# after the wait the daemon names, and only one message is ever in flight, so that a
# retried message can never land after the one behind it.
LIMITED_WINDOW = 1
RETRY_FOR = 60.0  # seconds --lines keeps retrying one outage before it gives up
UNAVAILABLE_TRIES = 14  # answers "unavailable" to one message before it is reported (~1 min)
STDIN_BATCHES = 16  # reads of stdin (up to 64 KiB each) held ahead of the connection
OVER_LIMIT = f"over the {MAX_MESSAGE_TEXT}-character limit"

Line = tuple[int, str]  # a message: its line number in the input, and its text


class _GaveUp(Exception):
    """Posting stopped with messages left (an outage outlasted RETRY_FOR, or a signal)."""

    def __init__(self, reason: CliError) -> None:
        super().__init__(reason.message)
        self.reason = reason


class _Outbox:
    """Messages not yet acknowledged, in input order, and what became of the others."""

    def __init__(self, as_json: bool, lines: bool) -> None:
        # Idempotency keys are this run's and the message's number: a resend has the same.
        self.run = secrets.token_urlsafe(12)
        self.unacked: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.sent: set[int] = set()  # sent at least once: may be stored though unanswered
        self.retry: list[tuple[int, float]] = []  # (key, seconds) by key: to send again
        self.in_flight: set[int] = set()  # sent on the current connection, not answered
        self.refusals: dict[int, int] = {}  # rate-limited answers per message
        self.not_posted: dict[int, str] = {}  # line number -> why, for good
        self.as_json = as_json
        self.lines = lines  # messages are lines of stdin (--lines), not one message
        self.posted = 0
        self.first_error: CliError | None = None
        self._changed = trio.Event()

    def add(self, key: int, text: str) -> None:
        self.unacked[key] = text

    def settle(self, key: int, reply: Ok | Error) -> None:
        if key not in self.unacked:
            return  # an answer to a message already settled on an earlier connection
        self.in_flight.discard(key)
        if isinstance(reply, Error) and self._retryable(key, reply):
            hint = reply.retry_after if reply.retry_after is not None else 1.0
            # Wait at least what the daemon says, and longer each time the same message is
            # refused again, so that a busy room never sees a burst of retries.
            tries = self.refusals[key] = self.refusals.get(key, 0) + 1
            bisect.insort(self.retry, (key, min(max(hint, 0.05) * 2 ** (tries - 1), 5.0)))
            self._wake()
            return
        del self.unacked[key]
        self.refusals.pop(key, None)
        if isinstance(reply, Error):
            error = refused(reply)
            if self.lines:
                report(f"line {key}: {error.message}", error.exit_code, code=error.code,
                       line=key, grant=error.grant)
            else:
                report(error.message, error.exit_code, code=error.code, grant=error.grant)
            self.not_posted[key] = error.message
            self.first_error = self.first_error or error
        else:
            self.posted += 1
            if self.as_json:
                document: dict[str, object] = {"seq": reply.seq}
                if reply.at is not None:
                    document["at"] = output.iso(reply.at)
                if self.lines:
                    document["line"] = key
                output.emit_json(document)
        self._wake()

    def _retryable(self, key: int, reply: Error) -> bool:
        """Whether to send ``key`` again after ``reply``: rate-limited always (the daemon
        paces it); unavailable (a node of several without Redis) for about a minute, as
        long as post waits for a daemon that cannot be reached. The key makes it safe."""
        if reply.code == "rate-limited":
            return True
        return reply.code == "unavailable" and self.refusals.get(key, 0) < UNAVAILABLE_TRIES

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(self, session: Session, key: int) -> None:
        self.in_flight.add(key)
        self.sent.add(key)
        await session.send(SendMessage(ref=f"m{key}", text=self.unacked[key],
                                       key=f"{self.run}:{key}"))

    def reconnected(self) -> None:
        """A new connection: nothing is in flight on it; every unacknowledged goes again."""
        self.in_flight.clear()
        self.retry.clear()

    async def wait_below(self, count: int, session: Session) -> None:
        """Wait until fewer than ``count`` are in flight, resending refused ones.

        A refused message goes again alone, once every message sent before it was
        answered, and before any new one: several refused at once (all in flight when
        Redis went away) are stored in their order, not in the order of their retries.
        """
        while len(self.in_flight) >= count or self.retry:
            if self.retry and not self.in_flight:
                key, seconds = self.retry.pop(0)
                await trio.sleep(seconds)
                await self.send(session, key)
                continue
            await self._changed.wait()

    async def wait_all(self, session: Session) -> None:
        """Wait until every message is settled (stored or refused for good)."""
        await self.wait_below(1, session)
        # Every unacknowledged message was sent on this connection: none is left over.
        assert not self.unacked, self.unacked

    def left_over(self, queued: list[Line]) -> str:
        """Say which messages are not stored when posting stops early: those never sent
        (including ``queued``, read but not yet taken), and those sent but not answered."""
        never = sorted({key for key in self.unacked if key not in self.sent}
                       | {number for number, _ in queued})
        unsure = sorted(key for key in self.unacked if key in self.sent)
        parts = []
        if never:
            parts.append(f"{_count(never)} not posted ({_numbers(never, self.lines)})")
        if unsure:
            parts.append(f"{_count(unsure)} sent but not acknowledged, so perhaps stored "
                         f"({_numbers(unsure, self.lines)})")
        return "; ".join(parts) or "every message read was stored"


def _default_name(token: str | None) -> str:
    """Return the sender name of a post without --name: the join token's identity, as
    the HTTP API names a post, else "roomctl". (The daemon checks the token; this only
    reads its claims, and a token it cannot read names nothing.)"""
    if token is not None and token.count(".") == 2:
        import jwt  # (PyJWT, as token create signs: only when a token may name the sender)

        try:
            identity = jwt.decode(token, options={"verify_signature": False}).get("sub")
        except jwt.InvalidTokenError:
            identity = None
        if isinstance(identity, str) and identity.strip():
            return identity.strip()[:MAX_DISPLAY_NAME]
    return "roomctl"


def _count(numbers: list[int]) -> str:
    return f"{len(numbers)} message{'s' if len(numbers) != 1 else ''}"


def _numbers(numbers: list[int], lines: bool = True) -> str:
    """Return ``[2, 3, 4, 7]`` as "lines 2-4, 7" (ranges, at most 10 of them)."""
    if not lines:
        return "the message"
    ranges: list[tuple[int, int]] = []
    for number in sorted(numbers):
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], number)
        else:
            ranges.append((number, number))
    shown = [f"{a}-{b}" if b > a else str(a) for a, b in ranges[:10]]
    more = ", ..." if len(ranges) > 10 else ""
    return f"line{'s' if len(numbers) > 1 else ''} {', '.join(shown)}{more}"


async def _answers(session: Session, outbox: _Outbox) -> None:
    while True:
        frame = await session.receive()
        if isinstance(frame, Ok | Error) and frame.ref and frame.ref.startswith("m"):
            outbox.settle(int(frame.ref[1:]), frame)


def _window(session: Session) -> int:
    """Messages in flight at once: many with the admin token (never rate-limited), else one.

    Decided per connection, from the token its hello presented: an admin token read from a
    data directory may have been refused, and the connection then went on without it.
    """
    token = session.token
    is_jwt = token is not None and token.count(".") == 2
    return WINDOW if token is not None and not is_jwt else LIMITED_WINDOW


async def _post_all(ctx: Context, room: str, name: str,
                    batches: trio.MemoryReceiveChannel[list[Line]], outbox: _Outbox, *,
                    retry: bool, stopping: trio.Event) -> None:
    """Post every message ``batches`` brings, in order, until the channel is closed.

    Raises CliError (TIMEOUT when acknowledgements do not come), and _GaveUp when an outage
    outlasts RETRY_FOR or ``stopping`` is set during one (only with ``retry``).
    """
    exhausted = False
    outage_started: float | None = None
    backoff = 0.1
    while True:
        try:
            async with open_room(ctx.target, room, name=name, hidden=True,
                                 subscribe=False) as session, \
                    trio.open_nursery() as nursery:
                outage_started, backoff = None, 0.1
                window = _window(session)
                nursery.start_soon(_answers, session, outbox)
                outbox.reconnected()
                for key in list(outbox.unacked):
                    await outbox.wait_below(window, session)
                    await outbox.send(session, key)
                if not exhausted:
                    async for batch in batches:
                        # All of a batch joins the outbox first: if the connection drops
                        # halfway through sending it, the rest goes out after reconnecting.
                        for key, text in batch:
                            outbox.add(key, text)
                        for key, _ in batch:
                            await outbox.wait_below(window, session)
                            await outbox.send(session, key)
                    exhausted = True
                with trio.fail_after(ctx.target.timeout + 10):
                    await outbox.wait_all(session)
                nursery.cancel_scope.cancel()
            return
        except trio.TooSlowError:
            unanswered = list(outbox.unacked)
            raise CliError(ExitCode.TIMEOUT,
                           f"{_count(unanswered)} not acknowledged in "
                           f"{ctx.target.timeout:g} s, so perhaps not stored "
                           f"({_numbers(unanswered, outbox.lines)})") from None
        except CliError as exc:
            if not retry or exc.exit_code is not ExitCode.UNREACHABLE:
                raise
            now = trio.current_time()
            if stopping.is_set():
                raise _GaveUp(exc) from None
            if outage_started is None:
                outage_started = now
                print(f"roomctl: {exc.message}; retrying", file=sys.stderr)
            elif now - outage_started > RETRY_FOR:
                raise _GaveUp(CliError(exc.exit_code,
                                       f"{exc.message}; gave up after {RETRY_FOR:g} s")) \
                    from None
            with trio.move_on_after(backoff):
                await stopping.wait()
            backoff = min(backoff * 2, 5.0)


class _Stdin:
    """Standard input's lines, read by a thread and handed to trio in batches.

    A line too long to post is reported at once and counted; reading can be stopped
    (``stop``), and ``unsent`` then says what was read but never handed over.
    """

    def __init__(self, send: trio.MemorySendChannel[list[Line]]) -> None:
        self.send = send
        self.too_long: list[int] = []
        self.at_end = False
        self.handing: list[Line] = []  # the batch waiting for room in the channel
        self.dropped: list[Line] = []  # batches that came after reading was stopped
        self.reading = trio.CancelScope()

    async def read(self) -> None:
        """Read stdin to its end, or until ``stop``; then close the channel."""
        token = trio.lowlevel.current_trio_token()
        with self.reading:
            await trio.to_thread.run_sync(self._read, token, abandon_on_cancel=True)
        self.send.close()

    def stop(self) -> None:
        """Stop reading: the thread is left blocked in read(2), and what it still hands
        over is dropped (and counted)."""
        self.reading.cancel()
        self.send.close()

    def _read(self, token: trio.lowlevel.TrioToken) -> None:
        """Hand stdin's non-empty lines to trio as they arrive (in a thread).

        Reads whatever the pipe holds, up to 64 KiB at a time, and hands over the complete
        lines of each read in one batch: one thread hop per read, not per line.
        """
        fd = sys.stdin.fileno()
        numbers = itertools.count(1)
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:
                raise CliError(ExitCode.REFUSED,
                               f"cannot read stdin: {exc.strerror or exc}") from None
            *complete, pending = (pending + chunk).split(b"\n") if chunk else [pending, b""]
            batch: list[Line] = []
            for raw in complete:
                number = next(numbers)
                line = self._usable(number, raw)
                if line is not None:
                    batch.append((number, line))
            if batch:
                trio.from_thread.run(self._hand_over, batch, trio_token=token)
            if not chunk:
                self.at_end = True
                return

    def unsent(self) -> list[Line]:
        """Return the lines read but not handed over (after ``stop``)."""
        return self.handing + self.dropped

    async def _hand_over(self, batch: list[Line]) -> None:
        self.handing = batch
        try:
            await self.send.send(batch)
        except trio.ClosedResourceError:  # reading was stopped meanwhile
            self.dropped.extend(batch)
        finally:
            self.handing = []

    def _usable(self, number: int, raw: bytes) -> str | None:
        """Return line ``number`` as text, or None for an empty one or one too long to post."""
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not line.strip():
            return None
        if len(line) > MAX_MESSAGE_TEXT:
            report(f"line {number}: {len(line)} characters is {OVER_LIMIT}; not posted",
                   ExitCode.REFUSED, code="too-large", line=number)
            self.too_long.append(number)
            return None
        return line


def _queued(batches: trio.MemoryReceiveChannel[list[Line]]) -> list[Line]:
    """Take what is left in a closed channel."""
    left: list[Line] = []
    while True:
        try:
            left += batches.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return left


async def _post_stdin_lines(ctx: Context, room: str, name: str, outbox: _Outbox) -> None:
    send, receive = trio.open_memory_channel[list[Line]](STDIN_BATCHES)
    stdin = _Stdin(send)
    stopping = trio.Event()

    def stop(signum: signal.Signals) -> None:
        stopping.set()
        stdin.stop()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stdin.read)
        try:
            await until_signalled(
                lambda: _post_all(ctx, room, name, receive, outbox, retry=True,
                                  stopping=stopping), stop)
        except (_GaveUp, CliError) as exc:
            # Whatever ended it, say which lines it read and did not post.
            reason = exc.reason if isinstance(exc, _GaveUp) else exc
            stdin.stop()
            unsent = _queued(receive) + stdin.unsent()
            if reason.exit_code is ExitCode.TIMEOUT or not (unsent or outbox.unacked):
                raise reason from None  # (a timeout names the unanswered lines itself)
            unread = "" if stdin.at_end else "; stdin was not read to its end"
            raise CliError(reason.exit_code,
                           f"{reason.message}: {outbox.left_over(unsent)}{unread}") from None
        finally:
            nursery.cancel_scope.cancel()
    for number in stdin.too_long:
        outbox.not_posted[number] = OVER_LIMIT


async def _post_one(ctx: Context, room: str, name: str, text: str, outbox: _Outbox) -> None:
    send, receive = trio.open_memory_channel[list[Line]](1)
    send.send_nowait([(1, text)])
    send.close()
    # Once read, the message is posted even if a signal comes: that is what it was for.
    await until_signalled(
        lambda: _post_all(ctx, room, name, receive, outbox, retry=False,
                          stopping=trio.Event()), lambda signum: None)


def _summary(not_posted: dict[int, str]) -> str:
    """Return "2 lines not posted: line 2 (over the limit); line 5 (forbidden: ...)"."""
    by_reason: dict[str, list[int]] = {}
    for number, reason in sorted(not_posted.items()):
        by_reason.setdefault(reason, []).append(number)
    parts = [f"{_numbers(numbers)} ({reason})" for reason, numbers in by_reason.items()]
    count = len(not_posted)
    return f"{count} line{'s' if count != 1 else ''} not posted: {'; '.join(parts)}"


@client_command
def post(
    ctx: Context,
    room: Annotated[str, typer.Argument(metavar="ROOM", help="The room.",
                                        callback=check_room)],
    text: Annotated[list[str] | None, typer.Argument(
        metavar="TEXT", help="The message (words are joined by spaces); '-' or none: stdin.",
        show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        "--name", envvar="ROOMCTL_NAME", metavar="NAME", callback=check_name,
        show_default="the join token's identity, else roomctl",
        help="The sender name others see (a token's own name wins).")] = None,
    lines: Annotated[bool, typer.Option(
        "--lines", help="Post each line of stdin as its own message, as it arrives.")] = False,
) -> None:
    """Post a message to a room; exit 0 once the daemon has stored it.

    Reads the message from stdin when TEXT is '-' or absent; with --lines, posts each
    stdin line as it arrives (journalctl -f | roomctl post ops --lines): a line that is not
    posted (too long, refused) is named and makes the exit status non-zero. Prints
    nothing, or each message's sequence number as a JSON line with --json.
    """
    from_stdin = not text or text == ["-"]
    if lines and not from_stdin:
        fail("--lines posts stdin; give no TEXT", ExitCode.USAGE)
    if from_stdin and sys.stdin.isatty():
        fail("no message: give TEXT, or pipe it on stdin", ExitCode.USAGE)
    if name is None:
        name = _default_name(ctx.target.resolved_token())
    outbox = _Outbox(ctx.json, lines)
    if lines:
        run(lambda: _post_stdin_lines(ctx, room, name, outbox))
    else:
        message = sys.stdin.read().rstrip("\r\n") if from_stdin else " ".join(text or [])
        if not message.strip():
            fail("nothing to post: the message is empty", ExitCode.USAGE)
        if len(message) > MAX_MESSAGE_TEXT:
            fail(f"the message is {len(message)} characters; the limit is {MAX_MESSAGE_TEXT} "
                 "(--lines posts line by line)", ExitCode.REFUSED)
        if len(message.encode()) > MAX_FRAME_BYTES - 256:
            fail("the message is too large for one frame", ExitCode.REFUSED)
        run(lambda: _post_one(ctx, room, name, message, outbox))
    if lines and outbox.not_posted and not json_errors():  # (JSON: one object a line)
        print(f"roomctl: {_summary(outbox.not_posted)}", file=sys.stderr)
    if outbox.first_error is not None:
        raise typer.Exit(int(outbox.first_error.exit_code))
    if outbox.not_posted:
        raise typer.Exit(int(ExitCode.REFUSED))
