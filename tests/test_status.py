"""``roomctl status``, and errors as JSON objects with ``--json``, as roomctl(1) says.

A real ``roomctl serve`` and the real ``roomctl`` as a subprocess. ``status`` reports on
standard output in every case; its exit status says what it found: 0 (the daemon answers
and takes the token), 4 (it refuses the token), 5 (nothing answers). A failed command with
``--json`` prints one JSON object on standard error,
``{"error": {"code", "message", "exit"}}``, and nothing on standard output.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomctl import __version__
from tests.cli_util import Result
from tests.conftest import ServeProcess, start_serve
from tests.test_profiles import cli


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    sp = start_serve(tmp_path_factory.mktemp("status") / "data", "--memory",
                     "--log-level", "warning")
    made = cli("room", "create", "ops", "--private", data_dir=str(sp.data_dir),
               ROOMCTL_URL=sp.http)
    assert made.rc == 0, made.err
    yield sp
    sp.proc.terminate()
    sp.proc.wait(timeout=15)


@pytest.fixture
def nowhere() -> str:
    """The URL of a port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def document(result: Result) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(result.out)
    return found


def join_token(sp: ServeProcess, *grants: str) -> str:
    args = [arg for grant in grants for arg in ("--grant", grant)]
    made = cli("token", "create", "--room", "ops", "--identity", "ci-bot", *args,
               data_dir=str(sp.data_dir), ROOMCTL_URL=sp.http)
    assert made.rc == 0, made.err
    return made.out.strip()


# --- status against a running daemon -----------------------------------------------------------


def test_status_with_the_data_directory_s_admin_token(daemon: ServeProcess) -> None:
    done = cli("status", data_dir=str(daemon.data_dir), ROOMCTL_URL=daemon.http)
    assert (done.rc, done.err) == (0, "")
    assert done.out.splitlines() == [
        f"daemon  {daemon.http}: roomctl {__version__} (ok, 1 room, 0 connections)",
        f"token   the admin token, from the data directory ({daemon.data_dir / 'admin-token'})",
        "grants  all, in every room",
    ]
    report = document(cli("status", "--json", data_dir=str(daemon.data_dir),
                          ROOMCTL_URL=daemon.http))
    assert report["daemon"] == {"reachable": True, "status": "ok", "version": __version__,
                                "rooms": 1, "connections": 0}
    assert report["token"]["source"] == "data-dir" and report["token"]["kind"] == "admin"


def test_status_of_a_join_token_says_its_room_grants_and_source(daemon: ServeProcess) -> None:
    token = join_token(daemon, "read", "post")
    by_flag = cli("status", "--json", "--token", token, ROOMCTL_URL=daemon.http)
    assert by_flag.rc == 0, by_flag.out
    report = document(by_flag)
    assert report["url"] == daemon.http and report["profile"] is None
    about = report["token"]
    assert {k: about[k] for k in ("source", "file", "valid", "kind", "grants", "room",
                                  "identity")} == {
        "source": "flag", "file": None, "valid": True, "kind": "join",
        "grants": ["post", "read"], "room": "ops", "identity": "ci-bot"}
    assert about["expires_at"].endswith("Z")
    by_variable = cli("status", ROOMCTL_URL=daemon.http, ROOMCTL_TOKEN=token)
    assert by_variable.rc == 0, by_variable.out
    lines = by_variable.out.splitlines()
    assert lines[1] == "token   a join token for room 'ops' (identity 'ci-bot'), from ROOMCTL_TOKEN"
    assert lines[2].startswith("grants  post, read; expires ")


def test_status_without_any_token(daemon: ServeProcess) -> None:
    done = cli("status", ROOMCTL_URL=daemon.http)
    assert done.rc == 0
    assert done.out.splitlines()[1] == "token   none (open rooms only)"
    assert document(cli("status", "--json", ROOMCTL_URL=daemon.http))["token"] is None


def test_status_with_a_refused_token_exits_4(daemon: ServeProcess) -> None:
    done = cli("status", "--token", "not.a.token", ROOMCTL_URL=daemon.http)
    assert (done.rc, done.err) == (4, "")
    assert done.out.splitlines()[0].startswith(f"daemon  {daemon.http}: roomctl ")
    assert done.out.splitlines()[1].startswith("token   from --token; refused: ")
    report = cli("status", "--json", "--token", "not.a.token", ROOMCTL_URL=daemon.http)
    assert report.rc == 4
    about = document(report)["token"]
    assert (about["source"], about["valid"], about["grants"]) == ("flag", False, [])
    assert about["error"]


# --- status with nothing listening -------------------------------------------------------------


def test_status_with_nothing_listening_exits_5_and_still_reports(nowhere: str,
                                                                 tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "admin-token").write_text("some-admin-token\n")
    done = cli("status", data_dir=str(data_dir), ROOMCTL_URL=nowhere)
    assert (done.rc, done.err) == (5, "")
    assert done.out.splitlines() == [
        f"daemon  {nowhere}: not reachable (Connection refused)",
        f"token   from the data directory ({data_dir / 'admin-token'}); not checked (no daemon)",
    ]
    report = cli("status", "--json", data_dir=str(data_dir), ROOMCTL_URL=nowhere)
    assert report.rc == 5
    found = document(report)
    assert found["daemon"]["reachable"] is False and found["daemon"]["exit"] == 5
    assert "Connection refused" in found["daemon"]["error"]
    assert (found["token"]["source"], found["token"]["valid"]) == ("data-dir", None)
    bare = cli("status", "--json", ROOMCTL_URL=nowhere)
    assert bare.rc == 5 and document(bare)["token"] is None


# --- --json errors -------------------------------------------------------------------------------


def json_error(result: Result) -> dict[str, Any]:
    """The one JSON object a failed ``--json`` command printed on stderr (checked)."""
    assert result.out == ""
    [line] = result.err.splitlines()
    error: dict[str, Any] = json.loads(line)["error"]
    assert set(error) >= {"code", "message", "exit"}, error
    assert error["exit"] == result.rc
    return error


def test_a_room_that_is_not_there_is_a_json_error(daemon: ServeProcess) -> None:
    for args in (["who", "nosuch"], ["room", "show", "nosuch"], ["post", "nosuch", "x"]):
        done = cli(*args, "--json", data_dir=str(daemon.data_dir), ROOMCTL_URL=daemon.http)
        assert done.rc == 3, done.err
        error = json_error(done)
        assert error["code"] == "not-found" and "nosuch" in error["message"], error


def test_an_unreachable_daemon_is_a_json_error(nowhere: str) -> None:
    for args in (["room", "list"], ["tail", "ops", "--no-follow"]):
        done = cli(*args, "--json", "--token", "x", ROOMCTL_URL=nowhere)
        assert done.rc == 5, done.err
        error = json_error(done)
        assert error["code"] == "unreachable" and nowhere in error["message"], error


def test_a_usage_error_is_a_json_error() -> None:
    for args in (["room", "create", "--json"], ["tail", "ops", "--lines", "many", "--json"],
                 ["who", "ops", "--json", "--no-such-option"]):
        done = cli(*args)
        assert done.rc == 2, done.err
        assert json_error(done)["code"] == "usage"


def test_a_refused_token_is_a_json_error(daemon: ServeProcess) -> None:
    token = join_token(daemon, "post")
    done = cli("who", "ops", "--json", "--token", token, ROOMCTL_URL=daemon.http)
    assert done.rc == 4
    error = json_error(done)
    assert error["code"] == "forbidden" and "read" in error["message"]
    assert error["grant"] == "read", error  # for a script, without parsing the message


def test_json_before_the_command_is_the_command_s_own(daemon: ServeProcess) -> None:
    missing = cli("--json", "room", "show", "nosuch", data_dir=str(daemon.data_dir),
                  ROOMCTL_URL=daemon.http)
    assert missing.rc == 3 and json_error(missing)["code"] == "not-found"
    listed = cli("--json", "room", "list", data_dir=str(daemon.data_dir),
                 ROOMCTL_URL=daemon.http)
    assert listed.rc == 0, listed.err
    assert isinstance(json.loads(listed.out), list)
    usage = cli("--json", "room", "show")
    assert usage.rc == 2 and json_error(usage)["code"] == "usage"
