"""The man pages render cleanly and cannot drift from the code they document.

``man/roomctl-protocol.7`` must name every message type, list each type's fields, carry
examples that the real codec decodes, and list every error and close code.
``man/roomctl.1`` must document every option ``roomctl serve --help`` shows and every
``ROOMCTL_*`` variable the CLI reads. Message types, options and variables are discovered
from the code, so adding one without documenting it fails here.

Example convention (see the comment at the top of the protocol page): every ``.EX`` block
is preceded by a comment line ``.\\" example: KIND``. KIND ``request`` and ``event`` are
decoded with ``protocol.Codec``; a dotted Struct name is decoded as that type; ``text`` is
not checked.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import msgspec
import pytest
import typer.main

from protocol import admin, chat, messages
from protocol.codec import Codec, WireFormat
from protocol.errors import CloseCode, ErrorCode
from protocol.messages import Event, Frame, Reply, Request
from roomctl.cli import app
from tests.cli_util import run_cli
from tests.conftest import ROOT, ServeProcess

MAN = ROOT / "man"
CLI_PAGE = MAN / "roomctl.1"
PROTOCOL_PAGE = MAN / "roomctl-protocol.7"
PAGES = (CLI_PAGE, PROTOCOL_PAGE)
RENDER_ENV = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
TIMEOUT = 30.0

MODULES: tuple[ModuleType, ...] = (messages, chat, admin)
BASES = (Frame, Request, Event, Reply)


# --- reading roff ------------------------------------------------------------------------------

_ESCAPES = {
    "\\-": "-", "\\e": "\\", "\\(dq": '"', "\\[dq]": '"', "\\(aq": "'", "\\[aq]": "'",
    "\\&": "", "\\%": "", "\\ ": " ", "\\(em": "\u2014", "\\(en": "\u2013",
    "\\(lq": "\u201c", "\\(rq": "\u201d", "\\(>=": "\u2265",
    "\\fB": "", "\\fI": "", "\\fR": "", "\\fP": "",
}
# Inside examples only these may appear, so that what json.loads sees is what man shows.
_EXAMPLE_ESCAPES = ("\\-", "\\e", "\\(dq", "\\[dq]", "\\(aq", "\\[aq]", "\\&", "\\%")
_ESCAPE_RE = re.compile("|".join(re.escape(e) for e in sorted(_ESCAPES, key=len, reverse=True)))
_ALTERNATING = {".BR", ".RB", ".IR", ".RI", ".BI", ".IB"}


def unescape(text: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], text)


def macro_args(line: str) -> list[str]:
    """The arguments of a roff request line, honouring double quotes."""
    return [a if a.startswith('"') is False else a[1:-1]
            for a in re.findall(r'"[^"]*"|\S+', line)[1:]]


def line_text(line: str) -> str:
    """What a source line prints, roughly: font macros joined, escapes resolved."""
    if line.startswith(".\\\""):
        return ""
    if line.startswith("."):
        name = line.split(" ", 1)[0]
        args = macro_args(line)
        return unescape(("" if name in _ALTERNATING else " ").join(args))
    return unescape(line)


def source(page: pathlib.Path) -> list[str]:
    return page.read_text(encoding="utf-8").splitlines()


def sections(lines: list[str], macro: str) -> dict[str, list[str]]:
    """Split ``lines`` at ``.SH`` or ``.SS`` headings: heading text -> its lines."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith((".SH ", ".SS ")):
            if line.startswith(macro + " "):
                current = found.setdefault(line_text(line).strip(), [])
                continue
            if macro == ".SS" or line.startswith(".SH "):
                current = None
                continue
        if current is not None:
            current.append(line)
    return found


@dataclass
class Item:
    """One ``.TP`` entry: its tag line and body, as text."""

    tag: str
    body: str


def items(lines: list[str]) -> list[Item]:
    found: list[Item] = []
    i = 0
    while i < len(lines):
        if lines[i] == ".TP" and i + 1 < len(lines):
            body: list[str] = []
            j = i + 2
            while j < len(lines) and not lines[j].startswith((".TP", ".PP", ".SS", ".SH")):
                body.append(line_text(lines[j]))
                j += 1
            found.append(Item(line_text(lines[i + 1]).strip(), " ".join(body)))
            i = j
        else:
            i += 1
    return found


@dataclass
class Example:
    kind: str
    text: str
    line: int
    subsection: str | None


def examples(lines: list[str]) -> list[Example]:
    found: list[Example] = []
    subsection: str | None = None
    kind: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(".SS "):
            subsection = line_text(line).strip()
        elif line.startswith(".SH "):
            subsection = None
        marker = re.fullmatch(r'\.\\" example: (\S+)', line)
        if marker:
            kind = marker.group(1)
        elif line == ".EX":
            assert kind is not None, f"line {i + 1}: .EX without a '.\\\" example:' comment"
            start, i = i + 1, i + 1
            while lines[i] != ".EE":
                i += 1
            found.append(Example(kind, "\n".join(lines[start:i]), start + 1, subsection))
            kind = None
        elif not line.startswith(".\\\""):
            kind = None  # the marker must come right before its .EX
        i += 1
    return found


def example_json(text: str) -> Any:
    rest = text
    for escape in _EXAMPLE_ESCAPES:
        rest = rest.replace(escape, "")
    assert "\\" not in rest, f"unexpected roff escape in example: {text!r}"
    return json.loads(_ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], text))


# --- what the code defines -------------------------------------------------------------------


def _defined_here(module: ModuleType) -> list[type]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if obj.__module__ == module.__name__]


def frame_types() -> dict[str, type[Frame]]:
    found: dict[str, type[Frame]] = {}
    for module in MODULES:
        for cls in _defined_here(module):
            if issubclass(cls, Request | Event) and cls not in BASES:
                tag = cls.__struct_config__.tag
                assert isinstance(tag, str)
                found[tag] = cls
    return found


def value_types() -> dict[str, type[msgspec.Struct]]:
    """Structs that appear inside frames (Participant, ChatMessage, ...)."""
    return {cls.__name__: cls for module in MODULES for cls in _defined_here(module)
            if issubclass(cls, msgspec.Struct) and not issubclass(cls, Frame)}


def wire_fields(cls: type[msgspec.Struct]) -> set[str]:
    names = set(cls.__struct_encode_fields__)
    if issubclass(cls, Request | Reply):
        names.discard("ref")  # explained once, under FRAMES
    return names


FRAMES = frame_types()
VALUES = value_types()
CODEC = Codec(WireFormat.JSON, FRAMES.values())


def subset(small: Any, big: Any) -> bool:
    """Whether every key of ``small`` is in ``big`` with the same value (recursively)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and subset(v, big[k])
                                             for k, v in small.items())
    return bool(small == big)


# --- both pages render --------------------------------------------------------------------


def _groff() -> str:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    return groff


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_page_renders_without_warnings(page: pathlib.Path) -> None:
    out = subprocess.run([_groff(), "-man", "-ww", "-z", str(page)], capture_output=True,
                         text=True, env=RENDER_ENV, timeout=TIMEOUT)
    assert out.returncode == 0
    assert out.stderr == ""


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_shows_the_page_without_warnings_in_80_columns(page: pathlib.Path) -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed")
    out = subprocess.run([man, "--warnings", "-l", str(page)], capture_output=True, text=True,
                         env=RENDER_ENV, timeout=TIMEOUT)
    assert out.returncode == 0
    assert out.stderr == ""
    text = re.sub(r".\x08", "", out.stdout)
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert too_wide == []


# --- the protocol page names everything the protocol defines --------------------------------


def test_every_message_type_has_its_own_subsection() -> None:
    headings = sections(source(PROTOCOL_PAGE), ".SS")
    documented_tags = {h for h in headings if h[:1].islower()}
    assert documented_tags == set(FRAMES)


def test_every_message_subsection_lists_exactly_its_fields() -> None:
    headings = sections(source(PROTOCOL_PAGE), ".SS")
    for tag, cls in FRAMES.items():
        listed = {item.tag.split()[0] for item in items(headings[tag])}
        assert listed == wire_fields(cls), tag


def test_every_value_type_has_a_subsection_listing_exactly_its_fields() -> None:
    headings = sections(source(PROTOCOL_PAGE), ".SS")
    assert {h for h in headings if h[:1].isupper()} == set(VALUES)
    for name, cls in VALUES.items():
        listed = {item.tag.split()[0] for item in items(headings[name])}
        # IceCandidate is listed by its wire names (sdpMid), as clients see them.
        assert listed == wire_fields(cls), name


def test_the_ice_candidate_uses_the_browsers_field_names() -> None:
    block = "\n".join(sections(source(PROTOCOL_PAGE), ".SS")["IceCandidate"])
    for name in ("sdpMid", "sdpMLineIndex", "usernameFragment"):
        assert name in unescape(block)
    assert "sdp_mid" not in unescape(block)


def test_frames_explains_the_ref_rule() -> None:
    text = " ".join(line_text(x) for x in sections(source(PROTOCOL_PAGE), ".SH")["FRAMES"])
    assert "exactly one reply" in text
    assert "never gets an ok" in text


def test_error_codes_lists_exactly_the_error_codes() -> None:
    listed = [item.tag for item in items(sections(source(PROTOCOL_PAGE), ".SH")["ERROR CODES"])]
    assert sorted(listed) == sorted(code.value for code in ErrorCode)


def test_close_codes_lists_every_close_code() -> None:
    listed = [item.tag for item in items(sections(source(PROTOCOL_PAGE), ".SH")["CLOSE CODES"])]
    assert set(listed) >= {str(code.value) for code in CloseCode}
    assert listed == sorted(listed, key=int)


# --- the protocol page's examples are real frames --------------------------------------------

EXAMPLES = examples(source(PROTOCOL_PAGE))
CHECKED = [e for e in EXAMPLES if e.kind != "text"]


def test_the_page_has_examples() -> None:
    assert len(CHECKED) >= len(FRAMES) + len(VALUES)


@pytest.mark.parametrize("example", CHECKED, ids=lambda e: f"{e.kind}@{e.line}")
def test_the_example_decodes_with_the_real_codec(example: Example) -> None:
    data = example_json(example.text)
    if example.kind in ("request", "event"):
        frame = CODEC.decode(json.dumps(data).encode())
        encoded = json.loads(CODEC.encode(frame))
        if example.kind == "request":
            assert isinstance(frame, Request)
            # Requests may leave out defaults, but name no field the type lacks.
            assert subset(data, encoded), encoded
        else:
            assert isinstance(frame, Event)
            # Events are shown exactly as the daemon sends them: every field.
            assert data == encoded
        assert example.subsection == frame.__struct_config__.tag
    else:
        module, _, name = example.kind.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        value = msgspec.json.decode(json.dumps(data).encode(), type=cls)
        assert data == json.loads(msgspec.json.encode(value))
        assert example.subsection == name


def test_every_message_type_has_an_example_in_its_subsection() -> None:
    shown = {e.subsection for e in CHECKED if e.kind in ("request", "event")}
    assert shown == set(FRAMES)


def test_a_roff_escape_that_man_would_show_differently_is_refused() -> None:
    # The unescaping the example test relies on must not let escapes through silently.
    assert example_json('{"type": "send\\-message", "text": "a\\e\\eb"}') == {
        "type": "send-message", "text": "a\\b"}
    with pytest.raises(AssertionError):
        example_json('{"text": "\\(cq"}')


# --- roomctl(1) documents the real CLI --------------------------------------------------------


def _help(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "roomctl", *args, "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=TIMEOUT,
                         env={**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def _options_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][a-z-]*)", text))


def _help_options(*command: str) -> set[str]:
    """The options in the Options panel of ``roomctl COMMAND --help``."""
    panel = _help(*command).split("Options", 1)[1].split("Commands", 1)[0]
    return _options_in(panel)


def _cli_items(section: str) -> list[Item]:
    lines = source(CLI_PAGE)
    if section.startswith("roomctl "):
        return items(sections(lines, ".SS")[section])
    return items(sections(lines, ".SH")[section])


def _documented_options(section: str) -> set[str]:
    return {opt for item in _cli_items(section) for opt in _options_in(item.tag)}


def _children(group: Any) -> dict[str, Any]:
    """A group's commands by name (the root group builds each from its module on demand)."""
    return {name: group.get_command(None, name) for name in group.list_commands(None)}


SERVE = _children(typer.main.get_command(app))["serve"]


def test_the_help_parser_sees_every_option_typer_defines() -> None:
    defined = {o for p in SERVE.params for o in (*p.opts, *p.secondary_opts)}
    assert defined <= _help_options("serve")


def test_every_serve_option_is_documented_under_its_command() -> None:
    shown = _help_options("serve")
    assert "--port" in shown  # the parser found the options at all
    assert shown <= _documented_options("roomctl serve [options]")


def test_every_global_option_is_documented() -> None:
    shown = _help_options()
    assert "--version" in shown
    assert shown <= _documented_options("GLOBAL OPTIONS")


def test_each_serve_option_names_its_variable_and_default() -> None:
    by_option = {opt: item for item in _cli_items("roomctl serve [options]")
                 for opt in _options_in(item.tag)}
    for param in SERVE.params:
        if not param.opts[0].startswith("--"):
            continue
        body = by_option[param.opts[0]].body
        if param.envvar is None:
            # Actions that print and exit take no variable: set in a service's
            # environment, one would stop every start.
            assert param.opts[0] in ("--print-config", "--print-systemd-unit"), param.name
            continue
        assert f"Environment: {param.envvar}." in body, param.name
        if param.default is not None and not isinstance(param.default, bool):
            default = (f"{param.default:g}" if isinstance(param.default, float)
                       else str(param.default))
            assert f"Default: {default}" in body, param.name


def _commands(group: Any = None, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf command of the CLI by its path: ("room", "create") -> click command."""
    group = group if group is not None else typer.main.get_command(app)
    found: dict[tuple[str, ...], Any] = {}
    for name, command in (_children(group) if hasattr(group, "list_commands") else {}).items():
        if hasattr(command, "list_commands"):
            found.update(_commands(command, (*path, name)))
        else:
            found[(*path, name)] = command
    return found


COMMANDS = _commands()
CLIENT_COMMANDS = {path: cmd for path, cmd in COMMANDS.items() if path != ("serve",)}


def _command_section(path: tuple[str, ...]) -> list[str]:
    """The lines of the .SS whose heading starts with ``roomctl PATH``."""
    heading = "roomctl " + " ".join(path)
    matches = [lines for title, lines in sections(source(CLI_PAGE), ".SS").items()
               if title == heading or title.startswith(heading + " ")]
    assert len(matches) == 1, f"roomctl.1 needs exactly one .SS for {heading!r}"
    return matches[0]


def test_the_cli_has_the_commands_the_issue_names() -> None:
    assert {("room", "create"), ("room", "list"), ("room", "show"), ("room", "delete"),
            ("room", "topic"), ("room", "pin"), ("room", "unpin"), ("who",), ("post",),
            ("tail",), ("wait",), ("kick",), ("serve",)} <= COMMANDS.keys()


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_has_its_own_subsection(path: tuple[str, ...]) -> None:
    assert _command_section(path)


@pytest.mark.parametrize("path", sorted(CLIENT_COMMANDS), ids=" ".join)
def test_every_option_of_a_client_command_is_documented(path: tuple[str, ...]) -> None:
    from roomctl.options import _GLOBAL_NAMES

    command = CLIENT_COMMANDS[path]
    # Option rows of the help: "  -f, --follow / --no-follow  help", "  --name NAME  help".
    sections = _help(*path).split("\nOptions:\n", 1)[1]  # not the description above
    rows = [line for line in sections.splitlines() if line.startswith("  -")]
    shown = {token.rstrip(",") for row in rows
             for token in itertools.takewhile(lambda t: t.startswith("-") or t == "/",
                                              row.split())
             if token != "/"}
    defined = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    assert {o for o in defined if o.startswith("-")} <= shown  # the parser sees them all
    connection = {o for p in command.params if p.name in _GLOBAL_NAMES
                  for o in (*p.opts, *p.secondary_opts)}
    own_section = {opt for item in items(_command_section(path))
                   for opt in _options_in(item.tag)}
    assert shown - connection - {"-h", "--help"} <= own_section
    assert connection | {"--help"} <= _documented_options("CONNECTION OPTIONS")


def test_every_environment_variable_of_the_cli_is_documented() -> None:
    cli_source = "\n".join(path.read_text() for path in (ROOT / "roomctl").rglob("*.py"))
    variables = set(re.findall(r"\bROOMCTL_[A-Z][A-Z_]*", cli_source))
    # Options made at run time (serve's, from daemon.Config) name theirs in the command tree.
    for command in _commands().values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            variables.update([envvar] if isinstance(envvar, str) else envvar or [])
    assert "ROOMCTL_MAX_BAD_FRAMES" in variables and "ROOMCTL_URL" in variables
    documented = {item.tag for item in _cli_items("ENVIRONMENT")}
    assert variables <= documented


# --- the help itself reads well ---------------------------------------------------------------

GROUPS = [(), ("room",), ("token",)]


def _help_in_a_pipe(*path: str) -> str:
    """``roomctl PATH --help`` as a script or ``| less`` gets it: 80 columns, no terminal.

    In process (``tests/cli_util``); ``test_help_in_a_real_pipe_is_the_same`` checks that
    a subprocess writing to a real pipe prints the same text.
    """
    result = run_cli(*path, "--help", env={"COLUMNS": "80"})
    assert result.rc == 0, result.err
    return result.out


@pytest.mark.parametrize("path", [("serve",), ("join",)], ids=" ".join)
def test_help_in_a_real_pipe_reads_whole(path: tuple[str, ...]) -> None:
    out = subprocess.run([sys.executable, "-m", "roomctl", *path, "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
                         env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    _check_help_reads_whole(path, out.stdout)


def _group(path: tuple[str, ...]) -> Any:
    group = typer.main.get_command(app)
    for name in path:
        group = _children(group)[name]
    return group


@pytest.mark.parametrize("path", sorted(COMMANDS) + GROUPS, ids=lambda p: " ".join(p) or "roomctl")
def test_help_reads_whole_at_80_columns_in_a_pipe(path: tuple[str, ...]) -> None:
    _check_help_reads_whole(path, _help_in_a_pipe(*path))


def _check_help_reads_whole(path: tuple[str, ...], text: str) -> None:
    command = COMMANDS.get(path) or _group(path)
    for param in command.params:
        for option in (*param.opts, *param.secondary_opts):
            if option.startswith("-"):  # shown whole: not cut to "--max-participan…"
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
    assert "…" not in text
    assert not re.search(r"<(bool|str|int|float|path|file)[^>]*>", text)  # no type placeholders
    assert all(len(line) <= 80 for line in text.splitlines()), text
    usage = text.splitlines()[0]
    assert usage.startswith(f"Usage: roomctl {' '.join(path)}".rstrip())
    assert not re.search(r"[{}]|\[\[|\]\.\.\.\]", usage), usage  # ROOM [TEXT]..., as in roomctl(1)
    assert not re.search(r" [.,;?]|[?;]{2}|\?;", text), text  # no stray punctuation


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(p) or "roomctl")
def test_a_group_without_a_command_shows_its_help_as_a_usage_error(
        path: tuple[str, ...]) -> None:
    out = run_cli(*path, env={"COLUMNS": "80"})
    assert out.rc == 2 and out.out == ""
    assert out.err.startswith(f"Usage: roomctl {' '.join(path)}".rstrip()), out.err
    assert "\nCommands:\n" in out.err


def test_help_keeps_the_grouping_of_options() -> None:
    text = _help_in_a_pipe("join")
    headings = [line for line in text.splitlines() if line.endswith(":") and line[0] != " "]
    assert headings == ["Arguments:", "Options:", "Media options:", "Network (ICE) options:",
                        "Connection options:"]


# --- behaviour the pages promise -------------------------------------------------------------


def test_serve_help_shows_the_default_data_directory_like_the_man_page() -> None:
    assert "XDG_STATE_HOME" in _help("serve")


def test_the_daemon_makes_an_admin_token_when_the_file_is_empty(
        serve_process: Any, tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "admin-token").write_text("")
    sp: ServeProcess = serve_process("--memory", data_dir=data_dir)
    assert (sp.data_dir / "admin-token").read_text().strip()
