"""Named profiles (``$XDG_CONFIG_HOME/roomctl/config.toml``), as roomctl(1)'s PROFILES says.

Two real daemons, A and B, each holding a room of its own (``on-a``, ``on-b``), so that
``room list`` shows which daemon answered; a config file under the test's own folder
(``XDG_CONFIG_HOME`` points at it for that command alone) with a profile for each, their
tokens in token files given relative to the file's folder. The real ``roomctl`` runs as a
subprocess from the repository's root, so a path taken from the current directory instead
would not be found. Precedence, for the URL and the token: option > variable > profile >
default; the profile itself: --profile > ROOMCTL_PROFILE > the file's ``default``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from protocol.local import DEFAULT_URL
from tests.cli_util import Result, one_error_line, run_cli
from tests.conftest import ROOT, ServeProcess, start_serve

CLI_TIMEOUT = 30.0
NO_DATA_DIR = "/nonexistent/roomctl-data"  # so that no admin token is read implicitly


def cli(*args: str, config_home: Path | None = None, data_dir: str | None = NO_DATA_DIR,
        **env: str) -> Result:
    """Run the real ``roomctl ARGS`` (no ROOMCTL_* from outside but ``env``, and
    ROOMCTL_DATA_DIR ``data_dir`` unless None)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCTL_")}
    if data_dir is not None:
        environ["ROOMCTL_DATA_DIR"] = data_dir
    if config_home is not None:
        environ["XDG_CONFIG_HOME"] = str(config_home)
    environ.update(env)
    done = subprocess.run([sys.executable, "-m", "roomctl", *args], capture_output=True,
                          text=True, cwd=ROOT, env=environ, timeout=CLI_TIMEOUT, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


def start(where: Path, room: str, *args: str) -> ServeProcess:
    """Start a daemon holding one room, ``room``."""
    sp = start_serve(where / "data", "--memory", "--log-level", "warning", *args)
    made = cli("room", "create", room, data_dir=str(sp.data_dir), ROOMCTL_URL=sp.http,
               ROOMCTL_INSECURE="1")
    assert made.rc == 0, made.err
    return sp


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess,
                                                                          ServeProcess]]:
    a = start(tmp_path_factory.mktemp("a"), "on-a")
    b = start(tmp_path_factory.mktemp("b"), "on-b")
    yield a, b
    for sp in (a, b):
        sp.proc.terminate()
        sp.proc.wait(timeout=15)


def write_config(home: Path, text: str) -> Path:
    """Write ``home/roomctl/config.toml``; return its path."""
    path = home / "roomctl" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def config_home(tmp_path: Path, daemons: tuple[ServeProcess, ServeProcess]) -> Path:
    """A config file with profiles a and b (``default = "a"``), tokens in files given
    relative to its folder."""
    a, b = daemons
    home = tmp_path / "config"
    path = write_config(home, f"""
default = "a"

[profiles.a]
url = "{a.http}"
token_file = "a.token"

[profiles.b]
url = "{b.http}"
token_file = "tokens/b.token"
""")
    (path.parent / "a.token").write_text(a.admin_token + "\n")
    (path.parent / "tokens").mkdir()
    (path.parent / "tokens" / "b.token").write_text(b.admin_token + "\n")
    return home


def rooms(result: Result) -> list[str]:
    """The room names ``room list --json`` printed (which daemon answered)."""
    assert result.rc == 0, result.err
    return [room["name"] for room in result.json()]


def status(result: Result) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.out)
    return document


# --- which profile ----------------------------------------------------------------------------


def test_the_default_profile_then_the_variable_then_the_option_choose_the_daemon(
        config_home: Path) -> None:
    assert rooms(cli("room", "list", "--json", config_home=config_home)) == ["on-a"]
    assert rooms(cli("room", "list", "--json", config_home=config_home,
                     ROOMCTL_PROFILE="b")) == ["on-b"]
    assert rooms(cli("room", "list", "--json", "--profile", "a", config_home=config_home,
                     ROOMCTL_PROFILE="b")) == ["on-a"]
    assert rooms(cli("room", "list", "--json", "--profile", "b",
                     config_home=config_home)) == ["on-b"]


def test_status_names_the_profile_and_the_token_file_it_read(
        config_home: Path, daemons: tuple[ServeProcess, ServeProcess]) -> None:
    _, b = daemons
    folder = config_home / "roomctl"
    done = cli("status", "--json", "--profile", "b", config_home=config_home)
    assert done.rc == 0, done.err
    report = status(done)
    assert report["url"] == b.http
    assert report["profile"] == {"name": "b", "file": str(folder / "config.toml")}
    token = report["token"]
    assert (token["source"], token["file"]) == ("profile", str(folder / "tokens" / "b.token"))
    assert (token["valid"], token["kind"]) == (True, "admin")
    human = cli("status", "--profile", "b", config_home=config_home)
    assert human.rc == 0, human.err
    lines = human.out.splitlines()
    assert lines[1].split() == ["profile", "b", f"({folder / 'config.toml'})"]
    assert lines[2] == (f"token    the admin token, from profile 'b' "
                        f"({folder / 'tokens' / 'b.token'})")


# --- precedence of each setting ----------------------------------------------------------------


def test_the_url_comes_from_the_option_then_the_variable_then_the_profile_then_the_default(
        config_home: Path, tmp_path: Path, daemons: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = daemons
    token_b = b.admin_token
    # The variable wins over the profile (a): B answers, with the token given for it.
    by_variable = cli("room", "list", "--json", config_home=config_home, ROOMCTL_URL=b.http,
                      ROOMCTL_TOKEN=token_b)
    assert rooms(by_variable) == ["on-b"]
    # The option wins over the variable.
    by_option = cli("room", "list", "--json", "--url", b.http, config_home=config_home,
                    ROOMCTL_URL=a.http, ROOMCTL_TOKEN=token_b)
    assert rooms(by_option) == ["on-b"]
    # Without any, the built-in default (nothing listens there in a test, or something
    # else does: only the URL it tried is checked).
    no_file = tmp_path / "empty-config"
    default = cli("status", "--json", "--timeout", "2s", config_home=no_file)
    assert status(default)["url"] == DEFAULT_URL and status(default)["profile"] is None


def test_the_token_comes_from_the_option_then_the_variable_then_the_profile(
        config_home: Path, daemons: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = daemons
    token_b = b.admin_token
    # Profile a's token goes with a's URL only: pointed at B, the command does not send it
    # (as gh keeps a token per host).
    elsewhere = cli("status", "--json", "--url", b.http, config_home=config_home)
    assert status(elsewhere)["url"] == b.http
    assert (status(elsewhere)["token"] or {}).get("source") != "profile", elsewhere.out
    same_url = cli("status", "--json", "--url", a.http + "/", config_home=config_home)
    assert status(same_url)["token"]["source"] == "profile", same_url.out
    by_variable = cli("status", "--json", "--url", b.http, config_home=config_home,
                      ROOMCTL_TOKEN=token_b)
    assert by_variable.rc == 0, by_variable.out
    assert status(by_variable)["token"]["source"] == "environment"
    by_option = cli("status", "--json", "--url", b.http, "--token", token_b,
                    config_home=config_home, ROOMCTL_TOKEN="not-a-token")
    assert by_option.rc == 0, by_option.out
    assert status(by_option)["token"]["source"] == "flag"
    # And the profile's token wins over a data directory's admin token.
    over_data_dir = cli("status", "--json", config_home=config_home,
                        data_dir=str(b.data_dir))
    assert status(over_data_dir)["token"]["source"] == "profile"
    assert status(over_data_dir)["url"] == a.http and over_data_dir.rc == 0


def test_a_profile_s_inline_token_and_data_dir_are_used(
        tmp_path: Path, daemons: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = daemons
    home = tmp_path / "config"
    write_config(home, f"""
[profiles.inline]
url = "{b.http}"
token = "{b.admin_token}"

[profiles.local]
url = "{a.http}"
data_dir = "{a.data_dir}"
""")
    assert rooms(cli("room", "list", "--json", "--profile", "inline",
                     config_home=home)) == ["on-b"]
    local = cli("status", "--json", "--profile", "local", config_home=home, data_dir=None)
    assert local.rc == 0, local.out
    assert status(local)["token"]["source"] == "data-dir"
    assert status(local)["token"]["file"] == str(a.data_dir / "admin-token")
    # ROOMCTL_DATA_DIR wins over the profile's data_dir: no admin token there.
    elsewhere = cli("status", "--json", "--profile", "local", config_home=home)
    assert elsewhere.rc == 0 and status(elsewhere)["token"] is None


def test_relative_paths_are_taken_from_the_config_file_s_folder(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A real https daemon: the profile's ca_file, relative to config.toml, is what lets
    # the client verify it (run from the repository's root, where no ca.pem is).
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    keys = tmp_path_factory.mktemp("tls")
    issued.private_key_pem.write_to_path(str(keys / "key.pem"))
    for i, blob in enumerate(issued.cert_chain_pems):
        blob.write_to_path(str(keys / "cert.pem"), append=i > 0)
    tls = start(tmp_path_factory.mktemp("tls-daemon"), "on-tls", "--tls-cert",
                str(keys / "cert.pem"), "--tls-key", str(keys / "key.pem"))
    try:
        home = tmp_path / "config"
        path = write_config(home, f"""
default = "tls"

[profiles.tls]
url = "{tls.http}"
ca_file = "certs/ca.pem"
token_file = "../secrets/tls.token"

[profiles.missing]
url = "{tls.http}"
ca_file = "nowhere.pem"
""")
        (path.parent / "certs").mkdir()
        ca.cert_pem.write_to_path(str(path.parent / "certs" / "ca.pem"))
        (home / "secrets").mkdir()
        (home / "secrets" / "tls.token").write_text(tls.admin_token)
        assert tls.http.startswith("https://")
        assert rooms(cli("room", "list", "--json", config_home=home)) == ["on-tls"]
        missing = cli("room", "list", "--profile", "missing", config_home=home)
        assert missing.rc == 2
        assert str(path.parent / "nowhere.pem") in one_error_line(missing)
    finally:
        tls.proc.terminate()
        tls.proc.wait(timeout=15)


# --- a config file that cannot be used -------------------------------------------------------


def _fails(home: Path, *args: str, rc: int = 2, **env: str) -> str:
    """Run ``room list`` (in this process: it stops before connecting), which must fail
    with ``rc``; return its one stderr line."""
    result = run_cli("room", "list", *args, env={"XDG_CONFIG_HOME": str(home), **env})
    assert result.rc == rc, result.err
    assert result.out == ""
    return one_error_line(result)


@pytest.mark.parametrize(("text", "says"), [
    ('default = "a"\n[profiles.a\nurl = "x"\n', "not valid TOML"),
    ('colour = "blue"\n', "unknown key 'colour'"),
    ('[profiles.a]\nurl = "http://127.0.0.1:9"\ntokn = "x"\n', "unknown key 'tokn'"),
    ('[profiles.a]\nurl = 8750\n', "url must be a non-empty string"),
    ('[profiles.a]\nurl = "ftp://example.org"\n', "url: 'ftp://example.org' is not an http"),
    ('[profiles.a]\ninsecure = "yes"\n', "insecure must be true or false"),
    ('[profiles.a]\ntoken = "x"\ntoken_file = "y"\n', "give token or token_file, not both"),
    ('default = "gone"\n[profiles.a]\n', "no default profile 'gone'"),
])
def test_a_config_file_that_cannot_be_used_is_one_line_naming_it_and_exit_2(
        tmp_path: Path, text: str, says: str) -> None:
    path = write_config(tmp_path, text)
    line = _fails(tmp_path, "--profile", "a") if "default" not in says else _fails(tmp_path)
    assert str(path) in line and says in line, line


def test_a_profile_that_is_not_there_is_one_line_listing_those_that_are(
        tmp_path: Path) -> None:
    path = write_config(tmp_path, '[profiles.prod]\nurl = "http://127.0.0.1:9"\n'
                                  '[profiles.dev]\nurl = "http://127.0.0.1:9"\n')
    for line in (_fails(tmp_path, "--profile", "stage"),
                 _fails(tmp_path, ROOMCTL_PROFILE="stage")):
        assert line == f"roomctl: no profile 'stage' in {path} (profiles: dev, prod)"
    nothing = tmp_path / "no-config-here"
    assert _fails(nothing, "--profile", "prod") == (
        f"roomctl: no profile 'prod': {nothing / 'roomctl' / 'config.toml'} does not exist")


def test_with_json_a_config_error_is_one_json_object(tmp_path: Path) -> None:
    path = write_config(tmp_path, "this is not toml\n")
    result = run_cli("room", "list", "--json", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.rc == 2 and result.out == ""
    [line] = result.err.splitlines()
    error = json.loads(line)["error"]
    assert (error["code"], error["exit"]) == ("usage", 2)
    assert str(path) in error["message"]


def test_a_token_file_that_cannot_be_read_exits_4_naming_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[profiles.a]\nurl = "http://127.0.0.1:9"\n'
                                  'token_file = "gone.token"\n')
    line = _fails(tmp_path, "--profile", "a", rc=4)
    assert str(path.parent / "gone.token") in line and "profile 'a'" in line, line
    # status, the command to run when another is refused, reports it (and the rest).
    shown = run_cli("status", "--json", "--profile", "a", "--timeout", "2s",
                    env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert shown.rc == 4, shown.err
    token = json.loads(shown.out)["token"]
    assert (token["source"], token["valid"], token["file"]) == (
        "profile", False, str(path.parent / "gone.token"))
    assert "gone.token" in token["error"]
    human = run_cli("status", "--profile", "a", "--timeout", "2s",
                    env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert human.rc == 4 and "gone.token" in human.out, human.out


def test_no_config_file_and_no_profile_is_no_error(tmp_path: Path) -> None:
    result = run_cli("room", "list", "--url", "http://127.0.0.1:9",
                     env={"XDG_CONFIG_HOME": str(tmp_path / "none")})
    assert result.rc == 4  # no admin token (nothing read, and no usage error)
    assert "no admin token" in one_error_line(result)
