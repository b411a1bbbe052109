"""roomctl(1)'s GRANTS tables are what the daemon does: every row is run for real.

The section has two tables, read here from ``man/roomctl.1``: each client command, and
each request of the HTTP API, with what its token needs. A row's cell is a grant, grants
joined by "and", alternatives joined by ", or ", "the admin token" or "nothing". For each
row, against a real ``roomctl serve`` and in a private room:

* a join token with exactly the grants of each alternative runs it (status 0, or the
  request's own success status);
* a join token with every other grant (and no other alternative whole) is refused:
  the command exits 4 with one ``roomctl:`` line naming the grant it lacks, the request
  answers 403 ``forbidden`` with that ``grant``;
* "the admin token" rows run with the admin token and are refused to a join token that
  holds every grant; "nothing" rows run with no token at all.

The tables must list every command of the CLI and every endpoint of
``daemon.net.httpapi.ENDPOINTS``, and nothing else, so that a new one cannot go
undocumented; and ``token create`` without ``--grant`` must give the defaults the section
names. Commands run as real subprocesses (``tests.test_cli.roomctl``), requests with the
standard library's HTTP client (``tests.http_util``).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from daemon.net.httpapi import ENDPOINTS
from protocol import Grant
from tests.cli_util import Result
from tests.conftest import Client, ServeProcess, start_serve
from tests.http_util import Answer, call, open_events
from tests.join_util import LOOPBACK_ONLY, TEST_MEDIA
from tests.test_cli import participant, roomctl
from tests.test_man import CLI_PAGE, COMMANDS, line_text, sections, source, unescape

ALL_GRANTS = frozenset(str(g) for g in Grant)
NO_DATA_DIR = "/nonexistent/roomctl-data"  # so that no admin token is read implicitly


# --- reading the tables ------------------------------------------------------------------------


@dataclass(frozen=True)
class Needs:
    """What a row says its token needs."""

    admin_token: bool = False
    nothing: bool = False
    alternatives: tuple[frozenset[str], ...] = ()  # each a set of grants that is enough

    def lacking(self, grant: str) -> frozenset[str]:
        """A token's grants without ``grant`` (of the first alternative), and without any
        other alternative whole: every grant else."""
        first = self.alternatives[0]
        held = ALL_GRANTS - {grant}
        for other in self.alternatives[1:]:
            if other <= held:
                held -= {sorted(other - first)[0]}
        return held


def parse_needs(cell: str) -> Needs:
    """Parse a "needs" cell; raise AssertionError for one the grammar does not allow."""
    if cell == "the admin token":
        return Needs(admin_token=True)
    if cell == "nothing":
        return Needs(nothing=True)
    alternatives = tuple(frozenset(part.split(" and ")) for part in cell.split(", or "))
    for grants in alternatives:
        assert grants <= ALL_GRANTS, f"unknown grant in {cell!r}"
    return Needs(alternatives=alternatives)


def table_rows(lines: list[str]) -> Iterator[list[list[str]]]:
    """Yield each tbl table (``.TS``...``.TE``) of ``lines`` as rows of cells (text), the
    format line and the heading row left out. A ``T{``...``T}`` cell is one cell."""
    i = 0
    while i < len(lines):
        if lines[i] != ".TS":
            i += 1
            continue
        i += 1
        while not lines[i].rstrip().endswith("."):  # options, then the format line
            i += 1
        i += 1
        rows: list[list[str]] = []
        while lines[i] != ".TE":
            cells = lines[i].split("\t")
            if cells[-1] == "T{":
                block: list[str] = []
                i += 1
                while lines[i] != "T}":
                    if not lines[i].startswith("."):
                        block.append(lines[i])
                    i += 1
                cells[-1] = " ".join(block)
            rows.append([" ".join(unescape(c).split()) for c in cells])
            i += 1
        yield rows[1:]  # the first row is the heading
        i += 1


def grants_tables() -> tuple[dict[str, Needs], dict[str, Needs]]:
    """Return the GRANTS section's commands ("room create": needs) and requests
    ("GET /v1/rooms": needs)."""
    commands: dict[str, Needs] = {}
    requests: dict[str, Needs] = {}
    for rows in table_rows(sections(source(CLI_PAGE), ".SH")["GRANTS"]):
        for row in rows:
            assert len(row) == 2, row
            name, needs = row
            if name.startswith("roomctl "):
                commands[name.removeprefix("roomctl ")] = parse_needs(needs)
            else:
                requests[name] = parse_needs(needs)
    return commands, requests


COMMAND_TABLE, REQUEST_TABLE = grants_tables()


def default_grants() -> set[str]:
    """The grants the GRANTS section says ``token create`` gives without --grant."""
    text = " ".join(line_text(line) for line in sections(source(CLI_PAGE), ".SH")["GRANTS"])
    found = re.search(r"Without --grant, token create gives (.+?):", " ".join(text.split()))
    assert found, "GRANTS names no default grants of token create"
    return set(re.split(r", | and ", found.group(1)))


# --- the tables cover the code -----------------------------------------------------------------


def test_the_grant_tables_were_read() -> None:
    assert COMMAND_TABLE["post"] == Needs(alternatives=(frozenset({"post"}),))
    assert COMMAND_TABLE["token create"] == Needs(admin_token=True)
    assert REQUEST_TABLE["GET /v1/rooms/{room}/events"].alternatives[0] == {"read"}


def test_the_commands_table_lists_every_client_command() -> None:
    client_commands = {" ".join(path) for path in COMMANDS if path != ("serve",)}
    assert set(COMMAND_TABLE) == client_commands
    assert set(CLI_RUNS) == client_commands  # (and this test knows how to run each)


def test_the_requests_table_lists_every_endpoint_of_the_http_api() -> None:
    assert set(REQUEST_TABLE) == {f"{e.method} {e.path}" for e in ENDPOINTS}


# --- a daemon, rooms and tokens ----------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One ``roomctl serve`` for the module: each test makes rooms of its own."""
    sp = start_serve(tmp_path_factory.mktemp("grants") / "data", "--memory",
                     "--log-level", "warning", "--rate-limit", "0")
    yield sp
    sp.proc.terminate()
    sp.proc.wait(timeout=15)


_rooms = itertools.count(1)


async def private_room(sp: ServeProcess) -> str:
    """Create a new private room holding one message (seq 1); return its name."""
    room = f"grants-{next(_rooms)}"
    made = await call(sp, "POST", "/v1/rooms", token=sp.admin_token,
                      json_body={"name": room, "private": True})
    assert made.status == 201, made.body
    posted = await call(sp, "POST", f"/v1/rooms/{room}/messages", token=sp.admin_token,
                        json_body={"text": "first"})
    assert posted.status == 201 and posted.json()["seq"] == 1, posted.body
    return room


async def join_token(sp: ServeProcess, room: str, grants: frozenset[str] | None) -> str:
    """A join token for ``room`` with exactly ``grants`` (None: the defaults)."""
    body: dict[str, Any] = {"identity": "holder"}
    if grants is not None:
        body["grants"] = sorted(grants)
    issued = await call(sp, "POST", f"/v1/rooms/{room}/tokens", token=sp.admin_token,
                        json_body=body)
    assert issued.status == 201, issued.body
    return str(issued.json()["token"])


@asynccontextmanager
async def people(sp: ServeProcess, room: str) -> AsyncIterator[Client]:
    """Two participants in ``room``: alice (for ``wait``) and victim (for ``kick``)."""
    async with participant(sp, room, "alice", token=sp.admin_token), \
            participant(sp, room, "victim", token=sp.admin_token) as victim:
        yield victim


# --- every command -----------------------------------------------------------------------------

CLI_RUNS: dict[str, tuple[str, ...]] = {
    # How each command runs in room {room}, which holds message 1, alice and victim.
    "post": ("post", "{room}", "hello"),
    "room topic": ("room", "topic", "{room}", "a topic"),
    "room pin": ("room", "pin", "{room}", "1"),
    "room unpin": ("room", "unpin", "{room}", "1"),
    "tail": ("tail", "{room}", "--no-follow"),
    "who": ("who", "{room}"),
    "wait": ("wait", "{room}", "--participants", "1", "--timeout", "10s"),
    "join": ("join", "{room}", "--duration", "1s", *TEST_MEDIA, *LOOPBACK_ONLY),
    "room list": ("room", "list", "--json"),
    "room show": ("room", "show", "{room}"),
    "room delete": ("room", "delete", "{room}", "--yes"),
    "kick": ("kick", "{room}", "victim"),
    "room create": ("room", "create", "{room}-new"),
    "token create": ("token", "create", "--room", "{room}", "--identity", "someone"),
    "load-test": ("load-test", "--rooms", "1", "--posters", "1", "--watchers", "1",
                  "--duration", "1s", "--rate", "2"),
    "status": ("status",),
}


async def run_command(sp: ServeProcess, command: str, room: str, token: str | None) -> Result:
    args = [arg.format(room=room) for arg in CLI_RUNS[command]]
    env = {"ROOMCTL_DATA_DIR": NO_DATA_DIR}
    if token is not None:
        env["ROOMCTL_TOKEN"] = token
    return await roomctl(sp, *args, env=env)


def error_line(result: Result) -> str:
    """The one ``roomctl:`` line of a failed command (``join`` also reports its progress
    on stderr), with no traceback; with --json, the message of its one JSON error."""
    assert "Traceback" not in result.err, result.err
    if result.err.startswith("{"):
        [line] = result.err.splitlines()
        error = json.loads(line)["error"]
        assert error["exit"] == result.rc, line
        return f"roomctl: {error['code']}: {error['message']}"
    lines = [line for line in result.err.splitlines() if line.startswith("roomctl: ")]
    assert len(lines) == 1, result.err
    assert result.err.rstrip("\n").endswith(lines[0]), result.err
    return lines[0]


def names_grant(message: str, grant: str) -> bool:
    return re.search(rf"\b{grant} grant\b|\bgrant {grant}\b", message) is not None


@pytest.mark.parametrize("command", sorted(COMMAND_TABLE))
async def test_each_command_runs_with_the_grants_the_table_names_and_no_fewer(
        daemon: ServeProcess, command: str) -> None:
    needs = COMMAND_TABLE[command]
    room = await private_room(daemon)
    async with people(daemon, room):
        if needs.nothing:
            done = await run_command(daemon, command, room, None)
            assert done.rc == 0, done.err
            return
        if needs.admin_token:
            every_grant = await join_token(daemon, room, ALL_GRANTS)
            refused = await run_command(daemon, command, room, every_grant)
            if command == "load-test":  # a refusal is a failure in its summary (status 1)
                assert refused.rc == 1 and "admin: forbidden" in refused.out, refused.out
            else:
                assert refused.rc == 4, refused.err
                assert "needs the admin token" in error_line(refused)
            done = await run_command(daemon, command, room, daemon.admin_token)
            assert done.rc == 0, done.err + done.out
            return
        for grant in sorted(needs.alternatives[0]):
            held = needs.lacking(grant)
            refused = await run_command(daemon, command, room,
                                        await join_token(daemon, room, held))
            assert refused.rc == 4, (held, refused.err)
            line = error_line(refused)
            assert names_grant(line, grant), (held, line)
        for grants in needs.alternatives:
            done = await run_command(daemon, command, room,
                                     await join_token(daemon, room, grants))
            assert done.rc == 0, (grants, done.err)
            if command == "room list":  # a room's admin grant lists that room alone
                assert [r["name"] for r in done.json()] == [room]


async def test_token_create_without_grant_gives_the_documented_defaults(
        daemon: ServeProcess) -> None:
    room = await private_room(daemon)
    made = await roomctl(daemon, "token", "create", "--room", room, "--identity", "ci",
                         "--json")
    assert made.rc == 0, made.err
    assert set(made.json()["grants"]) == default_grants()
    seen = await call(daemon, "GET", "/v1/whoami", token=made.json()["token"])
    assert set(seen.json()["grants"]) == default_grants()


# --- every request of the HTTP API -------------------------------------------------------------

HTTP_BODIES: dict[str, dict[str, Any]] = {
    "POST /v1/rooms": {"name": "{room}-new"},
    "PATCH /v1/rooms/{room}": {"topic": "changed"},
    "POST /v1/rooms/{room}/messages": {"text": "hello"},
    "POST /v1/rooms/{room}/tokens": {"identity": "someone"},
}
SUCCESS = {f"{e.method} {e.path}": e.status for e in ENDPOINTS}


async def send(sp: ServeProcess, request: str, room: str, victim: str,
               token: str | None) -> Answer:
    """Make ``request`` ("METHOD path") in ``room``; the event stream is opened, its
    head (and an error's body) read, and closed."""
    method, path = request.split(" ", 1)
    path = path.format(room=room, participant=victim)
    if request.endswith("/events"):
        stream = await open_events(sp, room, token=token)
        try:
            head_only = b"" if stream.status == 200 else await trio.to_thread.run_sync(
                stream.response.read)
            return Answer(stream.status, {}, head_only)
        finally:
            stream.close()
    body = HTTP_BODIES.get(request)
    if body is not None:
        body = {k: v.format(room=room) for k, v in body.items()}
    return await call(sp, method, path, token=token, json_body=body)


@pytest.mark.parametrize("request_line", sorted(REQUEST_TABLE))
async def test_each_request_is_answered_with_the_grants_the_table_names_and_no_fewer(
        daemon: ServeProcess, request_line: str) -> None:
    needs = REQUEST_TABLE[request_line]
    room = await private_room(daemon)
    async with people(daemon, room) as victim:
        assert victim.session_id is not None
        victim_id = victim.session_id
        if needs.nothing:
            done = await send(daemon, request_line, room, victim_id, None)
            assert done.status == SUCCESS[request_line], done.body
            return
        if needs.admin_token:
            every_grant = await join_token(daemon, room, ALL_GRANTS)
            refused = await send(daemon, request_line, room, victim_id, every_grant)
            assert refused.status == 403 and refused.error["code"] == "forbidden", refused.body
            assert "needs the admin token" in refused.error["message"]
            done = await send(daemon, request_line, room, victim_id, daemon.admin_token)
            assert done.status == SUCCESS[request_line], done.body
            return
        for grant in sorted(needs.alternatives[0]):
            held = needs.lacking(grant)
            refused = await send(daemon, request_line, room, victim_id,
                                 await join_token(daemon, room, held))
            assert refused.status == 403, (held, refused.body)
            assert (refused.error["code"], refused.error.get("grant")) == ("forbidden", grant), \
                (held, refused.body)
        for grants in needs.alternatives:
            done = await send(daemon, request_line, room, victim_id,
                              await join_token(daemon, room, grants))
            assert done.status == SUCCESS[request_line], (grants, done.body)
            if request_line == "GET /v1/rooms":  # a room's admin grant lists that room alone
                assert [r["name"] for r in json.loads(done.body)["rooms"]] == [room]

