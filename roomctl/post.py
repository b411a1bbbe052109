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
import sys
from collections.abc import AsyncIterator
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
WINDOW = 256  # messages in flight before reading more input
RETRY_FOR = 60.0  # seconds --lines keeps retrying one outage before it gives up
STDIN_BUFFER = 1024  # lines read ahead of the connection


class _Outbox:
    """Messages not yet acknowledged, in input order, and what became of the others."""

    def __init__(self, as_json: bool) -> None:
        self.unacked: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.as_json = as_json
        self.posted = 0
        self.first_error: CliError | None = None
        self._changed = trio.Event()

    def add(self, key: int, text: str) -> None:
        self.unacked[key] = text

    def settle(self, key: int, reply: Ok | Error) -> None:
        if self.unacked.pop(key, None) is None:
            return  # an answer to a message already settled on an earlier connection
        if isinstance(reply, Error):
            error = refused(reply)
            print(f"roomctl: message {key}: {error.message}", file=sys.stderr)
            self.first_error = self.first_error or error
        else:
            self.posted += 1
            if self.as_json:
                output.emit_json({"seq": reply.seq})
        self._changed.set()
        self._changed = trio.Event()

    async def wait_below(self, count: int) -> None:
        while len(self.unacked) >= count:
            await self._changed.wait()


async def _answers(session: Session, outbox: _Outbox) -> None:
    while True:
        frame = await session.receive()
        if isinstance(frame, Ok | Error) and frame.ref and frame.ref.startswith("m"):
            outbox.settle(int(frame.ref[1:]), frame)


async def _send(session: Session, key: int, text: str) -> None:
    await session.send(SendMessage(ref=f"m{key}", text=text))


async def _post_all(ctx: Context, room: str, name: str, messages: AsyncIterator[str],
                    *, retry: bool) -> _Outbox:
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
                nursery.start_soon(_answers, session, outbox)
                for key, text in list(outbox.unacked.items()):
                    await _send(session, key, text)
                if not exhausted:
                    async for text in messages:
                        await outbox.wait_below(WINDOW)
                        key = next(keys)
                        outbox.add(key, text)
                        await _send(session, key, text)
                    exhausted = True
                with trio.fail_after(ctx.target.timeout):
                    await outbox.wait_below(1)
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


async def _one(text: str) -> AsyncIterator[str]:
    yield text


async def _stdin_lines() -> AsyncIterator[str]:
    """Yield stdin's non-empty lines as they arrive (a thread reads, since stdin blocks)."""
    send, receive = trio.open_memory_channel[str | None](STDIN_BUFFER)
    token = trio.lowlevel.current_trio_token()

    def read() -> None:
        for number, raw in enumerate(iter(sys.stdin.buffer.readline, b""), start=1):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line.strip():
                continue
            if len(line) > MAX_TEXT:
                print(f"roomctl: line {number}: {len(line)} characters is over the "
                      f"{MAX_TEXT}-character limit; not posted", file=sys.stderr)
                continue
            trio.from_thread.run(send.send, line, trio_token=token)
        trio.from_thread.run(send.send, None, trio_token=token)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_in_thread, read)
        async with receive:
            async for line in receive:
                if line is None:
                    break
                yield line
        nursery.cancel_scope.cancel()


async def _read_in_thread(read: object) -> None:
    assert callable(read)
    await trio.to_thread.run_sync(read, abandon_on_cancel=True)


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
        outbox = run(lambda: _post_all(ctx, room, name, _stdin_lines(), retry=True))
    else:
        message = sys.stdin.read().rstrip("\r\n") if from_stdin else " ".join(text or [])
        if not message.strip():
            fail("nothing to post: the message is empty", ExitCode.USAGE)
        if len(message) > MAX_TEXT:
            fail(f"the message is {len(message)} characters; the limit is {MAX_TEXT} "
                 "(--lines posts line by line)", ExitCode.REFUSED)
        if len(message.encode()) > MAX_FRAME_BYTES - 256:
            fail("the message is too large for one frame", ExitCode.REFUSED)
        outbox = run(lambda: _post_all(ctx, room, name, _one(message), retry=False))
    if outbox.first_error is not None:
        raise typer.Exit(int(outbox.first_error.exit_code))
