"""``roomctl who`` and ``roomctl wait``: who is in a room, and waiting until enough are.

Both look at the room as a hidden observer, so asking never changes the answer.
"""

from __future__ import annotations

from typing import Annotated

import trio
import typer

from protocol.messages import Participant, ParticipantJoined, ParticipantLeft, ParticipantUpdated
from roomctl import output
from roomctl.client import ExitCode, open_room
from roomctl.options import (
    Context,
    Stopped,
    check_room,
    client_command,
    fail,
    run,
    run_until_signalled,
)
from roomctl.rooms import participant_json, print_participants

RoomArg = Annotated[str, typer.Argument(metavar="ROOM", help="The room.", callback=check_room)]


@client_command
def who(ctx: Context, room: RoomArg) -> None:
    """List a room's participants: id, name, status, live or reconnecting, media, messages."""

    async def main() -> list[Participant]:
        async with open_room(ctx.target, room, hidden=True) as session:
            assert session.welcome is not None
            return session.welcome.participants

    participants = sorted(run(main), key=lambda p: p.joined_at)
    if ctx.json:
        output.emit_json([participant_json(p) for p in participants])
    else:
        print_participants(participants)


@client_command(timeout_default="30s",
                timeout_help="How long to wait for the participants (30, 30s, 5m); then exit 6.")
def wait(
    ctx: Context,
    room: RoomArg,
    participants: Annotated[int, typer.Option(
        "--participants", "-p", min=1, metavar="N",
        help="Wait until at least this many are live.")] = 1,
) -> None:
    """Wait until a room has at least N live participants; exit 6 if --timeout runs out first.

    SIGTERM or Ctrl-C ends the wait unfulfilled: exit 130. With --json, one document in
    every case: room, participants (the live count reached), wanted, timed_out, interrupted.
    """

    live: dict[str, bool] = {}

    async def main() -> bool:
        """Return whether enough came before the timeout."""
        with trio.move_on_after(ctx.target.timeout):
            async with open_room(ctx.target, room, hidden=True) as session:
                assert session.welcome is not None
                live.update((p.id, p.live) for p in session.welcome.participants)
                while sum(live.values()) < participants:
                    event = await session.receive()
                    if isinstance(event, ParticipantJoined | ParticipantUpdated):
                        live[event.participant.id] = event.participant.live
                    elif isinstance(event, ParticipantLeft):
                        live.pop(event.participant_id, None)
                return True
        return False

    outcome = run_until_signalled(main)
    count = sum(live.values())
    if ctx.json:
        output.emit_json({"room": room, "participants": count, "wanted": participants,
                          "timed_out": outcome is False,
                          "interrupted": isinstance(outcome, Stopped)})
    if isinstance(outcome, Stopped):
        fail(f"{outcome.signal.name}: stopped waiting with {count} of {participants} "
             "participants", ExitCode.INTERRUPTED)
    if outcome is False:
        fail(f"timed out after {ctx.target.timeout:g} s with {count} of {participants} "
             "participants", ExitCode.TIMEOUT)
