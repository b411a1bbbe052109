"""The client side of protocol v1, on trio: where the daemon is, and one open connection to it.

``Target`` is what the global options resolve to (URL, token, TLS, timeout). ``open_room`` and
``open_admin`` open a WebSocket, say hello and yield a ``Session`` whose ``request`` waits for
the one reply to a request (by ``ref``) and whose ``receive`` returns the other frames in order.

Every failure a command can meet is turned into a ``CliError`` carrying the exit code a script
branches on (see ``ExitCode``); nothing here prints.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import trio
import trio_websocket

from protocol import CORE_EVENTS, Codec, Grant, WireFormat
from protocol.admin import ADMIN_EVENTS
from protocol.chat import CHAT_EVENTS
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.local import ADMIN_PATH, room_path
from protocol.messages import Error, Event, Hello, Ok, Reply, Request, Welcome
from roomctl.errors import CliError, ExitCode, exception_leaves, exit_for_code
from roomctl.rules import explain_refusal
from roomctl.target import Credential, Target, admin_token_refused, no_admin_token

__all__ = ["CliError", "Credential", "ExitCode", "HelloRefused", "Session", "Target",
           "connect", "open_admin", "open_room", "refused"]

log = logging.getLogger(__name__)

CLIENT_MAX_FRAME = 16 * 1024 * 1024


class HelloRefused(CliError):
    """The daemon refused a connection's hello (its token, or entry to the room)."""


_EXIT_FOR_CLOSE: dict[int, ExitCode] = {
    CloseCode.UNAUTHORIZED: ExitCode.UNAUTHORIZED,
    CloseCode.FORBIDDEN: ExitCode.UNAUTHORIZED,
    CloseCode.ROOM_NOT_FOUND: ExitCode.NOT_FOUND,
    CloseCode.ROOM_DELETED: ExitCode.NOT_FOUND,
}


def refused(error: Error, request: Request | None = None) -> CliError:
    """Return the CliError for an ``error`` frame, with the exit code its code maps to.

    A decoder's wording about a field of ``request`` is put in words (rules.explain_refusal).
    """
    exit_code = exit_for_code(str(error.code))
    message = error.message
    if request is not None and error.code == ErrorCode.BAD_REQUEST:
        message = explain_refusal(message, request)
    return CliError(exit_code, f"{error.code}: {message}", code=str(error.code),
                    grant=str(error.grant) if error.grant is not None else None)


def closed(exc: trio_websocket.ConnectionClosed) -> CliError:
    """Return the CliError for a connection the daemon closed."""
    reason = exc.reason
    code = reason.code if reason is not None else None
    text = (reason.reason or reason.name) if reason is not None else "connection lost"
    exit_code = _EXIT_FOR_CLOSE.get(code, ExitCode.UNREACHABLE) if code else ExitCode.UNREACHABLE
    if code == CloseCode.GOING_AWAY:
        text = "the daemon is shutting down"
    return CliError(exit_code, f"connection closed ({code}): {text}")


ReplyT = TypeVar("ReplyT", bound=Reply)


class Session:
    """One open, welcomed connection; frames are decoded to protocol structs.

    Not for concurrent readers: ``request`` and ``receive`` both read the connection, so
    one task must do all the reading (``join`` keeps a single reader task and only sends
    from others).
    """

    _refs = itertools.count(1)

    def __init__(self, ws: trio_websocket.WebSocketConnection, codec: Codec,
                 timeout: float) -> None:
        self.ws = ws
        self.codec = codec
        self.timeout = timeout
        self.welcome: Welcome | None = None
        self.token: str | None = None  # the token its hello presented
        self._pending: collections.deque[Any] = collections.deque()

    def next_ref(self) -> str:
        return f"c{next(self._refs)}"

    async def send(self, frame: Request) -> None:
        """Send one frame; raises CliError if the connection is gone."""
        data = self.codec.encode(frame)
        try:
            await self.ws.send_message(data.decode() if not self.codec.format.binary else data)
        except trio_websocket.ConnectionClosed as exc:
            raise closed(exc) from None

    async def _next(self) -> Any:
        while True:
            try:
                data = await self.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                raise closed(exc) from None
            try:
                return self.codec.decode(data)
            except ProtocolError as exc:  # an event type this client does not know: skip it
                log.debug("skipped a frame: %s", exc)

    async def receive(self) -> Any:
        """Return the next frame that no ``request`` consumed."""
        if self._pending:
            return self._pending.popleft()
        return await self._next()

    async def request(self, frame: Request, expect: type[ReplyT] | None = None) -> Any:
        """Send ``frame`` (its ``ref`` must be set) and return its reply.

        Frames that arrive meanwhile are kept for ``receive``. Raises CliError: the daemon's
        ``error`` (exit code by error code), a close, or TIMEOUT after ``timeout`` seconds.
        """
        assert frame.ref is not None
        await self.send(frame)
        with trio.move_on_after(self.timeout) as scope:
            while True:
                reply = await self._next()
                if isinstance(reply, Reply) and reply.ref == frame.ref:
                    break
                self._pending.append(reply)
        if scope.cancelled_caught:
            raise CliError(ExitCode.TIMEOUT,
                           f"no answer to {type(frame).__name__} in {self.timeout:g} s")
        if isinstance(reply, Error):
            raise refused(reply, frame)
        if expect is not None and not isinstance(reply, expect | Ok):
            raise CliError(ExitCode.REFUSED, f"unexpected answer {type(reply).__name__}")
        return reply


_CLIENT_EVENTS: tuple[type[Event | Reply], ...] = (*CORE_EVENTS, *CHAT_EVENTS, *ADMIN_EVENTS)


@asynccontextmanager
async def connect(target: Target, path: str, hello: Hello) -> AsyncIterator[Session]:
    """Open ``path`` on the daemon, say ``hello`` and yield the welcomed Session.

    Raises CliError: UNREACHABLE when nothing answers (or TLS fails), TIMEOUT when the
    handshake takes longer than the target's timeout, and the daemon's refusal otherwise.
    """
    url = target.ws_url(path)
    # Frames from the daemon are trusted more than the reverse: accept up to 16 MiB.
    codec = Codec(WireFormat.JSON, _CLIENT_EVENTS, max_frame_bytes=CLIENT_MAX_FRAME)
    # trio-websocket's own connect_timeout leaves its reader task waiting on a silent
    # server, so the handshake is bounded here; the deadline is lifted once connected.
    connecting = trio.CancelScope(deadline=trio.current_time() + target.timeout)
    try:
        with connecting:
            context = target.ssl_context()
            if context is not None:
                await _check_tls(target, context)
            async with trio_websocket.open_websocket_url(
                url, ssl_context=context,
                subprotocols=[WireFormat.JSON.subprotocol],
                connect_timeout=math.inf, disconnect_timeout=2,
                max_message_size=CLIENT_MAX_FRAME,
            ) as ws:
                connecting.deadline = math.inf
                session = Session(ws, codec, target.timeout)
                session.token = hello.token
                try:
                    welcome = await session.request(
                        msgspec.structs.replace(hello, ref=session.next_ref()))
                except CliError as exc:
                    if exc.code is None:  # not an answer from the daemon
                        raise
                    raise HelloRefused(exc.exit_code, exc.message, code=exc.code,
                                   grant=exc.grant) from None
                if not isinstance(welcome, Welcome):
                    raise CliError(ExitCode.REFUSED,
                                   f"unexpected answer {type(welcome).__name__}")
                session.welcome = welcome
                yield session
        if connecting.cancelled_caught:
            raise trio.TooSlowError
    except BaseExceptionGroup as group:
        raise _single(group) from None
    except trio.TooSlowError:
        raise CliError(ExitCode.TIMEOUT,
                       f"no answer from {target.url} in {target.timeout:g} s") from None
    except trio_websocket.DisconnectionTimeout:
        pass  # the daemon did not answer our close in time; the session's work is done
    except ssl.SSLError as exc:
        raise CliError(ExitCode.UNREACHABLE,
                       f"TLS failed with {target.url}: {exc.reason or exc}") from None
    except trio_websocket.HandshakeError as exc:
        raise CliError(ExitCode.UNREACHABLE, _handshake_text(target, exc)) from None
    except OSError as exc:
        raise CliError(ExitCode.UNREACHABLE,
                       f"cannot reach {target.url}: {_describe(exc)}") from None


async def _check_tls(target: Target, context: ssl.SSLContext) -> None:
    """Make one TLS handshake with the daemon; raise CliError (UNREACHABLE) if it fails.

    trio-websocket 0.12 waits forever when TLS fails under its opening handshake, so a
    certificate that does not verify would otherwise look like a timeout.
    """
    parts = urlsplit(target.url)
    stream = await trio.open_ssl_over_tcp_stream(
        parts.hostname or "", parts.port or 443, ssl_context=context, https_compatible=True)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        raise CliError(ExitCode.UNREACHABLE,
                       f"cannot reach {target.url}: {_describe(exc)}") from None
    finally:
        with trio.move_on_after(2, shield=True):
            await stream.aclose()


def _single(group: BaseExceptionGroup[Any]) -> BaseException:
    """Return the one exception a group of one holds (nurseries wrap everything)."""
    leaves = list(exception_leaves(group))
    if len(leaves) == 1:
        return leaves[0]
    for leaf in leaves:
        if isinstance(leaf, CliError):
            return leaf
    return group


def _handshake_text(target: Target, exc: trio_websocket.HandshakeError) -> str:
    if isinstance(exc, trio_websocket.ConnectionRejected):
        body = (exc.body or b"").decode(errors="replace").strip()
        return f"{target.url} refused the connection (HTTP {exc.status_code}) {body}".strip()
    return f"cannot reach {target.url}: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    """Return the most telling reason in an exception's causes (``Connection refused``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return (f"TLS: the daemon's certificate is not trusted "
                    f"({current.verify_message or current.reason}); give its CA with "
                    f"--ca-file, or skip the check with --insecure")
        if isinstance(current, ssl.SSLError):
            if current.reason == "WRONG_VERSION_NUMBER":
                return "TLS: the daemon does not speak TLS on this port (use http:// or ws://)"
            return f"TLS: {current.reason or current}"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return str(exc) or "connection failed"


@asynccontextmanager
async def open_room(target: Target, room: str, *, name: str | None = None,
                    hidden: bool = False, subscribe: bool = True, resume: str | None = None,
                    create: bool = False) -> AsyncIterator[Session]:
    """Join ``room`` (as a hidden observer with ``hidden``) and yield the Session.

    ``subscribe=False`` (with ``hidden``) makes a sender: it hears only the answers to its
    requests, and needs only the grants of what it sends (``post``), not ``read``.

    The CLI never creates a room by joining it unless asked (``create``): a typo in a
    script must not make a new, unread room. A missing room is CliError NOT_FOUND.

    An admin token read from a data directory (not given) that the daemon refuses is
    probably another daemon's: the room is tried once more without it, which works for an
    open room. If that is refused too, the error names the file and what to do.
    """
    credential = target.credential()
    hello = Hello(name=name, token=credential.token if credential is not None else None,
                  hidden=hidden, subscribe=subscribe, resume=resume, create=create)
    path = room_path(room)
    entered = False
    try:
        async with connect(target, path, hello) as session:
            entered = True
            yield session
        return
    except HelloRefused as exc:
        if entered or credential is None or not _refuses_token(credential, exc):
            raise _with_hint(exc, hidden) from None
        first = exc
    try:
        async with connect(target, path, msgspec.structs.replace(hello, token=None)) as session:
            entered = True
            yield session
    except HelloRefused as exc:
        if entered:
            raise
        raise _token_refused(target, credential, first, also=exc) from None


def _refuses_token(credential: Credential, exc: CliError) -> bool:
    """Whether ``exc`` is the daemon refusing an admin token read from a data directory."""
    return credential.implicit and exc.code == ErrorCode.UNAUTHORIZED


def _token_refused(target: Target, credential: Credential, exc: CliError, *,
                   also: CliError | None = None) -> CliError:
    """Return the error for an admin token from a data directory that the daemon refused."""
    then = None if also is None else also.message.removeprefix(f"{also.code}: ")
    return admin_token_refused(target, credential, exc.message.removeprefix(f"{exc.code}: "),
                               code=exc.code, also=then)


def _with_hint(exc: HelloRefused, hidden: bool) -> CliError:
    if hidden and exc.grant == Grant.READ:
        exc.message += " (this command watches the room unseen: give the token the " \
                       "read grant)"
    return exc


@asynccontextmanager
async def open_admin(target: Target) -> AsyncIterator[Session]:
    """Open the admin endpoint with the admin token and yield the Session.

    Raises CliError UNAUTHORIZED without a token, or when the daemon refuses it (naming the
    file it was read from, if it was).
    """
    credential = target.credential()
    if credential is None:
        raise no_admin_token(target)
    entered = False
    try:
        async with connect(target, ADMIN_PATH, Hello(token=credential.token)) as session:
            entered = True
            yield session
    except HelloRefused as exc:
        if entered or not _refuses_token(credential, exc):
            raise
        raise _token_refused(target, credential, exc) from None
