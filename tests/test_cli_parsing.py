"""The CLI's arguments, usage errors and exit codes, in process (no daemon is needed).

Each case runs the real entry point (``tests/cli_util.run_cli``) with ``--url`` pointing
where nothing listens: exit 2 with one line in words shows the command stopped at its
arguments, since a command that tried to connect would exit 5.
"""

from __future__ import annotations

import pytest

from tests.cli_util import NOWHERE, one_error_line, run_cli

USAGE_ERRORS = [
    ["room", "create"],
    ["post"],
    ["tail", "ops", "-n", "-1"],
    ["nope"],
    ["room", "list", "--url", "ftp://x"],
    ["room", "list", "--timeout", "soon"],
    ["wait", "ops", "-p", "0"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=" ".join)
def test_exit_2_for_usage_errors(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.rc == 2, result
    one_error_line(result)


def test_a_bad_url_in_the_environment_is_a_usage_error_naming_the_variable() -> None:
    result = run_cli("room", "list", env={"ROOMCTL_URL": "not a url"})
    assert result.rc == 2 and "ROOMCTL_URL" in one_error_line(result)


LONG_TOPIC, LONG_NAME = "t" * 513, "n" * 65
FORBIDDEN_VALUES = {  # the command line -> the rule the one-line error must state
    ("room", "create", "bad name!"): "1-64 letters, digits",
    ("post", "bad/name", "hi"): "1-64 letters, digits",
    ("who", "a b"): "1-64 letters, digits",
    ("token", "create", "-r", "ops", "-i", "x", "--ttl", "400d"): "at most 366 days",
    ("token", "create", "-r", "ops", "-i", "i" * 129): "1 to 128 characters",
    ("room", "create", "t1", "--topic", LONG_TOPIC): "at most 512 characters",
    ("room", "topic", "ops", LONG_TOPIC): "at most 512 characters",
    ("room", "create", "t2", "--max-participants", "20000"): "1 to 10000",
    ("room", "create", "t3", "--max-participants", "0"): "1 to 10000",
    ("post", "ops", "hi", "--name", LONG_NAME): "1 to 64 characters",
    ("room", "create", "t4", "--public", "--private"): "exclude each other",
}


@pytest.mark.parametrize("args", sorted(FORBIDDEN_VALUES), ids=lambda a: " ".join(a)[:40])
def test_values_the_protocol_forbids_are_usage_errors_in_words(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    line = one_error_line(result)
    assert result.rc == 2 and FORBIDDEN_VALUES[args] in line, (args, line)
    assert "Expected" not in line and "regex" not in line, line


SERVE_REFUSALS = {  # serve's options are checked by daemon.Config: the rule in words
    ("--port", "70000"): "--port: must be 0 to 65535",
    ("--max-text", "5000"): "--max-text: must be 1 to 4000",
    ("--ping-timeout", "0"): "--ping-timeout: must be more than 0",
    ("--allowed-origin", "ftp://x"): "--allowed-origin",
    ("--tls-cert", "/nonexistent.pem"): "a TLS certificate and key go together",
    ("--log-level", "loud"): "--log-level",
    ("--redis", "redis://127.0.0.1:1"): "give one of --memory and --redis, not both",
    ("--redis-durability", "lax"): "--redis-durability: must be strict or relaxed",
    ("--redis-lease", "0"): "--redis-lease: must be 0.5 to 60",
    ("--node-id", "a b"): "--node-id: 1-64 letters",
}


@pytest.mark.parametrize("args", sorted(SERVE_REFUSALS), ids=" ".join)
def test_serve_refuses_values_config_refuses_before_starting(args: tuple[str, ...]) -> None:
    result = run_cli("serve", "--memory", *args)
    line = one_error_line(result)
    assert result.rc == 2 and SERVE_REFUSALS[args] in line, line
    assert result.out == ""  # never got to "listening on"


def test_serve_refuses_a_redis_url_of_another_scheme_without_echoing_it() -> None:
    result = run_cli("serve", "--redis", "http://user:hunter2@example.org")
    line = one_error_line(result)
    assert result.rc == 2 and "use redis://HOST:PORT/DB" in line, line
    assert "hunter2" not in result.out + result.err


def test_serve_takes_its_defaults_from_config() -> None:
    from daemon.config import Config, settings
    from roomctl.serve import option_name

    help_text = run_cli("serve", "--help").out
    config = Config()
    for item, setting in settings():
        option = option_name(item.name, setting)
        assert option in help_text, option
        value = getattr(config, item.name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert f"default: {value}" in " ".join(help_text.split()), option


def test_the_url_nowhere_is_unreachable_for_real() -> None:
    # The premise of this file: the same command with valid values tries to connect, and
    # finds nothing at NOWHERE (exit 5).
    result = run_cli("who", "ops", "--timeout", "2s")
    assert result.rc == 5, result
    assert NOWHERE.rpartition(":")[2] in one_error_line(result)
