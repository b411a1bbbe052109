"""``roomctl token create``: sign a join token for one room (needs the admin token)."""

from __future__ import annotations

from typing import Annotated, get_type_hints

import typer

from protocol.admin import DEFAULT_GRANTS, CreateToken, Grant, TokenIssued
from protocol.limits import TokenTtl
from roomctl import output, rules
from roomctl.client import ExitCode, open_admin
from roomctl.help import PlainTyper
from roomctl.options import (
    Context,
    check,
    check_name,
    check_room,
    client_command,
    fail,
    parse_duration,
    run,
)

token_app = PlainTyper(
    name="token", help="Make join tokens for private rooms.", no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

GRANTS: tuple[str, ...] = tuple(Grant)
IDENTITY = get_type_hints(CreateToken, include_extras=True)["identity"]
MAX_TTL_DAYS = float(rules.meta_of(TokenTtl).le or 0) / 86400


@token_app.command("create")
@client_command
def create(
    ctx: Context,
    room: Annotated[str, typer.Option(
        "--room", "-r", metavar="ROOM", callback=check_room,
        help="The room the token is for.")],
    identity: Annotated[str, typer.Option(
        "--identity", "-i", metavar="ID", callback=check(IDENTITY, "identity"),
        help="Who holds it (the JWT subject; shown to others).")],
    name: Annotated[str | None, typer.Option(
        "--name", metavar="NAME", callback=check_name,
        help="The display name the holder gets.")] = None,
    grant: Annotated[list[str] | None, typer.Option(
        "--grant", "-g", metavar="GRANT", show_default=", ".join(DEFAULT_GRANTS),
        help="join, post, media, hidden or admin; repeat it for more.")] = None,
    ttl: Annotated[str, typer.Option(
        "--ttl", metavar="DURATION", help="How long it is valid (30m, 1h, 7d).")] = "1h",
) -> None:
    """Print a signed join token: one line, or an object with --json.

    The token lets its holder into one room with the grants given; hand it to the browser
    page in the URL fragment (#token=...) or to roomctl with --token.
    """
    grants = grant or list(DEFAULT_GRANTS)
    unknown = sorted(set(grants) - set(GRANTS))
    if unknown:
        fail(f"unknown grant {unknown[0]!r}; choose from {', '.join(GRANTS)}", ExitCode.USAGE)
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        fail(f"--ttl: {exc}", ExitCode.USAGE)
    if not rules.allows(TokenTtl, seconds):
        fail(f"--ttl: {ttl} is longer than a join token may live: at most "
             f"{MAX_TTL_DAYS:g} days", ExitCode.USAGE)

    async def main() -> TokenIssued:
        async with open_admin(ctx.target) as session:
            return await session.request(
                CreateToken(ref=session.next_ref(), room=room, identity=identity, name=name,
                            grants=grants, ttl=seconds),  # type: ignore[arg-type]
                TokenIssued)

    issued = run(main)
    if ctx.json:
        output.emit_json({"token": issued.token, "room": issued.room,
                          "identity": issued.identity, "grants": issued.grants,
                          "expires_at": output.iso(issued.expires_at)})
    else:
        print(issued.token)
