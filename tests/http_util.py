"""A real HTTP client for the HTTP API's tests: the standard library's ``http.client``.

Each call runs in a worker thread (``trio.to_thread``), on a connection of its own, and is
bounded. ``EventStream`` reads a Server-Sent Events response as it comes.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import trio

WAIT = 10.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The error of an error answer (checking its shape)."""
        document = self.json()
        assert set(document) <= {"error", "messages"}, document
        error: dict[str, Any] = document["error"]
        assert {"code", "message"} <= set(error), error
        return error


def _request(host: str, port: int, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> Answer:
    connection = http.client.HTTPConnection(host, port, timeout=WAIT)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


async def call(address: Any, method: str, path: str, *, token: str | None = None,
               json_body: Any = None, form: dict[str, Any] | list[tuple[str, str]] | None = None,
               text: str | None = None, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> Answer:
    """One HTTP request to the daemon at ``address`` (``.host``, ``.port``)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if json_body is not None:
        body = json.dumps(json_body).encode()
        sent.setdefault("Content-Type", "application/json")
    elif form is not None:
        body = urllib.parse.urlencode(form, doseq=True).encode()
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif text is not None:
        body = text.encode()
        sent.setdefault("Content-Type", "text/plain; charset=utf-8")
    with trio.fail_after(WAIT + 5):
        return await trio.to_thread.run_sync(_request, address.host, address.port, method,
                                             path, body, sent)


@dataclass
class Event:
    id: str | None
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class EventStream:
    """An open ``text/event-stream`` response; ``next`` returns its events one by one."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    sock: socket.socket
    comments: list[str] = field(default_factory=list)
    raw_tail: list[bytes] = field(default_factory=list)  # the last raw lines read

    @property
    def ended_whole(self) -> bool:
        """Whether the chunked body ended with its last chunk (not a cut connection)."""
        return self.raw_tail[-2:] == [b"0\r\n", b"\r\n"]

    @property
    def status(self) -> int:
        return self.response.status

    def _next(self) -> Event | None:
        fields: dict[str, str] = {}
        data: list[str] = []
        while True:
            raw = self.response.fp.readline()
            self.raw_tail = [*self.raw_tail[-1:], raw] if raw else self.raw_tail
            if not raw:
                return None  # the stream ended
            line = raw.decode().rstrip("\n")
            if not line:
                if data:  # (as EventSource: a block without data dispatches nothing)
                    return Event(fields.get("id"), fields.get("event"), "\n".join(data))
                fields.clear()
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value

    async def next(self, timeout: float = WAIT) -> Event | None:
        """Return the next event, or None once the daemon has ended the stream."""
        with trio.fail_after(timeout):
            return await trio.to_thread.run_sync(self._next, abandon_on_cancel=True)

    def close(self) -> None:
        # A reader thread may still wait in readline (a timed-out next): shutting the
        # socket down wakes it; closing the response first would wait for its lock. The
        # response holds the socket too (its file object), so both are closed after.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.response.close()
        self.connection.close()


async def open_events(address: Any, room: str, *, token: str | None = None,
                      last_event_id: int | None = None, query: str = "") -> EventStream:
    """Open ``GET /v1/rooms/{room}/events`` and return the stream once its head came."""
    headers = {"Accept": "text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)

    def start() -> EventStream:
        # No read timeout on the stream itself: each read is bounded by EventStream.next.
        connection = http.client.HTTPConnection(address.host, address.port, timeout=None)
        connection.request("GET", f"/v1/rooms/{room}/events{query}", headers=headers)
        sock = connection.sock
        assert sock is not None
        return EventStream(connection, connection.getresponse(), sock)

    with trio.fail_after(WAIT):
        return await trio.to_thread.run_sync(start)
