"""``roomctl post``: post messages as a hidden observer, and exit 0 only once all are stored.

The daemon acknowledges a message (``ok`` with its ``seq``) only after it is committed to
disk, so an exit status of 0 means every message is stored. Messages are pipelined (up to
``WINDOW`` unacknowledged at once) and posted in order. With ``--lines`` a dropped connection
is retried with backoff; the messages not yet acknowledged are sent again, in order. (A
message whose acknowledgement was lost in the drop may then be stored twice: the protocol has
no idempotency key yet.)
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import sys
from functools import partial
from typing import Annotated

import trio
import typer

from protocol.chat import SendMessage
from protocol.limits import MAX_FRAME_BYTES
from protocol.messages import Error, Ok
from roomctl import output
from roomctl.client import CliError, ExitCode, Session, open_room, refused
from roomctl.options import Context, client_command, fail, run

MAX_TEXT = 4000  # protocol.limits.MessageText
WINDOW = 256  # messages in flight before reading more input (with the admin token)
# Without the admin token the daemon rate-limits requests; a refused message is sent again
# after the wait the daemon names, and only one message is ever in flight, so that a
# retried message can never land after the one behind it.
LIMITED_WINDOW = 1
_RETRY_IN = re.compile(r"retry in ([0-9.]+) s")
RETRY_FOR = 60.0  # seconds --lines keeps retrying one outage before it gives up
STDIN_BATCHES = 16  # reads of stdin (up to 64 KiB each) held ahead of the connection


class _Outbox:
    """Messages not yet acknowledged, in input order, and what became of the others."""

    def __init__(self, as_json: bool) -> None:
        self.unacked: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.retry: list[tuple[int, float]] = []  # (key, seconds): refused as rate-limited
        self.in_flight: set[int] = set()  # sent on the current connection, not answered
        self.refusals: dict[int, int] = {}  # rate-limited answers per message
        self.as_json = as_json
        self.posted = 0
        self.first_error: CliError | None = None
        self._changed = trio.Event()

    def add(self, key: int, text: str) -> None:
        self.unacked[key] = text

    def settle(self, key: int, reply: Ok | Error) -> None:
        if key not in self.unacked:
            return  # an answer to a message already settled on an earlier connection
        self.in_flight.discard(key)
        if isinstance(reply, Error) and reply.code == "rate-limited":
            match = _RETRY_IN.search(reply.message)
            hint = float(match.group(1)) if match else 1.0
            # Wait at least what the daemon says, and longer each time the same message is
            # refused again, so that a busy room never sees a burst of retries.
            tries = self.refusals[key] = self.refusals.get(key, 0) + 1
            self.retry.append((key, min(max(hint, 0.05) * 2 ** (tries - 1), 5.0)))
            self._wake()
            return
        del self.unacked[key]
        self.refusals.pop(key, None)
        if isinstance(reply, Error):
            error = refused(reply)
            print(f"roomctl: message {key}: {error.message}", file=sys.stderr)
            self.first_error = self.first_error or error
        else:
            self.posted += 1
            if self.as_json:
                output.emit_json({"seq": reply.seq})
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(self, session: Session, key: int) -> None:
        self.in_flight.add(key)
        await session.send(SendMessage(ref=f"m{key}", text=self.unacked[key]))

    def reconnected(self) -> None:
        """A new connection: nothing is in flight on it; every unacknowledged goes again."""
        self.in_flight.clear()
        self.retry.clear()

    async def wait_below(self, count: int, session: Session) -> None:
        """Wait until fewer than ``count`` are in flight, resending rate-limited ones."""
        while len(self.in_flight) >= count or self.retry:
            if self.retry:
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
                    batches: trio.MemoryReceiveChannel[list[str]], *, retry: bool) -> _Outbox:
    outbox = _Outbox(ctx.json)
    keys = itertools.count(1)
    exhausted = False
    outage_started: float | None = None
    backoff = 0.1
    while True:
        try:
            async with open_room(ctx.target, room, name=name, hidden=True) as session, \
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
                        added = [next(keys) for _ in batch]
                        for key, text in zip(added, batch, strict=True):
                            outbox.add(key, text)
                        for key in added:
                            await outbox.wait_below(window, session)
                            await outbox.send(session, key)
                    exhausted = True
                with trio.fail_after(ctx.target.timeout + 10):
                    await outbox.wait_all(session)
                nursery.cancel_scope.cancel()
            return outbox
        except trio.TooSlowError:
            raise CliError(ExitCode.TIMEOUT,
                           f"{len(outbox.unacked)} messages not acknowledged in "
                           f"{ctx.target.timeout:g} s") from None
        except CliError as exc:
            if not retry or exc.exit_code is not ExitCode.UNREACHABLE:
                raise
            now = trio.current_time()
            if outage_started is None:
                outage_started = now
                print(f"roomctl: {exc.message}; retrying", file=sys.stderr)
            elif now - outage_started > RETRY_FOR:
                raise CliError(ExitCode.UNREACHABLE,
                               f"{exc.message}; gave up after {RETRY_FOR:g} s with "
                               f"{len(outbox.unacked)} messages not acknowledged") from None
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def _read_stdin(send: trio.MemorySendChannel[list[str]],
                token: trio.lowlevel.TrioToken) -> None:
    """Hand stdin's non-empty lines to trio as they arrive, then close ``send`` (a thread).

    Reads whatever the pipe holds, up to 64 KiB at a time, and hands over the complete lines
    of each read in one batch: one thread hop per read, not per line.
    """
    fd = sys.stdin.fileno()
    numbers = itertools.count(1)
    pending = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            *complete, pending = (pending + chunk).split(b"\n") if chunk else [pending, b""]
            batch = [line for raw in complete if (line := _usable(next(numbers), raw)) is not None]
            if batch:
                trio.from_thread.run(send.send, batch, trio_token=token)
            if not chunk:
                break
    finally:
        trio.from_thread.run_sync(send.close, trio_token=token)


def _usable(number: int, raw: bytes) -> str | None:
    """Return line ``number`` as text, or None for an empty one or one too long to post."""
    line = raw.decode("utf-8", errors="replace").rstrip("\r")
    if not line.strip():
        return None
    if len(line) > MAX_TEXT:
        print(f"roomctl: line {number}: {len(line)} characters is over the "
              f"{MAX_TEXT}-character limit; not posted", file=sys.stderr)
        return None
    return line


async def _post_stdin_lines(ctx: Context, room: str, name: str) -> _Outbox:
    send, receive = trio.open_memory_channel[list[str]](STDIN_BATCHES)
    token = trio.lowlevel.current_trio_token()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.to_thread.run_sync, _read_stdin, send, token,
                                   abandon_on_cancel=True))
        outbox = await _post_all(ctx, room, name, receive, retry=True)
        nursery.cancel_scope.cancel()
    return outbox


async def _post_one(ctx: Context, room: str, name: str, text: str) -> _Outbox:
    send, receive = trio.open_memory_channel[list[str]](1)
    send.send_nowait([text])
    send.close()
    return await _post_all(ctx, room, name, receive, retry=False)


@client_command
def post(
    ctx: Context,
    room: Annotated[str, typer.Argument(metavar="ROOM", help="The room.")],
    text: Annotated[list[str] | None, typer.Argument(
        metavar="[TEXT]...", help="The message (words are joined by spaces); '-' or none: stdin.",
        show_default=False)] = None,
    name: Annotated[str, typer.Option(
        "--name", envvar="ROOMCTL_NAME", help="The sender name others see.")] = "roomctl",
    lines: Annotated[bool, typer.Option(
        "--lines", help="Post each line of stdin as its own message, as it arrives.")] = False,
) -> None:
    """Post a message to a room; exit 0 once the daemon has stored it.

    Reads the message from stdin when TEXT is '-' or absent; with --lines, posts each
    stdin line as it arrives (journalctl -f | roomctl post ops --lines). Prints nothing,
    or each message's sequence number as a JSON line with --json.
    """
    from_stdin = not text or text == ["-"]
    if not 1 <= len(name) <= 64:
        fail("--name must be 1 to 64 characters", ExitCode.USAGE)
    if lines and not from_stdin:
        fail("--lines posts stdin; give no TEXT", ExitCode.USAGE)
    if from_stdin and sys.stdin.isatty():
        fail("no message: give TEXT, or pipe it on stdin", ExitCode.USAGE)
    if lines:
        outbox = run(lambda: _post_stdin_lines(ctx, room, name))
    else:
        message = sys.stdin.read().rstrip("\r\n") if from_stdin else " ".join(text or [])
        if not message.strip():
            fail("nothing to post: the message is empty", ExitCode.USAGE)
        if len(message) > MAX_TEXT:
            fail(f"the message is {len(message)} characters; the limit is {MAX_TEXT} "
                 "(--lines posts line by line)", ExitCode.REFUSED)
        if len(message.encode()) > MAX_FRAME_BYTES - 256:
            fail("the message is too large for one frame", ExitCode.REFUSED)
        outbox = run(lambda: _post_one(ctx, room, name, message))
    if outbox.first_error is not None:
        raise typer.Exit(int(outbox.first_error.exit_code))
