"""``roomctl tail``: print a room's messages, then follow it, surviving daemon restarts.

Theory of operation: ``tail`` is a hidden observer. After each (re)connection it asks for
the history after the last sequence number it printed (``get-messages`` with ``after``,
paged), then prints live ``message-posted`` events. Live events that arrive while history is
being fetched are held back and printed after it. A message is printed only if its ``seq`` is
above the last one printed, so a message is never printed twice, and since history is read
from the last printed ``seq`` on every reconnection, none is skipped. The daemon acknowledges
a message only once it is on disk, so a restart loses none that a poster saw acknowledged.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import trio
import typer

from protocol.chat import (
    ChatMessage,
    GetMessages,
    MessagePosted,
    Messages,
    PinsChanged,
    TopicChanged,
)
from protocol.limits import MAX_PAGE
from protocol.messages import (
    Participant,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
)
from roomctl import output
from roomctl.client import CliError, ExitCode, Session, open_room
from roomctl.options import Context, check_name, check_room, client_command, run_until_signalled
from roomctl.rooms import participant_meta

PAGE = MAX_PAGE  # messages asked for at once
MAX_BACKOFF = 5.0


class _Printer:
    """Prints messages once each, in order, and room events as short lines for people."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.last_seq = 0
        self.names: dict[str, str] = {}
        self.states: dict[str, tuple[str, str, bool]] = {}

    def message(self, message: ChatMessage) -> None:
        if message.seq <= self.last_seq:
            return
        self.last_seq = message.seq
        if self.as_json:
            output.emit_json({
                "seq": message.seq, "at": output.iso(message.at), "time": message.at,
                "sender": message.sender_name, "sender_id": message.sender_id,
                "text": message.text,
            })
        else:
            first = f"{output.clock(message.at)} {message.sender_name}:"
            output.emit_lines(
                f"{first if number == 0 else ' ' * len(first)} {line}"
                for number, line in enumerate(message.text.splitlines() or [""]))

    def remember(self, participant: Participant) -> None:
        meta = participant_meta(participant)
        self.names[participant.id] = meta.name
        self.states[participant.id] = (meta.status, meta.status_text, participant.live)

    def event(self, event: Any) -> None:
        """Print a room event as one line (people only: JSON output carries messages)."""
        line: str | None = None
        if isinstance(event, ParticipantJoined):
            self.remember(event.participant)
            line = f"{self.names[event.participant.id]} joined"
        elif isinstance(event, ParticipantLeft):
            name = self.names.pop(event.participant_id, event.participant_id)
            self.states.pop(event.participant_id, None)
            reason = {"left": "left", "timeout": "left (timed out)", "kicked": "was kicked"}
            line = f"{name} {reason.get(event.reason, 'left')}"
        elif isinstance(event, ParticipantUpdated):
            before = self.states.get(event.participant.id)
            old_name = self.names.get(event.participant.id)
            self.remember(event.participant)
            name = self.names[event.participant.id]
            status, text, live = self.states[event.participant.id]
            if old_name is not None and old_name != name:
                line = f"{old_name} is now {name}"
            elif before is not None and before[2] != live:
                line = f"{name} {'is back' if live else 'is reconnecting'}"
            elif before is None or before[:2] != (status, text):
                line = f"{name} is {status}" + (f": {text}" if text else "")
        elif isinstance(event, TopicChanged):
            line = f"topic: {event.topic}" if event.topic else "topic cleared"
        elif isinstance(event, PinsChanged):
            line = "pinned: " + (" ".join(map(str, event.pins)) or "nothing")
        if line is not None and not self.as_json:
            output.emit_lines([f"{output.clock(time.time())} -- {line}"])


async def _history(session: Session, printer: _Printer, *, after: int | None,
                   last: int) -> None:
    """Print the messages after ``after`` (all pages), or the ``last`` most recent ones."""
    if after is None:
        if last == 0:
            # Start after the newest stored message. (The welcome's last_seq may count a
            # message still being committed, whose event is yet to come.)
            newest: Messages = await session.request(
                GetMessages(ref=session.next_ref(), limit=1), Messages)
            if newest.messages:
                printer.last_seq = max(printer.last_seq, newest.messages[-1].seq)
            return
        page: list[ChatMessage] = []
        before: int | None = None
        while len(page) < last:  # page backwards until we have ``last`` messages
            reply: Messages = await session.request(GetMessages(
                ref=session.next_ref(), before=before, limit=min(PAGE, last - len(page))),
                Messages)
            page = reply.messages + page
            if not reply.has_more or not reply.messages:
                break
            before = reply.messages[0].seq
        for message in page:
            printer.message(message)
        return
    cursor = after
    while True:
        reply = await session.request(GetMessages(ref=session.next_ref(), after=cursor,
                                                  limit=PAGE), Messages)
        for message in reply.messages:
            printer.message(message)
        if not reply.has_more or not reply.messages:
            return
        cursor = reply.messages[-1].seq


async def _follow(session: Session, printer: _Printer) -> None:
    while True:
        event = await session.receive()
        if isinstance(event, MessagePosted):
            printer.message(event.message)
        else:
            printer.event(event)


_RETRYABLE = {ExitCode.UNREACHABLE, ExitCode.TIMEOUT}


async def _tail(ctx: Context, room: str, *, lines: int, since: int | None, follow: bool,
                name: str) -> None:
    printer = _Printer(ctx.json)
    first = True
    backoff = 0.1
    reconnecting = False
    while True:
        try:
            async with open_room(ctx.target, room, name=name, hidden=True) as session:
                backoff = 0.1
                if reconnecting:
                    print("roomctl: reconnected", file=sys.stderr)
                    reconnecting = False
                assert session.welcome is not None
                for participant in session.welcome.participants:
                    printer.remember(participant)
                if first:
                    await _history(session, printer, after=since, last=lines)
                else:
                    await _history(session, printer, after=printer.last_seq, last=0)
                first = False
                if not follow:
                    return
                await _follow(session, printer)
        except CliError as exc:
            if not follow or first or exc.exit_code not in _RETRYABLE:
                raise
            if not reconnecting:
                print(f"roomctl: {exc.message}; reconnecting", file=sys.stderr)
                reconnecting = True
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


async def _tail_until_closed(ctx: Context, room: str, *, lines: int, since: int | None,
                             follow: bool, name: str) -> None:
    """Run ``_tail`` until it ends or stdout's reader goes away (OutputClosed)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.watch_closed)
        await _tail(ctx, room, lines=lines, since=since, follow=follow, name=name)
        nursery.cancel_scope.cancel()


@client_command
def tail(
    ctx: Context,
    room: Annotated[str, typer.Argument(metavar="ROOM", help="The room.", callback=check_room)],
    lines: Annotated[int, typer.Option(
        "--lines", "-n", min=0, metavar="N", help="Print the last N messages first.")] = 10,
    since: Annotated[int | None, typer.Option(
        "--since", min=0, metavar="SEQ",
        help="Print every message after sequence number SEQ instead of the last N.")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow/--no-follow", "-f",
        help="Keep printing new messages (and, for people, joins, leaves, status and "
             "topic changes); reconnect when the connection drops.")] = True,
    name: Annotated[str, typer.Option(
        "--name", envvar="ROOMCTL_NAME", metavar="NAME", callback=check_name,
        help="The name this observer uses.")] = "roomctl",
) -> None:
    """Print a room's recent messages, then follow it until Ctrl-C.

    With --json, one JSON object per message and line: seq, at (ISO 8601 UTC), time (Unix
    seconds), sender, sender_id, text. A dropped connection is retried with backoff and
    resumes after the last printed message: nothing is lost or printed twice.
    """
    # SIGTERM and Ctrl-C end tail quietly, with status 0: stopping it is how it ends.
    run_until_signalled(
        lambda: _tail_until_closed(ctx, room, lines=lines, since=since, follow=follow,
                                   name=name))
