"""roomctl-http(7) cannot drift from the HTTP API it documents.

Every endpoint of ``daemon.net.httpapi.ENDPOINTS`` must have its own subsection with a curl
example of that method and path; every curl example on the page must name an endpoint the
daemon serves; ERRORS must give each error code the HTTP status the API really answers it
with (asked of ``ApiError.of``, the one place that maps codes to statuses); and the page
must render without warnings. The endpoints, codes and statuses are read from the code, so
adding an endpoint or changing a status without the page fails here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from daemon.net.httpapi import ENDPOINTS, ApiError, Endpoint
from protocol import http as api
from protocol.errors import ErrorCode
from tests.test_man import MAN, RENDER_ENV, TIMEOUT, examples, items, sections, source, unescape

PAGE = MAN / "roomctl-http.7"
LINES = source(PAGE)

# Paths the server answers itself, beside the API's table (daemon/server.py).
SERVER_ENDPOINTS = {("GET", "/v1/rooms/{room}/access"), ("GET", "/healthz"),
                    ("GET", "/metrics")}

# curl options that take a value (the ones the page may use).
_VALUED = {"-H", "--header", "-d", "--data", "--data-binary", "--data-raw",
           "--data-urlencode", "--json", "-X", "--request", "-o", "--output", "-w",
           "--write-out", "-m", "--max-time", "--retry", "--oauth2-bearer", "-u", "--user",
           "-F", "--form", "--connect-timeout"}
_BODY = {"-d", "--data", "--data-binary", "--data-raw", "--data-urlencode", "--json", "-F",
         "--form"}


@dataclass(frozen=True)
class CurlCall:
    """What one curl command of an example asks: its method and its URL's path."""

    method: str
    path: str
    line: int
    subsection: str | None


def _commands(text: str) -> list[str]:
    """The shell commands of an example: lines after "$ ", joined over trailing \\ or |."""
    commands: list[str] = []
    current: str | None = None
    for line in text.splitlines():
        if current is None and not line.startswith("$ "):
            continue  # an answer
        part = line[2:] if current is None else line
        current = part if current is None else f"{current} {part}"
        if current.endswith("\\"):
            current = current[:-1]
        elif not current.endswith("|"):
            commands.append(current)
            current = None
    assert current is None, f"an unfinished command: {current!r}"
    return commands


def parse_curl(command: str) -> tuple[str, str] | None:
    """Return the method and URL path of the curl in ``command`` (None: no curl)."""
    words = shlex.split(command)
    if "curl" not in words:
        return None
    args = words[words.index("curl") + 1:]
    if "|" in args:
        args = args[:args.index("|")]
    method: str | None = None
    has_body = False
    urls: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUED:
            value = args[i + 1]
            if arg in ("-X", "--request"):
                method = value
            has_body = has_body or arg in _BODY
            i += 2
            continue
        if arg in ("-I", "--head"):
            method = "HEAD"
        elif not arg.startswith("-"):
            urls.append(arg)
        i += 1
    assert len(urls) == 1, f"one URL per curl: {command!r}"
    return method or ("POST" if has_body else "GET"), urlsplit(urls[0]).path


def curl_calls() -> list[CurlCall]:
    found: list[CurlCall] = []
    for example in examples(LINES):
        if example.kind != "curl":
            continue
        text = unescape(example.text.replace("\\(ti", "~"))
        calls = [c for c in map(parse_curl, _commands(text)) if c is not None]
        assert calls, f"line {example.line}: a curl example without a curl"
        found += [CurlCall(method, path, example.line, example.subsection)
                  for method, path in calls]
    return found


def _template(path: str) -> re.Pattern[str]:
    """A path template ("/v1/rooms/{room}") as a regex for concrete paths."""
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$")


def served_by(call: CurlCall) -> tuple[str, str] | None:
    """The endpoint (method, path template) a call reaches; None if none does."""
    method = "GET" if call.method == "HEAD" else call.method
    known = {(e.method, e.path) for e in ENDPOINTS} | SERVER_ENDPOINTS
    matches = [(m, p) for m, p in known if m == method and _template(p).match(call.path)]
    # A placeholder never spans a "/", so at most one template fits a path.
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


CALLS = curl_calls()


# --- the page names every endpoint, each with a working-looking curl ---------------------------


def test_the_page_has_curl_examples_and_the_parser_reads_them() -> None:
    assert len(CALLS) >= len(ENDPOINTS)
    assert parse_curl('curl -X PATCH -H "A: b" --json \'{"a": 1}\' http://h:1/v1/x?y=1') == (
        "PATCH", "/v1/x")
    assert parse_curl("printf 'a' | curl -d @- http://h:1/v1/y | head") == ("POST", "/v1/y")
    assert parse_curl("curl -N -H 'Last-Event-ID: 4' http://h:1/v1/z") == ("GET", "/v1/z")


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_every_endpoint_has_a_subsection_with_its_curl_example(endpoint: Endpoint) -> None:
    method, path = endpoint.method, endpoint.path
    heading = f"{method} {path}"
    subsections = sections(LINES, ".SS")
    assert heading in subsections, f"roomctl-http.7 needs a .SS {heading!r} under ENDPOINTS"
    shown = [c for c in CALLS if c.subsection == heading]
    assert any(served_by(c) == (method, path) for c in shown), (
        f"no curl example of {heading} in its subsection: {shown}")


def test_every_curl_example_reaches_an_endpoint_the_daemon_serves() -> None:
    unknown = [c for c in CALLS if served_by(c) is None]
    assert unknown == []


def test_every_endpoint_subsection_is_an_endpoint() -> None:
    endpoint_like = {h for h in sections(LINES, ".SS") if h.split(" ", 1)[0].isupper()}
    known = {f"{m} {p}" for m, p in {(e.method, e.path) for e in ENDPOINTS} | SERVER_ENDPOINTS}
    assert endpoint_like <= known


# --- ERRORS: each code with the status the API answers it with ---------------------------


def documented_statuses() -> dict[str, list[int]]:
    """ERRORS' items tagged "STATUS code": code -> the statuses given for it."""
    found: dict[str, list[int]] = {}
    for item in items(sections(LINES, ".SH")["ERRORS"]):
        tagged = re.fullmatch(r"(\d{3}) (\S+)", item.tag)
        if tagged:
            found.setdefault(tagged.group(2), []).append(int(tagged.group(1)))
    return found


def test_errors_gives_each_mapped_code_the_status_the_api_answers() -> None:
    mapped = {code: ApiError.of(code, "x").status for code in ErrorCode
              if code in api.HTTP_STATUS}
    assert len(mapped) >= 8  # the mapping was found at all
    documented = documented_statuses()
    assert {code: documented.get(code.value) for code in mapped} == {
        code: [status] for code, status in mapped.items()}


def test_errors_lists_only_real_codes() -> None:
    assert set(documented_statuses()) <= {code.value for code in ErrorCode}


def test_the_error_body_shown_is_the_api_s() -> None:
    import msgspec

    body = next(e for e in examples(sections(LINES, ".SH")["ERRORS"]) if e.kind == "text")
    decoded = msgspec.json.decode(unescape(body.text).encode(), type=api.ErrorBody)
    assert decoded.error.code in ErrorCode


# --- it renders -------------------------------------------------------------------------------


def test_the_page_renders_without_groff_warnings() -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed: the page cannot be rendered here")
    out = subprocess.run([groff, "-man", "-ww", "-z", str(PAGE)], capture_output=True,
                         text=True, env=RENDER_ENV, timeout=TIMEOUT)
    assert (out.returncode, out.stderr) == (0, "")


def test_man_shows_the_page_without_warnings_in_80_columns() -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed: the page cannot be rendered here")
    out = subprocess.run([man, "--warnings", "-l", str(PAGE)], capture_output=True, text=True,
                         env=RENDER_ENV, timeout=TIMEOUT)
    assert (out.returncode, out.stderr) == (0, "")
    text = re.sub(r".\x08", "", out.stdout)
    assert "EVENTS" in text
    assert [line for line in text.splitlines() if len(line) > 80] == []
