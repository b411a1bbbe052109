"""``roomctl room ...`` and ``roomctl kick``: room management.

Management is one or two calls of the HTTP API (``roomctl.httpclient``), which the daemon
serves on its admin endpoint: no event loop and no WebSocket client to start. The topic
and the pins belong to the chat app, so ``topic``, ``pin`` and ``unpin`` speak to the room
itself as a sender (hidden, hearing only its answers), which needs the ``post`` grant
alone.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
import typer

from protocol import http as api
from protocol.chat import ChatParticipantMeta, ChatRoomMeta, Pin, SetTopic, Unpin
from protocol.limits import MAX_PAGE, MaxParticipants, TopicText
from protocol.local import ROOMS_PATH, room_path
from protocol.messages import Participant, RoomInfo
from roomctl import httpclient, output
from roomctl.errors import CliError, ExitCode
from roomctl.help import PlainTyper
from roomctl.options import Context, check, check_room, client_command, fail, run

room_app = PlainTyper(
    name="room", help="Create, list, show and delete rooms; set the topic and pins.",
    no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
)

RoomArg = Annotated[str, typer.Argument(metavar="NAME", help="The room's name.",
                                        callback=check_room)]
check_topic = check(TopicText, "topic")


def chat_meta(info: RoomInfo) -> ChatRoomMeta | None:
    """Return a chat room's typed metadata, or None for rooms of other apps."""
    if info.app != "chat":
        return None
    try:
        return msgspec.convert(info.meta or {}, ChatRoomMeta)
    except msgspec.ValidationError:
        return None


def participant_meta(participant: Participant) -> ChatParticipantMeta:
    """Return the chat view of a participant (empty for other apps)."""
    try:
        return msgspec.convert(participant.meta or {}, ChatParticipantMeta)
    except msgspec.ValidationError:
        return ChatParticipantMeta()


def room_json(info: RoomInfo) -> dict[str, Any]:
    """The stable JSON shape of a room: core fields, then the app's metadata under ``meta``."""
    return {
        "name": info.name, "app": info.app, "created_at": output.iso(info.created_at),
        "participants": info.participants, "last_seq": info.last_seq,
        "access": "private" if info.private else "open",
        "meta": msgspec.to_builtins(info.meta),
    }


def participant_json(participant: Participant) -> dict[str, Any]:
    """The stable JSON shape of a participant (``roomctl who --json``)."""
    meta = participant_meta(participant)
    return {
        "id": participant.id, "name": meta.name, "status": meta.status,
        "status_text": meta.status_text, "live": participant.live,
        "in_call": participant.in_call,
        "media": msgspec.to_builtins(participant.media), "identity": participant.identity,
        "messages_sent": meta.messages_sent, "joined_at": output.iso(participant.joined_at),
    }


def print_participants(participants: list[Participant]) -> None:
    """Print the participant table of ``roomctl who`` and ``roomctl room show``."""
    rows = []
    for p in participants:
        meta = participant_meta(p)
        status = meta.status + (f" ({meta.status_text})" if meta.status_text else "")
        media = "-" if not p.in_call else "/".join([
            "mic " + ("off" if p.media.audio_muted else "on"),
            "cam " + ("off" if p.media.video_muted else "on"),
        ])
        rows.append([p.id, meta.name, "live" if p.live else "reconnecting", status, media,
                     str(meta.messages_sent), output.when(p.joined_at)])
    output.table(["ID", "NAME", "STATE", "STATUS", "MEDIA", "SENT", "JOINED"], rows)


def _print_room(details: api.RoomView) -> None:
    info = details.room
    meta = chat_meta(info)
    lines = [("name", info.name), ("app", info.app),
             ("access", "private (join token needed)" if info.private else "open"),
             ("created", output.when(info.created_at)),
             ("participants", str(info.participants)), ("last seq", str(info.last_seq))]
    if meta is not None:
        lines += [("topic", meta.topic or "-"),
                  ("max participants", str(meta.max_participants or "unlimited")),
                  ("pins", " ".join(map(str, meta.pins)) or "-")]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    if details.participants:
        print()
        print_participants(details.participants)


@room_app.command("create")
@client_command
def create(
    ctx: Context,
    name: RoomArg,
    topic: Annotated[str | None, typer.Option(
        metavar="TEXT", callback=check_topic, help="The room's topic.")] = None,
    max_participants: Annotated[int | None, typer.Option(
        metavar="N", callback=check(MaxParticipants, "number of participants"),
        help="Refuse participants beyond this many (the daemon may lower it to its own "
             "cap).")] = None,
    public: Annotated[bool, typer.Option("--public", help="List the room in the lobby.")] = False,
    private: Annotated[bool, typer.Option(
        "--private", help="Joining needs a join token (roomctl token create).")] = False,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="An existing room is not an error.")] = False,
) -> None:
    """Create a room. Prints nothing (the room as JSON with --json).

    If the room the daemon made (or found, with --if-missing) takes another number of
    participants than --max-participants asked, one line on stderr says so.
    """
    if public and private:
        fail("--public and --private exclude each other: a private room is never listed",
             ExitCode.USAGE)
    body: dict[str, Any] = {"name": name, "private": private, "if_missing": if_missing}
    if topic is not None:
        body["topic"] = topic
    if max_participants is not None:
        body["max_participants"] = max_participants
    if public:
        body["public"] = True
    details = _view(_admin(ctx, "POST", ROOMS_PATH, body, explain=api.NewRoom))
    note = participants_note(max_participants, details.room)
    if note is not None:
        print(f"roomctl: {note}", file=sys.stderr)
    if ctx.json:
        output.emit_json(room_json(details.room))


def participants_note(asked: int | None, info: RoomInfo) -> str | None:
    """Return what to tell when a room takes another number of participants than ``asked``
    (the daemon lowered it to its cap, or the room existed): None when it is as asked."""
    if asked is None:
        return None
    meta = chat_meta(info)
    effective = meta.max_participants if meta is not None else None
    if effective == asked:
        return None
    takes = f"at most {effective}" if effective is not None else "any number of"
    return f"room {info.name!r} takes {takes} participants, not {asked}"


@room_app.command("list")
@client_command
def list_rooms(ctx: Context) -> None:
    """List the rooms: a table, or a JSON array with --json."""

    rooms: list[RoomInfo] = []
    after = ""
    while True:  # a page at a time, by name
        page = msgspec.convert(_admin(ctx, "GET", f"{ROOMS_PATH}?limit={MAX_PAGE}{after}"),
                               api.RoomPage)
        rooms += page.rooms
        if page.next is None:
            break
        after = f"&after={page.next}"
    if ctx.json:
        output.emit_json([room_json(r) for r in rooms])
        return
    rows = []
    for info in rooms:
        meta = chat_meta(info)
        rows.append([info.name, info.app, str(info.participants), str(info.last_seq),
                     output.when(info.created_at), (meta.topic if meta else "") or "-"])
    output.table(["NAME", "APP", "PEOPLE", "LAST SEQ", "CREATED", "TOPIC"], rows)


@room_app.command("show")
@client_command
def show(ctx: Context, name: RoomArg) -> None:
    """Show one room and its participants."""

    details = _view(_admin(ctx, "GET", room_path(name)))
    if ctx.json:
        document = room_json(details.room)
        document["members"] = [participant_json(p) for p in details.participants]
        output.emit_json(document)
    else:
        _print_room(details)


@room_app.command("delete")
@client_command
def delete(
    ctx: Context,
    name: RoomArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a room and its history; its participants are disconnected."""
    if not yes:
        if not sys.stdin.isatty():
            fail(f"not deleting {name!r} without --yes (stdin is not a terminal)",
                 ExitCode.USAGE)
        if not typer.confirm(f"Delete room {name!r} and all its messages?", err=True):
            fail("not deleted", ExitCode.REFUSED)

    _admin(ctx, "DELETE", room_path(name))
    if ctx.json:
        output.emit_json({"deleted": name})


def _admin(ctx: Context, method: str, path: str, body: Any = None,
           explain: type | None = None) -> Any:
    """One call of the HTTP API with the admin token; a refusal ends the command."""
    try:
        return httpclient.admin(ctx.target, method, path, body, explain)
    except CliError as exc:
        fail(exc.message, exc.exit_code, code=exc.code, grant=exc.grant)


def _view(body: Any) -> api.RoomView:
    return msgspec.convert(body, api.RoomView)


async def _as_sender(ctx: Context, room: str, request: Any) -> None:
    from roomctl.client import open_room  # (the WebSocket client, for these three only)

    async with open_room(ctx.target, room, hidden=True, subscribe=False) as session:
        await session.request(msgspec.structs.replace(request, ref=session.next_ref()))


@room_app.command("topic")
@client_command
def topic(
    ctx: Context, name: RoomArg,
    text: Annotated[str, typer.Argument(
        metavar="TEXT", callback=check_topic, help="The new topic; \"\" clears it.")],
) -> None:
    """Set a chat room's topic."""
    run(lambda: _as_sender(ctx, name, SetTopic(topic=text)))
    if ctx.json:
        output.emit_json({"room": name, "topic": text})


SeqArg = Annotated[int, typer.Argument(min=1, metavar="SEQ", help="The message's sequence number.")]


@room_app.command("pin")
@client_command
def pin(ctx: Context, name: RoomArg, seq: SeqArg) -> None:
    """Pin a message of a chat room by its sequence number."""
    run(lambda: _as_sender(ctx, name, Pin(seq=seq)))
    if ctx.json:
        output.emit_json({"room": name, "pinned": seq})


@room_app.command("unpin")
@client_command
def unpin(ctx: Context, name: RoomArg, seq: SeqArg) -> None:
    """Unpin a message of a chat room."""
    run(lambda: _as_sender(ctx, name, Unpin(seq=seq)))
    if ctx.json:
        output.emit_json({"room": name, "unpinned": seq})


@client_command
def kick(
    ctx: Context,
    room: Annotated[str, typer.Argument(metavar="ROOM", help="The room.", callback=check_room)],
    participant: Annotated[str, typer.Argument(
        metavar="PARTICIPANT", help="A participant's id, or its unique name.")],
) -> None:
    """Remove a participant from a room at once (admin); its connection is closed."""

    details = _view(_admin(ctx, "GET", room_path(room)))
    try:
        kicked = _resolve(details.participants, participant)
    except CliError as exc:
        fail(exc.message, exc.exit_code)
    _admin(ctx, "DELETE", f"{room_path(room)}/participants/{quote(kicked, safe='')}")
    if ctx.json:
        output.emit_json({"room": room, "kicked": kicked})


def _resolve(participants: list[Participant], wanted: str) -> str:
    """Return the id of the participant whose id, or else unique name, is ``wanted``."""
    if any(p.id == wanted for p in participants):
        return wanted
    named = [p.id for p in participants if participant_meta(p).name == wanted]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise CliError(ExitCode.REFUSED,
                       f"{len(named)} participants are named {wanted!r}; give an id: "
                       + ", ".join(named))
    raise CliError(ExitCode.NOT_FOUND, f"not-found: no participant {wanted!r} in the room")
