"""``GET /metrics`` is valid Prometheus text, and man/roomctl.1 lists every metric it shows.

The exposition is parsed with prometheus_client's own text parser (the ``test`` extra
installs it for this alone): what Prometheus would scrape is what is checked. The daemon
is real, on a real port, and the traffic that moves the counters is real.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, WAIT, Server

MAN_PAGE = ROOT / "man" / "roomctl.1"
# A metric's entry in the METRICS section: .BR roomctl_name " (type)"
MAN_ENTRY = re.compile(r'^\.BR (roomctl_[a-z_]+) " \((counter|gauge)\)"$', re.M)


def _get(server: Server, path: str) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("content-type") or "", response.read().decode()
    finally:
        connection.close()


async def scrape(server: Server) -> tuple[str, str]:
    """Return the content type and the text of one real scrape of ``/metrics``."""
    with trio.fail_after(WAIT):
        status, content_type, text = await trio.to_thread.run_sync(_get, server, "/metrics")
    assert status == 200
    return content_type, text


def families(text: str) -> dict[str, Any]:
    """Parse the exposition; key each family by the name its samples carry in the text."""
    found = {}
    for family in text_string_to_metric_families(text):
        [sample] = family.samples  # one unlabelled sample per metric, so far
        found[sample.name] = family
    return found


def documented() -> dict[str, str]:
    """Every metric the METRICS section of the man page lists, with its type."""
    page = MAN_PAGE.read_text()
    section = page[page.index(".SH METRICS"):]
    section = section[:section.index("\n.SH ", 1)]
    return dict(MAN_ENTRY.findall(section))


async def test_the_exposition_is_prometheus_text_with_help_and_type_for_every_metric(
        server: Server, connect: Callable[..., Any]) -> None:
    async with connect("lobby") as alice:
        await alice.hello("alice")
        await alice.request({"type": "send-message", "text": "counted"})
        await alice.send_raw("not json")  # a bad frame, answered with an error
        await alice.recv_type("error")
        content_type, text = await scrape(server)

    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    # Every family is preceded by its own HELP and TYPE lines, in that order.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            name = line.split()[0]
            assert lines[i - 2].startswith(f"# HELP {name} "), name
            assert re.fullmatch(f"# TYPE {name} (counter|gauge)", lines[i - 1]), name
    parsed = families(text)
    assert parsed, text
    for name, family in parsed.items():
        assert name.startswith("roomctl_"), name
        assert family.documentation.strip(), name
        assert family.type in ("counter", "gauge"), name
        if family.type == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        # Base units: a time is in seconds, never ms, minutes or hours.
        assert not re.search(r"_(ms|milliseconds|microseconds|minutes|hours|days)(_|$)",
                             name), name
    value = {name: family.samples[0].value for name, family in parsed.items()}
    assert value["roomctl_connections"] == 1
    assert value["roomctl_rooms"] == 1
    assert value["roomctl_sessions"] == 1
    assert value["roomctl_connections_accepted_total"] == 1
    assert value["roomctl_frames_received_total"] == 3  # hello, send-message, the bad one
    assert value["roomctl_bad_frames_total"] == 1
    assert value["roomctl_rooms_created_total"] == 1
    # A Unix time, from moments ago (the fixture started the daemon for this test).
    assert time.time() - 600 < value["roomctl_start_time_seconds"] <= time.time()


async def test_counters_only_grow_between_scrapes(server: Server,
                                                  connect: Callable[..., Any]) -> None:
    _, before = await scrape(server)
    async with connect("lobby") as alice:
        await alice.hello("alice")
    _, after = await scrape(server)

    first, second = families(before), families(after)
    for name, family in second.items():
        if family.type == "counter":
            assert family.samples[0].value >= first[name].samples[0].value, name
    assert second["roomctl_connections_accepted_total"].samples[0].value == \
        first["roomctl_connections_accepted_total"].samples[0].value + 1


async def test_the_man_page_lists_every_metric_with_its_type(server: Server) -> None:
    _, text = await scrape(server)
    shown = {name: family.type for name, family in families(text).items()}

    assert documented() == shown
