"""The ``roomctl`` client commands, end to end: the real CLI against a real ``roomctl serve``.

Every test starts ``roomctl serve --port 0`` as a subprocess (reading its ``listening on``
line) and runs the real ``roomctl`` commands as subprocesses, with real WebSocket clients
standing in for people where a test needs participants. Each documented exit code is
produced here: 0, 1 (refused), 2 (usage), 3 (not found), 4 (unauthorized), 5 (unreachable)
and 6 (timeout).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from tests.cli_util import Result, one_error_line
from tests.conftest import ROOT, WAIT, Client, ServeProcess, start_serve

CLI_TIMEOUT = 30.0  # seconds any one roomctl command may take


def _env(sp: ServeProcess | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCTL_")}
    if sp is not None:
        env["ROOMCTL_URL"] = sp.http
        env["ROOMCTL_DATA_DIR"] = str(sp.data_dir)
    env.update(extra or {})
    return env


async def roomctl(sp: ServeProcess | None, *args: str, stdin: bytes | None = None,
                  env: dict[str, str] | None = None) -> Result:
    """Run ``roomctl ARGS`` to completion (bounded) and return its status and output."""
    with trio.fail_after(CLI_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "roomctl", *args], stdin=stdin if stdin is not None else b"",
            capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT,
            env=_env(sp, env))
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def roomctl_many(sp: ServeProcess | None, *commands: list[str]) -> list[Result]:
    """Run independent ``roomctl`` commands concurrently; return their results in order."""
    results: list[Result | None] = [None] * len(commands)

    async def one(index: int, args: list[str]) -> None:
        results[index] = await roomctl(sp, *args)

    async with trio.open_nursery() as nursery:
        for index, args in enumerate(commands):
            nursery.start_soon(one, index, args)
    return [r for r in results if r is not None]


@pytest.fixture
def daemon_process(serve_process: Callable[..., ServeProcess]) -> ServeProcess:
    return serve_process("--log-level", "warning")


@asynccontextmanager
async def participant(sp: ServeProcess, room: str, name: str, **hello: Any
                      ) -> AsyncIterator[Client]:
    """A real WebSocket participant (a person in a browser, as far as the daemon knows)."""
    async with trio_websocket.open_websocket_url(
        f"{sp.url}/v1/rooms/{room}", subprotocols=["roomctl.v1"], connect_timeout=WAIT,
        disconnect_timeout=WAIT,
    ) as ws:
        client = Client(ws, binary=False)
        welcome = await client.hello(name=name, **hello)
        assert welcome["type"] == "welcome", welcome
        yield client


# --- rooms -----------------------------------------------------------------------------------


async def test_room_create_list_show_delete(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    created = await roomctl(sp, "room", "create", "ops", "--topic", "deploys",
                            "--max-participants", "5")
    assert (created.rc, created.out, created.err) == (0, "", "")  # quiet success

    listed = await roomctl(sp, "room", "list", "--json")
    assert listed.rc == 0
    [room] = listed.json()
    assert room["name"] == "ops" and room["app"] == "chat"
    assert room["meta"]["topic"] == "deploys" and room["meta"]["max_participants"] == 5

    table = await roomctl(sp, "room", "list")
    header, row = table.out.splitlines()
    assert header.split() == ["NAME", "APP", "PEOPLE", "LAST", "SEQ", "CREATED", "TOPIC"]
    assert row.split()[:4] == ["ops", "chat", "0", "0"] and row.endswith("deploys")

    shown = await roomctl(sp, "room", "show", "ops")
    assert shown.rc == 0 and "topic:            deploys" in shown.out
    shown_json = (await roomctl(sp, "room", "show", "ops", "--json")).json()
    assert shown_json["name"] == "ops" and shown_json["members"] == []

    again = await roomctl(sp, "room", "create", "ops")
    assert again.rc == 1 and "conflict" in one_error_line(again)
    assert (await roomctl(sp, "room", "create", "ops", "--if-missing")).rc == 0

    refused = await roomctl(sp, "room", "delete", "ops")  # stdin is not a terminal
    assert refused.rc == 2 and "--yes" in one_error_line(refused)
    deleted = await roomctl(sp, "room", "delete", "ops", "--yes")
    assert (deleted.rc, deleted.out) == (0, "")
    assert (await roomctl(sp, "room", "list", "--json")).json() == []
    missing = await roomctl(sp, "room", "show", "ops")
    assert missing.rc == 3 and "not-found" in one_error_line(missing)


async def test_topic_pin_and_unpin(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    posted = await roomctl(sp, "post", "ops", "remember this", "--json")
    seq = posted.json()["seq"]
    assert (await roomctl(sp, "room", "topic", "ops", "incident 42")).rc == 0
    assert (await roomctl(sp, "room", "pin", "ops", str(seq))).rc == 0
    meta = (await roomctl(sp, "room", "show", "ops", "--json")).json()["meta"]
    assert meta["topic"] == "incident 42" and meta["pins"] == [seq]
    assert (await roomctl(sp, "room", "unpin", "ops", str(seq))).rc == 0
    assert (await roomctl(sp, "room", "show", "ops", "--json")).json()["meta"]["pins"] == []
    no_message = await roomctl(sp, "room", "pin", "ops", "999")
    assert no_message.rc == 3 and "not-found" in one_error_line(no_message)
    # Setting the topic observes the room without joining it: nobody appeared.
    assert (await roomctl(sp, "who", "ops", "--json")).json() == []


# --- post and tail ---------------------------------------------------------------------------


async def test_post_by_argument_stdin_and_lines_then_tail_returns_exactly_that(
        daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    by_arg = await roomctl(sp, "post", "ops", "deploy", "started", "--json")
    by_dash = await roomctl(sp, "post", "ops", "-", "--json", stdin=b"from stdin\nsecond line\n")
    by_pipe = await roomctl(sp, "post", "ops", "--name", "ci", stdin=b"piped\n")
    by_lines = await roomctl(sp, "post", "ops", "--lines", "--json",
                             stdin=b"one\n\ntwo\r\nthree")
    for result in (by_arg, by_dash, by_pipe, by_lines):
        assert (result.rc, result.err) == (0, ""), result
    assert by_pipe.out == ""  # quiet without --json
    seqs = [by_arg.json()["seq"], by_dash.json()["seq"]] + \
        [line["seq"] for line in by_lines.json_lines()]
    assert len(seqs) == 5

    tail = await roomctl(sp, "tail", "ops", "--no-follow", "--json", "-n", "100")
    assert tail.rc == 0, tail.err
    messages = tail.json_lines()
    assert [m["text"] for m in messages] == [
        "deploy started", "from stdin\nsecond line", "piped", "one", "two", "three"]
    got = [m["seq"] for m in messages]
    assert got == sorted(got) and len(set(got)) == len(got)
    assert set(seqs) <= set(got)
    assert [m["sender"] for m in messages][2] == "ci"
    for message in messages:
        assert {"seq", "text", "sender", "sender_id", "at", "time"} <= message.keys()

    last_two = await roomctl(sp, "tail", "ops", "--no-follow", "--json", "-n", "2")
    assert [m["text"] for m in last_two.json_lines()] == ["two", "three"]
    since = await roomctl(sp, "tail", "ops", "--no-follow", "--json", "--since", str(got[3]))
    assert [m["text"] for m in since.json_lines()] == ["two", "three"]
    human = await roomctl(sp, "tail", "ops", "--no-follow", "-n", "1")
    assert human.out.rstrip().endswith("roomctl: three")


async def test_post_lines_streams_each_line_as_it_arrives(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    async with participant(sp, "ops", "watcher") as watcher:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "roomctl", "post", "ops", "--lines", "--json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env(sp), cwd=ROOT)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for text in ("first", "second"):
                await proc.stdin.send_all(text.encode() + b"\n")
                posted = await watcher.recv_type("message-posted", timeout=15)
                assert posted["message"]["text"] == text  # stdin is still open
            await proc.stdin.aclose()
            with trio.fail_after(CLI_TIMEOUT):
                assert await proc.wait() == 0
            out = await proc.stdout.receive_some()
            assert [json.loads(line)["seq"] for line in out.decode().splitlines()] == [1, 2]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_posting_does_not_make_anyone_appear(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    async with participant(sp, "ops", "alice") as alice:
        assert (await roomctl(sp, "post", "ops", "hi")).rc == 0
        frame = await alice.recv_type("message-posted", "participant-joined")
        assert frame["type"] == "message-posted"  # no participant-joined before it
        await alice.no_frame(0.3)


async def test_post_refuses_bad_input_with_one_line(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    empty = await roomctl(sp, "post", "ops", stdin=b"\n\n")
    assert empty.rc == 2 and "empty" in one_error_line(empty)
    both = await roomctl(sp, "post", "ops", "text", "--lines")
    assert both.rc == 2
    too_long = await roomctl(sp, "post", "ops", "x" * 4001)
    assert too_long.rc == 1 and "4000" in one_error_line(too_long)
    # A line over the limit is not posted: the others are, and the exit status says so
    # ("exit 0 = every line is on disk"), with a count at the end.
    long_line = await roomctl(sp, "post", "ops", "--lines",
                              stdin=b"ok\n" + b"y" * 5000 + b"\nafter\n" + b"z" * 4001 + b"\n")
    assert long_line.rc == 1, long_line
    assert long_line.err.splitlines() == [
        "roomctl: line 2: 5000 characters is over the 4000-character limit; not posted",
        "roomctl: line 4: 4001 characters is over the 4000-character limit; not posted",
        "roomctl: 2 lines not posted: lines 2, 4 (over the 4000-character limit)"]
    texts = [m["text"] for m in
             (await roomctl(sp, "tail", "ops", "--no-follow", "--json")).json_lines()]
    assert texts == ["ok", "after"]


async def test_tail_follows_people_and_topic_and_ctrl_c_exits_quietly(
        daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    await roomctl(sp, "post", "ops", "marker")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "roomctl", "tail", "ops", "-n", "1"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=_env(sp), cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    buffered = b""

    async def until(text: str) -> None:
        nonlocal buffered
        with trio.fail_after(15):
            while text.encode() not in buffered:
                chunk = await proc.stdout.receive_some()  # type: ignore[union-attr]
                assert chunk, f"tail ended; got {buffered!r}"
                buffered += chunk

    try:
        await until("roomctl: marker")  # tail has connected and printed the history
        async with participant(sp, "ops", "bob") as bob:
            await until("bob joined")
            await bob.request({"type": "set-status", "status": "busy", "text": "on call"})
            await until("bob is busy: on call")
            await bob.request({"type": "send-message", "text": "hello from bob"})
            await until("bob: hello from bob")
            async with participant(sp, "ops", "carol"):
                await until("carol joined")
            await until("carol is reconnecting")  # dropped: inside the grace period
            await bob.send({"type": "leave"})
            await until("bob left")
        assert (await roomctl(sp, "room", "topic", "ops", "maintenance")).rc == 0
        await until("topic: maintenance")
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(CLI_TIMEOUT):
            assert await proc.wait() == 0
        assert await proc.stderr.receive_some() == b""  # quiet: no traceback, no message
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_tail_survives_a_daemon_restart_with_every_message_once_in_order(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sp = start_serve(data_dir, "--log-level", "warning")
    port = sp.port
    tail_proc = None
    try:
        await roomctl(sp, "room", "create", "ops")
        for n in range(3):
            assert (await roomctl(sp, "post", "ops", f"before {n}")).rc == 0
        tail_proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "roomctl", "tail", "ops", "--follow", "--json", "-n", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(sp), cwd=ROOT)
        lines = _LineReader(tail_proc.stdout)
        assert [m["text"] for m in await lines.take(3)] == [f"before {n}" for n in range(3)]

        sp.proc.send_signal(signal.SIGTERM)
        assert sp.proc.wait(timeout=CLI_TIMEOUT) == 0
        down = await roomctl(sp, "post", "ops", "while down")
        assert down.rc == 5 and "cannot reach" in one_error_line(down)

        sp = start_serve(data_dir, "--port", str(port), "--log-level", "warning")
        for n in range(3):
            assert (await roomctl(sp, "post", "ops", f"after {n}")).rc == 0
        got = await lines.take(3)
        assert [m["text"] for m in got] == [f"after {n}" for n in range(3)]
        await lines.nothing_more(0.5)
        seqs = [m["seq"] for m in lines.seen]
        assert seqs == list(range(seqs[0], seqs[0] + 6))  # in order, none twice, none skipped
    finally:
        if tail_proc is not None and tail_proc.returncode is None:
            tail_proc.kill()
            await tail_proc.wait()
        if sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait(timeout=10)


class _LineReader:
    """JSON lines from a subprocess's stdout, read with bounded waits."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""
        self.seen: list[dict[str, Any]] = []

    async def take(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        with trio.fail_after(timeout):
            while len(got) < count:
                while b"\n" not in self.buffer:
                    chunk = await self.stream.receive_some()
                    assert chunk, "the stream ended"
                    self.buffer += chunk
                line, self.buffer = self.buffer.split(b"\n", 1)
                got.append(json.loads(line))
        self.seen += got
        return got

    async def line(self, timeout: float = 20) -> str:
        """Return the next line of text."""
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                chunk = await self.stream.receive_some()
                assert chunk, "the stream ended"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    async def nothing_more(self, within: float) -> None:
        with trio.move_on_after(within):
            chunk = await self.stream.receive_some()
            raise AssertionError(f"unexpected output {self.buffer + chunk!r}")
        assert self.buffer == b""


# --- participants ----------------------------------------------------------------------------


async def test_who_lists_two_participants_with_their_statuses(
        daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    async with participant(sp, "ops", "alice") as alice, participant(sp, "ops", "bob") as bob:
        await alice.request({"type": "set-status", "status": "away", "text": "lunch"})
        await bob.request({"type": "send-message", "text": "hi"})
        await bob.request({"type": "join"})
        who = await roomctl(sp, "who", "ops", "--json")
        assert who.rc == 0, who.err
        people = {p["name"]: p for p in who.json()}
        assert people.keys() == {"alice", "bob"}
        assert (people["alice"]["status"], people["alice"]["status_text"]) == ("away", "lunch")
        assert people["bob"]["status"] == "online" and people["bob"]["messages_sent"] == 1
        assert people["bob"]["in_call"] is True and people["alice"]["in_call"] is False
        assert people["alice"]["id"] == alice.session_id and people["alice"]["live"] is True
        assert set(people["bob"]["media"]) == {"audio_muted", "video_muted"}

        table = await roomctl(sp, "who", "ops")
        header, *rows = table.out.splitlines()
        assert header.split()[:4] == ["ID", "NAME", "STATE", "STATUS"]
        assert any("alice" in r and "away (lunch)" in r and "live" in r for r in rows)


async def test_wait_succeeds_when_enough_join_and_times_out_with_code_6(
        daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    timed_out = await roomctl(sp, "wait", "ops", "--participants", "1", "--timeout", "1s")
    assert timed_out.rc == 6 and "0 of 1" in one_error_line(timed_out)
    async with participant(sp, "ops", "alice"):
        # A script reading --json gets a document on timeout too, with the count reached.
        as_json = await roomctl(sp, "wait", "ops", "-p", "2", "--timeout", "1s", "--json")
    # ...and the error as one JSON object on stderr.
    error = json.loads(as_json.err)["error"]
    assert as_json.rc == 6 and error["code"] == "timeout" and error["exit"] == 6
    assert "1 of 2" in error["message"]
    assert as_json.json() == {"room": "ops", "participants": 1, "wanted": 2,
                              "timed_out": True, "interrupted": False}

    result: list[Result] = []

    async def wait_for_two() -> None:
        result.append(await roomctl(sp, "wait", "ops", "-p", "2", "--timeout", "20s", "--json"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_two)
        async with participant(sp, "ops", "alice"):
            await trio.sleep(0.5)
            async with participant(sp, "ops", "bob"):
                with trio.fail_after(CLI_TIMEOUT):
                    while not result:
                        await trio.sleep(0.05)
    assert result[0].rc == 0, result[0].err
    assert result[0].json() == {"room": "ops", "participants": 2, "wanted": 2,
                                "timed_out": False, "interrupted": False}


async def test_kick_removes_a_participant_by_id_or_name(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    async with participant(sp, "ops", "mallory") as mallory, participant(sp, "ops", "eve") as eve:
        kicked = await roomctl(sp, "kick", "ops", "mallory", "--json")
        assert kicked.rc == 0, kicked.err
        assert kicked.json() == {"room": "ops", "kicked": mallory.session_id}
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await mallory.recv_type("never", timeout=WAIT)
        assert closed.value.reason is not None and closed.value.reason.code == 4009
        assert (await roomctl(sp, "kick", "ops", str(eve.session_id))).rc == 0
    assert (await roomctl(sp, "who", "ops", "--json")).json() == []
    unknown = await roomctl(sp, "kick", "ops", "nobody")
    assert unknown.rc == 3 and "nobody" in one_error_line(unknown)


# --- exit codes and connection options -------------------------------------------------------


async def test_what_the_daemon_still_refuses_is_told_in_words(
        daemon_process: ServeProcess) -> None:
    from protocol.admin import CreateRoom
    from roomctl.rules import explain_refusal

    sp = daemon_process
    token = (sp.data_dir / "admin-token").read_text().strip()
    # A daemon answers a value out of bounds with its decoder's wording (a client of
    # another version could send one); the CLI puts it in words.
    async with trio_websocket.open_websocket_url(
            f"{sp.url}/v1/admin", subprotocols=["roomctl.v1"], connect_timeout=WAIT) as ws:
        admin = Client(ws, binary=False)
        assert (await admin.hello(name=None, token=token))["type"] == "welcome"
        answers = [await admin.request({"type": "create-room", "room": "ok", **fields})
                   for fields in ({"room": "bad name!"},
                                  {"meta": {"max_participants": 20000}},
                                  {"meta": {"topic": "t" * 513}})]
    told = [explain_refusal(answer["message"], CreateRoom(room="ok")) for answer in answers]
    assert told == [
        "room: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        "max participants: 1 to 10000", "topic: at most 512 characters"], answers


async def test_room_create_says_when_the_room_takes_other_than_max_participants(
        serve_process: Callable[..., ServeProcess]) -> None:
    sp = serve_process("--log-level", "warning", "--max-participants", "100")
    made = await roomctl(sp, "room", "create", "ops", "--max-participants", "7")
    assert (made.rc, made.err) == (0, "")
    again = await roomctl(sp, "room", "create", "ops", "--max-participants", "9",
                          "--if-missing", "--json")
    assert again.rc == 0 and again.json()["meta"]["max_participants"] == 7
    assert one_error_line(again) == "roomctl: room 'ops' takes at most 7 participants, not 9"
    # Above the daemon's own cap, the daemon refuses or lowers it: either way in words.
    big = await roomctl(sp, "room", "create", "big", "--max-participants", "500", "--json")
    if big.rc == 0:
        effective = big.json()["meta"]["max_participants"]
        if effective != 500:
            assert one_error_line(big) == \
                f"roomctl: room 'big' takes at most {effective} participants, not 500"
    else:
        error = json.loads(big.err)["error"]  # (--json: the error as one JSON object)
        assert error["code"] == "bad-request" and "Expected" not in error["message"]


async def test_exit_3_for_a_room_that_does_not_exist(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    commands = (["post", "ghost", "hi"], ["tail", "ghost"], ["who", "ghost"],
                ["wait", "ghost"], ["room", "delete", "ghost", "--yes"],
                ["room", "topic", "ghost", "t"], ["kick", "ghost", "x"])
    for args, result in zip(commands, await roomctl_many(sp, *commands), strict=True):
        assert result.rc == 3, (args, result)
        assert "ghost" in one_error_line(result)
    # Asking never created the room, although this daemon creates rooms on first join.
    assert (await roomctl(sp, "room", "list", "--json")).json() == []


async def test_exit_4_for_a_wrong_or_missing_admin_token(daemon_process: ServeProcess,
                                                         tmp_path: Path) -> None:
    sp = daemon_process
    wrong = await roomctl(sp, "room", "list", "--token", "not-the-token")
    assert wrong.rc == 4 and "unauthorized" in one_error_line(wrong)
    elsewhere = await roomctl(sp, "room", "list", "--data-dir", str(tmp_path / "empty"))
    assert elsewhere.rc == 4 and "admin token" in one_error_line(elsewhere)
    # The explicit token always wins over the file; the file works with no token at all.
    token = (sp.data_dir / "admin-token").read_text().strip()
    by_env = await roomctl(sp, "room", "list", "--data-dir", str(tmp_path / "empty"),
                           env={"ROOMCTL_TOKEN": token})
    assert by_env.rc == 0
    assert (await roomctl(sp, "room", "list")).rc == 0


async def test_a_refused_admin_token_from_a_data_dir_says_where_it_came_from(
        daemon_process: ServeProcess, tmp_path: Path) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    await roomctl(sp, "room", "create", "vault", "--private")
    other = tmp_path / "other"  # another daemon's data directory, say
    other.mkdir()
    token_file = other / "admin-token"
    token_file.write_text("another-daemons-admin-token\n")
    elsewhere = {"ROOMCTL_DATA_DIR": str(other)}

    listing = await roomctl(sp, "room", "list", env=elsewhere)
    line = one_error_line(listing)
    assert listing.rc == 4
    for part in (str(token_file), sp.http, "not a valid token", "--data-dir", "--token"):
        assert part in line, line
    assert "segments" not in line.lower()

    # An open room needs no token: the command goes on without the refused one.
    posted = await roomctl(sp, "post", "ops", "hello", "--json", env=elsewhere)
    assert (posted.rc, posted.err) == (0, ""), posted
    tail = await roomctl(sp, "tail", "ops", "--no-follow", "--json", env=elsewhere)
    assert (tail.rc, [m["text"] for m in tail.json_lines()]) == (0, ["hello"]), tail

    # A private room does: the error names the file and why going without it failed.
    private = await roomctl(sp, "post", "vault", "x", env=elsewhere)
    line = one_error_line(private)
    assert private.rc == 4 and str(token_file) in line and "needs a join token" in line

    # A token given explicitly is the user's own: the daemon's words, not a JWT library's.
    given = await roomctl(sp, "who", "ops", "--token", "nonsense")
    assert given.rc == 4
    assert one_error_line(given) == "roomctl: unauthorized: not a valid token"


async def test_exit_5_when_no_daemon_listens() -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = ["--url", f"http://127.0.0.1:{port}"]
    commands = (["room", "list", "--token", "t", *url], ["post", "ops", "hi", *url],
                ["tail", "ops", *url], ["who", "ops", *url])
    for args, result in zip(commands, await roomctl_many(None, *commands), strict=True):
        assert result.rc == 5, (args, result)
        assert "cannot reach" in one_error_line(result)


async def test_exit_6_when_the_daemon_does_not_answer_in_time() -> None:
    with socket.socket() as silent:  # accepts TCP connections and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = await roomctl(None, "who", "ops", "--url", url, "--timeout", "0.5")
        assert result.rc == 6 and "0.5 s" in one_error_line(result)


async def test_every_url_scheme_reaches_the_daemon(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    urls = (sp.http, sp.url, f"{sp.http}/", f"ws://localhost:{sp.port}/some/path")
    results = await roomctl_many(sp, *(["who", "ops", "--json", "--url", url] for url in urls))
    for url, result in zip(urls, results, strict=True):
        assert result.rc == 0, (url, result.err)


async def test_completion_script_is_available() -> None:
    # Typer finds the shell by walking up the process tree, so run roomctl under bash
    # (the "; true" keeps bash from exec'ing roomctl in its own place).
    command = f"{sys.executable} -m roomctl --show-completion; true"
    with trio.fail_after(CLI_TIMEOUT):
        done = await trio.run_process(["bash", "-c", command], capture_stdout=True,
                                      capture_stderr=True, check=False, cwd=ROOT,
                                      env=_env(None))
    assert done.returncode == 0, done.stderr
    assert b"complete -o default -F _roomctl_completion roomctl" in done.stdout


async def test_post_lines_without_the_admin_token_waits_out_the_rate_limit_in_order(
        serve_process: Callable[..., ServeProcess]) -> None:
    sp = serve_process("--log-level", "warning", "--rate-limit", "100", "--rate-burst", "10")
    await roomctl(sp, "room", "create", "ops")
    lines = [f"line {n}" for n in range(60)]
    anonymous = {"ROOMCTL_DATA_DIR": "/nonexistent"}  # no admin token: rate-limited
    posted = await roomctl(sp, "post", "ops", "--lines", "--json", env=anonymous,
                           stdin="\n".join(lines).encode())
    assert (posted.rc, posted.err) == (0, "")
    assert len(posted.json_lines()) == 60
    tail = await roomctl(sp, "tail", "ops", "--no-follow", "--json", "-n", "100")
    assert [m["text"] for m in tail.json_lines()] == lines
    metrics = await trio.to_thread.run_sync(
        lambda: urllib.request.urlopen(sp.http + "/metrics", timeout=WAIT).read().decode())
    refused = re.search(r"^roomctl_rate_limited(?:_total)? (\d+)", metrics, re.M)
    assert refused is not None and int(refused.group(1)) > 0  # the limit did bite


# --- roomctl in scripts: background jobs, signals and pipes -----------------------------------

# What `roomctl ... &` in a script does: a non-interactive shell starts background jobs with
# SIGINT ignored (Ctrl-C is for the foreground), and the job inherits that; `kill` (SIGTERM)
# is how the script stops it.
AS_BACKGROUND_JOB = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]


@asynccontextmanager
async def started(sp: ServeProcess | None, *args: str, background: bool = True,
                  stdin: bool = False) -> AsyncIterator[trio.Process]:
    """A running ``roomctl ARGS`` (a script's background job by default); killed at the end."""
    command = [sys.executable, "-m", "roomctl", *args]
    proc = await trio.lowlevel.open_process(
        [*AS_BACKGROUND_JOB, *command] if background else command,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=_env(sp), cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _read_to_end(stream: Any) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def finished(proc: trio.Process, signum: int | None = None) -> Result:
    """Send ``signum`` (if any), then return the status and the rest of the output (bounded)."""
    if signum is not None:
        proc.send_signal(signum)
    with trio.fail_after(CLI_TIMEOUT):
        out = await _read_to_end(proc.stdout)
        err = await _read_to_end(proc.stderr)
        rc = await proc.wait()
    return Result(rc, out.decode(), err.decode())


async def still_running_after(proc: trio.Process, signum: int, seconds: float = 1.0) -> bool:
    proc.send_signal(signum)
    await trio.sleep(seconds)
    return proc.poll() is None


def connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` has an established TCP connection to 127.0.0.1:``port``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                remote, state, inode = fields[2], fields[3], fields[9]
                if inode in inodes and state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


async def until_connected(proc: trio.Process, sp: ServeProcess) -> None:
    with trio.fail_after(CLI_TIMEOUT):
        while not connected_to(proc.pid, sp.port):
            assert proc.poll() is None, "it ended"
            await trio.sleep(0.05)


async def test_tail_as_a_background_job_stops_on_sigterm_quietly(
        daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    await roomctl(sp, "post", "ops", "marker")
    async with started(sp, "tail", "ops", "--json") as proc:
        assert (await _LineReader(proc.stdout).take(1))[0]["text"] == "marker"
        assert await still_running_after(proc, signal.SIGINT)  # ignored, as the shell asked
        stopped = await finished(proc, signal.SIGTERM)
    assert (stopped.rc, stopped.err) == (0, "")


async def test_wait_as_a_background_job_stops_on_sigterm_unfulfilled(
        daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    async with started(sp, "wait", "ops", "-p", "5", "--timeout", "5m", "--json") as proc:
        await until_connected(proc, sp)
        assert await still_running_after(proc, signal.SIGINT)
        stopped = await finished(proc, signal.SIGTERM)
    # The wait did not succeed (status 130), and says so in its error (one JSON object
    # with --json) and in its document.
    assert stopped.rc == 130
    assert json.loads(stopped.err) == {"error": {
        "code": "interrupted", "message": "SIGTERM: stopped waiting with 0 of 5 participants",
        "exit": 130}}
    assert stopped.json() == {"room": "ops", "participants": 0, "wanted": 5,
                              "timed_out": False, "interrupted": True}


async def test_post_lines_as_a_background_job_stops_on_sigterm_with_its_lines_stored(
        daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    async with participant(sp, "ops", "watcher") as watcher, \
            started(sp, "post", "ops", "--lines", "--json", stdin=True) as proc:
        assert proc.stdin is not None
        await proc.stdin.send_all(b"first\n")  # stdin stays open: a never-ending stream
        posted = await watcher.recv_type("message-posted", timeout=15)
        assert posted["message"]["text"] == "first"
        assert await still_running_after(proc, signal.SIGINT)
        stopped = await finished(proc, signal.SIGTERM)
    assert (stopped.rc, stopped.err) == (0, "")  # every line it read is stored
    assert [line["seq"] for line in stopped.json_lines()] == [1]


async def test_serve_as_a_background_job_shuts_down_on_sigterm(tmp_path: Path) -> None:
    args = ("serve", "--port", "0", "--memory", "--data-dir", str(tmp_path / "data"))
    async with started(None, *args) as proc:
        first = await _LineReader(proc.stdout).line()
        assert first.startswith("listening on http://127.0.0.1:"), first
        assert await still_running_after(proc, signal.SIGINT)
        stopped = await finished(proc, signal.SIGTERM)
    assert stopped.rc == 0, stopped.err


async def test_post_lines_stopped_during_an_outage_names_the_lines_not_posted() -> None:
    with socket.socket() as probe:  # a port nobody listens on: the daemon is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with started(None, "post", "ops", "--lines", "--url", f"http://127.0.0.1:{port}",
                       stdin=True) as proc:
        assert proc.stdin is not None
        await proc.stdin.send_all(b"one\n\ntwo\nthree\n")
        with trio.fail_after(CLI_TIMEOUT):
            err = b""
            while b"retrying" not in err:
                err += await proc.stderr.receive_some()  # type: ignore[union-attr]
        stopped = await finished(proc, signal.SIGTERM)
    # It gives up at once (no 60 s of retrying) and names what it read but did not post.
    assert stopped.rc == 5
    last = one_error_line(stopped)
    assert last.startswith(f"roomctl: cannot reach http://127.0.0.1:{port}")
    assert last.endswith("3 messages not posted (lines 1, 3-4); stdin was not read to its end")


async def test_a_closed_stdout_ends_a_follower_quietly(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    await roomctl(sp, "post", "ops", "first")
    # roomctl tail ops --json | head -1: the room stays quiet after the first message, and
    # tail still ends as soon as head does, without a word, as coreutils' tail -f does.
    async with started(sp, "tail", "ops", "--json", background=False) as proc:
        assert (await _LineReader(proc.stdout).take(1))[0]["text"] == "first"
        await proc.stdout.aclose()  # type: ignore[union-attr]
        with trio.fail_after(CLI_TIMEOUT):
            rc = await proc.wait()
        err = await _read_to_end(proc.stderr)
    assert (rc, err) == (141, b"")


async def test_a_closed_stdout_is_not_a_network_failure(daemon_process: ServeProcess) -> None:
    sp = daemon_process
    await roomctl(sp, "room", "create", "ops")
    await roomctl(sp, "post", "ops", "--lines", stdin=b"".join(b"m%d\n" % n for n in range(300)))
    for args, stdin in ((["tail", "ops", "--no-follow", "--json", "-n", "300"], b""),
                        (["post", "ops", "--lines", "--json"], b"x\n" * 300)):
        async with started(sp, *args, background=False, stdin=True) as proc:
            await proc.stdout.aclose()  # type: ignore[union-attr]  # head -0, as it were
            await proc.stdin.send_all(stdin)  # type: ignore[union-attr]
            await proc.stdin.aclose()  # type: ignore[union-attr]
            with trio.fail_after(CLI_TIMEOUT):
                rc = await proc.wait()
            err = await _read_to_end(proc.stderr)
        assert (rc, err) == (141, b""), args


async def test_a_second_signal_ends_a_command_at_once_with_130() -> None:
    with socket.socket() as silent:  # accepts TCP connections and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        # A message once read is posted even if a signal comes (within --timeout); a
        # second signal says the user will not wait for that.
        async with started(None, "post", "ops", "hello", "--url", url, "--timeout", "60s",
                           background=False) as proc:
            with trio.fail_after(CLI_TIMEOUT):
                while not connected_to(proc.pid, silent.getsockname()[1]):
                    await trio.sleep(0.05)
            assert await still_running_after(proc, signal.SIGTERM, 0.5)
            stopped = await finished(proc, signal.SIGTERM)
    assert stopped.rc == 130
    assert one_error_line(stopped) == "roomctl: SIGTERM again: stopped at once"
