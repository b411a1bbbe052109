"""``roomctl token create``: sign a join token for one room (needs the admin token).

The daemon signs it (``POST /v1/rooms/{room}/tokens`` of the HTTP API). When no daemon
answers at a URL of this machine, the token is signed here instead, with the data
directory's ``join-secret`` (whoever can read that file can make tokens anyway): the same
claims (``protocol.jointoken``), so the daemon takes it once it runs.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, get_type_hints

import msgspec
import typer

from protocol import http as api
from protocol.admin import DEFAULT_GRANTS, CreateToken, Grant
from protocol.jointoken import ALGORITHM, claims, secret_of
from protocol.limits import TokenTtl
from protocol.local import JOIN_SECRET_FILE, default_data_dir, room_path
from roomctl import httpclient, output, rules
from roomctl.errors import CliError, ExitCode
from roomctl.help import PlainTyper
from roomctl.options import (
    Context,
    check,
    check_name,
    check_room,
    client_command,
    fail,
    parse_duration,
)
from roomctl.target import Target, is_local

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
        help="join, read, post, media, hidden or admin; repeat it for more. Which "
             "command needs which: roomctl(1), GRANTS.")] = None,
    ttl: Annotated[str, typer.Option(
        "--ttl", metavar="DURATION", help="How long it is valid (30m, 1h, 7d).")] = "1h",
) -> None:
    """Print a signed join token: one line, or an object with --json.

    The token lets its holder into one room with the grants given; hand it to the browser
    page in the URL fragment (#token=...) or to roomctl with --token. When the daemon of a
    local URL is down, the token is signed with its data directory's join-secret.
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

    body = {"identity": identity, "name": name, "grants": grants, "ttl": seconds}
    try:
        issued = msgspec.convert(httpclient.admin(ctx.target, "POST",
                                                  f"{room_path(room)}/tokens", body,
                                                  explain=api.NewToken), api.IssuedToken)
    except CliError as exc:
        signed = None
        if exc.exit_code is ExitCode.UNREACHABLE:
            signed = _sign_here(ctx.target, room=room, identity=identity, name=name,
                                grants=[Grant(g) for g in grants], ttl=seconds)
        if signed is None:
            fail(exc.message, exc.exit_code, code=exc.code, grant=exc.grant)
        issued = signed
    if ctx.json:
        output.emit_json({"token": issued.token, "room": issued.room,
                          "identity": issued.identity, "grants": issued.grants,
                          "expires_at": output.iso(issued.expires_at)})
    else:
        print(issued.token)


def _sign_here(target: Target, *, room: str, identity: str, name: str | None,
               grants: list[Grant], ttl: float) -> api.IssuedToken | None:
    """Sign a join token with the local daemon's ``join-secret`` (it is down); None when
    the URL is not this machine's or the data directory has no secret."""
    if not is_local(target.host):
        return None
    path = (target.data_dir or default_data_dir()) / JOIN_SECRET_FILE
    try:
        secret = secret_of(path.read_text())
    except OSError:
        return None
    import jwt  # (PyJWT: only for this, so only here)

    claimed = claims(room=room, identity=identity, name=name, grants=grants, ttl=ttl,
                     now=time.time())
    # A notice, not an error: the token is good, and the daemon takes it once it runs.
    print(f"roomctl: no daemon at {target.url}; signed with {path}", file=sys.stderr)
    return api.IssuedToken(token=jwt.encode(claimed, secret, algorithm=ALGORITHM), room=room,
                           identity=identity, grants=sorted(set(grants)),
                           expires_at=float(claimed["exp"]))
