"""``roomctl serve --config FILE``: precedence, refusals, and ``--print-config``.

Parsing and precedence run the real entry point in process (``tests/cli_util``) with
``--print-config``, which prints the effective configuration and exits without serving;
one test starts a real daemon from a file.
"""

from __future__ import annotations

import json
import pathlib
import tomllib
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from daemon.config import Setting
from daemon.configfile import Key, dump
from tests.cli_util import one_error_line, run_cli
from tests.conftest import ServeProcess


def write(tmp_path: pathlib.Path, text: str, name: str = "roomctl.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def effective(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The configuration ``roomctl serve ARGS --print-config`` prints, parsed as TOML."""
    result = run_cli("serve", *args, "--print-config", env=env)
    assert result.rc == 0, result.err
    assert result.err == ""
    return tomllib.loads(result.out)


def test_an_option_beats_a_variable_beats_the_file_beats_the_default(
        tmp_path: pathlib.Path) -> None:
    config = write(tmp_path, 'port = 1111\nmax_text = 2000\ngrace = 5.0\nlog_format = "json"\n'
                             'allowed_origins = ["https://chat.example.org"]\n')
    values = effective("--config", str(config), "--max-text", "3000", "--grace", "7",
                       env={"ROOMCTL_PORT": "2222", "ROOMCTL_GRACE": "9"})

    assert values["max_text"] == 3000  # option over file
    assert values["grace"] == 7.0  # option over variable over file
    assert values["port"] == 2222  # variable over file
    assert values["log_format"] == "json"  # file over default
    assert values["allowed_origins"] == ["https://chat.example.org"]
    assert values["max_name"] == 64  # nobody said: the default


def test_the_file_can_come_from_roomctl_config_and_relative_paths_are_from_its_directory(
        tmp_path: pathlib.Path) -> None:
    (tmp_path / "etc").mkdir()
    config = write(tmp_path / "etc", 'data_dir = "state"\ntls_cert = "/srv/cert.pem"\n'
                                     'tls_key = "key.pem"\n')
    values = effective(env={"ROOMCTL_CONFIG": str(config)})

    assert values["data_dir"] == str(tmp_path / "etc" / "state")
    assert values["tls_cert"] == "/srv/cert.pem"
    assert values["tls_key"] == str(tmp_path / "etc" / "key.pem")


def test_print_config_is_a_file_that_gives_the_same_configuration(
        tmp_path: pathlib.Path) -> None:
    first = run_cli("serve", "--port", "9000", "--empty-timeout", "inf", "--allowed-origin",
                    "https://a.example.org", "--log-level", "WARNING", "--print-config")
    assert first.rc == 0, first.err
    config = write(tmp_path, first.out)
    again = run_cli("serve", "--config", str(config), "--print-config")

    assert again.out == first.out
    values = tomllib.loads(first.out)
    assert values["empty_timeout"] == float("inf") and values["log_level"] == "warning"
    # Every key has its help text above it, and a setting with no value is commented out.
    assert "# Address to listen on.\nhost = " in first.out
    assert '\n# tls_cert = "FILE"\n' in first.out


def test_a_secret_is_masked_in_the_printed_configuration() -> None:
    keys = {"password": Key("password", str, Setting(help="A secret.", secret=True)),
            "name": Key("name", str, Setting(help="Not a secret."))}
    text = dump({"password": "hunter2", "name": "node-1"}, keys)

    assert "hunter2" not in text
    assert '# password = "********"' in text
    assert 'name = "node-1"' in text


REFUSALS = [
    # (file text, key named, the rule in words)
    ("prot = 80\n", "prot", "unknown key; did you mean port?"),
    ("max-text = 80\n", "max-text", "unknown key; keys are spelled with '_': max_text"),
    ("[server]\nport = 80\n", "server", "unknown key"),
    ('port = "8750"\n', "port", "must be a whole number"),
    ("port = 8750.5\n", "port", "must be a whole number"),
    ("memory = 1\n", "memory", "must be true or false"),
    ('grace = "60"\n', "grace", "must be a number"),
    ("host = 127\n", "host", "must be a string"),
    ("data_dir = 1\n", "data_dir", "must be a path, as a string"),
    ('allowed_origins = "https://a.example.org"\n', "allowed_origins",
     'must be a list of strings, like ["a", "b"]'),
    ("port = 70000\n", "port", "must be 0 to 65535"),
    ("grace = -1\n", "grace", "must be 0 or more"),
    ("handshake_timeout = 0\n", "handshake_timeout", "must be more than 0"),
    ('log_level = "loud"\n', "log_level", "must be one of debug, info, warning, error"),
    ('log_format = "xml"\n', "log_format", "must be one of auto, text, json"),
    ('allowed_origins = ["ftp://x"]\n', "allowed_origins", "is not an http or https origin"),
    ('tls_cert = "/srv/cert.pem"\n', "tls_cert", "a TLS certificate and key go together"),
]


@pytest.mark.parametrize(("text", "key", "rule"), REFUSALS, ids=[r[1] + ":" + r[2][:20]
                                                                  for r in REFUSALS])
def test_a_bad_key_is_refused_at_start_in_one_line_naming_the_file_key_and_rule(
        tmp_path: pathlib.Path, text: str, key: str, rule: str) -> None:
    config = write(tmp_path, text)
    result = run_cli("serve", "--config", str(config))

    assert result.rc == 2
    line = one_error_line(result)
    assert line.startswith(f"roomctl: config file {config}: {key}: "), line
    assert rule in line, line


def test_the_file_and_the_option_state_the_same_rule(tmp_path: pathlib.Path) -> None:
    by_option = one_error_line(run_cli("serve", "--max-frame-bytes", "10"))
    by_file = one_error_line(run_cli("serve", "--config",
                                     str(write(tmp_path, "max_frame_bytes = 10\n"))))

    rule = "must be 1024 to 65536"
    assert by_option.endswith(f"--max-frame-bytes: {rule}; see 'roomctl serve --help'")
    assert by_file.endswith(f"max_frame_bytes: {rule}")


@pytest.mark.parametrize(("text", "problem"), [
    (None, "cannot read it: No such file or directory"),
    ("port = \n", "not valid TOML: Invalid value (at line 1, column 8)"),
    (b"port = 1 # \xff\n", "not UTF-8 text"),
])
def test_a_file_that_cannot_be_read_is_one_line(tmp_path: pathlib.Path, text: str | bytes | None,
                                                problem: str) -> None:
    config = tmp_path / "roomctl.toml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    elif text is not None:
        config.write_text(text)
    result = run_cli("serve", "--config", str(config))

    assert result.rc == 2
    assert one_error_line(result) == f"roomctl: config file {config}: {problem}"


def test_every_key_of_the_file_is_checked_even_where_an_option_wins(tmp_path: pathlib.Path) -> None:
    # The file's value is checked (a typo must not hide behind a flag for ever) ...
    config = write(tmp_path, "port = 70000\n")
    assert run_cli("serve", "--config", str(config), "--port", "1", "--print-config").rc == 2
    # ... but the values of the file that are used are the ones checked together.
    config = write(tmp_path, 'tls_cert = "/srv/cert.pem"\n')
    values = effective("--config", str(config), "--tls-key", "/srv/key.pem")
    assert (values["tls_cert"], values["tls_key"]) == ("/srv/cert.pem", "/srv/key.pem")


def test_print_config_refuses_to_be_combined_with_another_action() -> None:
    result = run_cli("serve", "--print-config", "--print-systemd-unit")
    assert result.rc == 2
    assert "give one of them" in one_error_line(result)


def test_a_daemon_runs_with_the_settings_of_its_file(
        serve_process: Callable[..., ServeProcess], tmp_path: pathlib.Path) -> None:
    config = write(tmp_path, 'memory = true\nlog_format = "text"\nlog_level = "info"\n')
    sp = serve_process("--config", str(config))
    # --memory from the file: no database in the data directory.
    with urllib.request.urlopen(sp.http + "/healthz", timeout=10) as response:
        assert json.load(response)["status"] == "ok"
    assert not (sp.data_dir / "roomctl.db").exists()
    sp.proc.terminate()
    assert sp.proc.wait(timeout=10) == 0
    assert sp.proc.stderr is not None
    log = sp.proc.stderr.read()
    assert " INFO daemon.server: listening on 127.0.0.1:" in log  # text, from the file
    assert "rooms in memory" in log


def test_the_man_pages_full_example_is_a_file_the_daemon_takes(tmp_path: pathlib.Path) -> None:
    from roomctl.serve import file_keys
    from tests.test_man import CLI_PAGE, unescape

    page = CLI_PAGE.read_text()
    start = page.index('.\\" the example config file')
    block = page[page.index(".EX\n", start) + 4:page.index("\n.EE", start)]
    text = unescape(block)
    config = write(tmp_path, text)
    values = effective("--config", str(config))

    # Every key is in it: set, or (a setting without a value) shown commented out.
    for key in file_keys():
        assert f"\n{key} = " in "\n" + text or f"\n# {key} = " in text, key
    assert values["allowed_origins"] == ["https://chat.example.org"]
    assert values["max_connections_per_address"] == 0
