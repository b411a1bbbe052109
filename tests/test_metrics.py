"""``GET /metrics`` is valid Prometheus text, and man/roomctl.1 lists every metric it shows.

The exposition is parsed with prometheus_client's own text parser (the ``test`` extra
installs it for this alone): what Prometheus would scrape is what is checked. The daemon
is real, on a real port, and the traffic that moves the counters is real.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

import daemon
from tests.conftest import ROOT, WAIT, Server

MAN_PAGE = ROOT / "man" / "roomctl.1"
# A metric's entry in the METRICS section: .BR roomctl_name " (type)"
MAN_ENTRY = re.compile(r'^\.BR ([a-z_]+) " \((counter|gauge|histogram|info)\)"$', re.M)
OURS = "roomctl_"
# prometheus_client's own collectors: the process (CPU, memory, descriptors) and Python.
THEIRS = ("process_", "python_")


def _get(server: Server, path: str, accept: str | None = None) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        connection.request("GET", path, headers={"Accept": accept} if accept else {})
        response = connection.getresponse()
        return response.status, response.getheader("content-type") or "", response.read().decode()
    finally:
        connection.close()


async def scrape(server: Server, accept: str | None = None) -> tuple[str, str]:
    """Return the content type and the text of one real scrape of ``/metrics``."""
    with trio.fail_after(WAIT):
        status, content_type, text = await trio.to_thread.run_sync(_get, server, "/metrics",
                                                                   accept)
    assert status == 200
    return content_type, text


def families(text: str) -> dict[str, Any]:
    """Parse the exposition; key each family by the name it is documented under.

    That is the name its samples carry: ``_total`` included for a counter; a histogram's
    own name (its samples add ``_bucket``, ``_sum`` and ``_count``).
    """
    found = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = family
    return found


def value(family: Any, suffix: str = "", **labels: str) -> float:
    """The value of the one sample of ``family`` named with ``suffix`` and ``labels``."""
    [sample] = [s for s in family.samples if s.name == family.name + suffix
                and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(sample.value)


def counter(parsed: dict[str, Any], name: str) -> float:
    return value(parsed[name], "_total")


def observations(parsed: dict[str, Any], name: str) -> float:
    """How many observations histogram ``name`` holds."""
    return value(parsed[name], "_count")


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
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert re.fullmatch(f"# TYPE {name} (counter|gauge|histogram|info)", lines[i + 1])
            assert lines[i + 2].startswith(name), name  # then its samples
    parsed = families(text)
    assert parsed, text
    for name, family in parsed.items():
        assert name.startswith((OURS, *THEIRS)), name
        assert family.documentation.strip(), name
        assert family.type in ("counter", "gauge", "histogram"), name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), name
        else:
            assert not name.endswith("_total"), name
        # Base units: a time is in seconds, never ms, minutes or hours.
        assert not re.search(r"_(ms|milliseconds|microseconds|minutes|hours|days)(_|$)",
                             name), name
    gauge = {name: family.samples[0].value for name, family in parsed.items()
             if family.type == "gauge" and len(family.samples) == 1}
    assert value(parsed["roomctl_connections"], kind="room") == 1
    assert value(parsed["roomctl_connections"], kind="admin") == 0
    assert gauge["roomctl_rooms"] == 1
    assert gauge["roomctl_participants"] == 1
    assert gauge["roomctl_sessions"] == 1
    assert counter(parsed, "roomctl_connections_accepted_total") == 1
    assert counter(parsed, "roomctl_frames_received_total") == 3  # hello, message, bad one
    assert counter(parsed, "roomctl_bad_frames_total") == 1
    assert counter(parsed, "roomctl_rooms_created_total") == 1
    # The hello (which made the room) and the message were acknowledged after commits.
    assert observations(parsed, "roomctl_ack_latency_seconds") == 2
    assert observations(parsed, "roomctl_store_batch_size") >= 1
    assert value(parsed["roomctl_build_info"], version=daemon.VERSION,
                 node=socket.gethostname()) == 1  # one daemon: its host
    # A Unix time, from moments ago (the fixture started the daemon for this test).
    assert time.time() - 600 < gauge["roomctl_start_time_seconds"] <= time.time()
    # prometheus_client's process metrics, about this very process.
    assert gauge["process_resident_memory_bytes"] > 0
    assert abs(gauge["process_start_time_seconds"] - time.time()) < 24 * 3600


async def test_values_move_counters_only_grow_and_histograms_fill(
        server: Server, connect: Callable[..., Any]) -> None:
    _, before = await scrape(server)
    async with connect("lobby") as alice, connect("lobby") as bob:
        await alice.hello("alice")
        await bob.hello("bob")
        for n in range(3):
            assert (await alice.request({"type": "send-message", "text": f"m{n}"}))["seq"]
        # A signaling relay: no store write, so it counts as relay latency.
        await alice.request({"type": "join"})
        await bob.request({"type": "join"})
        await alice.send({"type": "relay-ice-candidate", "peer_id": bob.session_id,
                          "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}})
        await bob.recv_type("ice-candidate")
        _, during = await scrape(server)
    _, after = await scrape(server)

    first, second, third = families(before), families(during), families(after)
    for name, family in third.items():
        if family.type == "counter":
            assert counter(third, name) >= counter(second, name) >= counter(first, name), name
    assert counter(second, "roomctl_connections_accepted_total") == \
        counter(first, "roomctl_connections_accepted_total") + 2
    assert value(second["roomctl_connections"], kind="room") == 2
    assert value(third["roomctl_connections"], kind="room") == 0
    assert value(second["roomctl_participants"]) == 2
    acks = observations(second, "roomctl_ack_latency_seconds") - \
        observations(first, "roomctl_ack_latency_seconds")
    assert acks >= 3  # three messages (and the room, if this test made it)
    assert observations(second, "roomctl_relay_latency_seconds") > \
        observations(first, "roomctl_relay_latency_seconds")
    # Buckets are cumulative and end with +Inf holding every observation.
    histogram = second["roomctl_ack_latency_seconds"]
    buckets = [s for s in histogram.samples if s.name.endswith("_bucket")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
    assert counts[-1] == observations(second, "roomctl_ack_latency_seconds")
    assert value(histogram, "_sum") > 0


async def test_openmetrics_is_served_when_the_scraper_prefers_it(server: Server) -> None:
    # What Prometheus itself sends, OpenMetrics first.
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    content_type, text = await scrape(server, accept)

    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    assert "# TYPE roomctl_connections_accepted counter" in text


async def test_the_man_page_lists_every_metric_with_its_type(server: Server) -> None:
    _, text = await scrape(server)
    shown = {name: family.type for name, family in families(text).items()}

    assert documented() == shown
