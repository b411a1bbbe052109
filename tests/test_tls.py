"""TLS end to end: ``roomctl serve --tls-cert/--tls-key`` and the real CLI over https and wss.

A throwaway CA and a certificate for 127.0.0.1 and localhost are made in the test with
trustme; nothing is trusted system-wide. The daemon runs as a real subprocess.
"""

from __future__ import annotations

import json
import os
import pathlib
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import trio
import trio_websocket
import trustme

from tests.conftest import ROOT, WAIT, Client, ServeProcess

CLI_TIMEOUT = 30.0


@dataclass(frozen=True)
class Pki:
    ca: pathlib.Path  # the CA certificate clients are given with --ca-file
    cert: pathlib.Path
    key: pathlib.Path
    other_ca: pathlib.Path  # a CA that did not sign the daemon's certificate

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(where / "ca.pem", where / "cert.pem", where / "key.pem", where / "other-ca.pem")
    ca.cert_pem.write_to_path(str(pki.ca))
    issued.private_key_pem.write_to_path(str(pki.key))
    for i, blob in enumerate(issued.cert_chain_pems):
        blob.write_to_path(str(pki.cert), append=i > 0)
    trustme.CA().cert_pem.write_to_path(str(pki.other_ca))
    os.chmod(pki.key, 0o600)
    return pki


@pytest.fixture
def tls_daemon(serve_process: Callable[..., ServeProcess], pki: Pki) -> Iterator[ServeProcess]:
    sp = serve_process("--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                       "--head-timeout", "1", "--log-level", "warning")
    assert sp.secure and sp.http.startswith("https://")  # the listening line said https
    yield sp


@dataclass
class Result:
    rc: int
    out: str
    err: str


async def roomctl(sp: ServeProcess, *args: str, url: str | None = None) -> Result:
    """Run ``roomctl ARGS`` against ``sp`` (bounded) and return its status and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCTL_")}
    env.update(ROOMCTL_URL=url or sp.http, ROOMCTL_DATA_DIR=str(sp.data_dir))
    with trio.fail_after(CLI_TIMEOUT):
        done = await trio.run_process([sys.executable, "-m", "roomctl", *args], stdin=b"",
                                      capture_stdout=True, capture_stderr=True, check=False,
                                      cwd=ROOT, env=env)
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def one_error_line(result: Result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roomctl: "), result.err
    assert "Traceback" not in result.err
    return lines[0]


async def https_get(sp: ServeProcess, path: str, context: ssl.SSLContext) -> tuple[int, str]:
    """GET ``path`` over TLS, verifying the certificate; return the status and body."""
    with trio.fail_after(WAIT):
        stream = await trio.open_ssl_over_tcp_stream(sp.host, sp.port, ssl_context=context,
                                                     https_compatible=True)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {sp.host}\r\n"
                                  "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def alive(sp: ServeProcess, pki: Pki) -> None:
    """The daemon still answers /healthz over TLS."""
    status, body = await https_get(sp, "/healthz", pki.context())
    assert status == 200 and json.loads(body)["status"] == "ok"


# --- what works -----------------------------------------------------------------------------


async def test_post_and_tail_over_https_with_the_ca_file(tls_daemon: ServeProcess,
                                                         pki: Pki) -> None:
    sp = tls_daemon
    ca = ("--ca-file", str(pki.ca))
    assert (await roomctl(sp, "room", "create", "secure", *ca)).rc == 0
    posted = await roomctl(sp, "post", "secure", "over", "tls", "--json", *ca)
    assert posted.rc == 0, posted.err
    assert json.loads(posted.out)["seq"] == 1
    tailed = await roomctl(sp, "tail", "secure", "--no-follow", "--json", *ca)
    assert tailed.rc == 0, tailed.err
    assert [json.loads(line)["text"] for line in tailed.out.splitlines()] == ["over tls"]
    # A browser-like client over wss sees the same room, and /healthz answers over https.
    async with trio_websocket.open_websocket_url(
            sp.url + "/v1/rooms/secure", ssl_context=pki.context(), connect_timeout=WAIT,
            disconnect_timeout=WAIT) as ws:
        client = Client(ws, binary=False)
        assert (await client.hello("wss"))["type"] == "welcome"
        page = await client.request({"type": "get-messages"})
        assert [m["text"] for m in page["messages"]] == ["over tls"]
    await alive(sp, pki)


async def test_insecure_skips_verification(tls_daemon: ServeProcess) -> None:
    sp = tls_daemon
    assert (await roomctl(sp, "room", "create", "lax", "--insecure")).rc == 0
    posted = await roomctl(sp, "post", "lax", "unverified", "--insecure")
    assert posted.rc == 0, posted.err


async def test_the_env_vars_configure_tls(serve_process: Callable[..., ServeProcess],
                                          pki: Pki) -> None:
    sp = serve_process("--memory", env={"ROOMCTL_TLS_CERT": str(pki.cert),
                                        "ROOMCTL_TLS_KEY": str(pki.key)})
    assert sp.secure
    await alive(sp, pki)


# --- what is refused, cleanly ---------------------------------------------------------------


async def test_without_the_ca_file_the_cli_refuses_with_one_tls_line(
        tls_daemon: ServeProcess, pki: Pki) -> None:
    sp = tls_daemon
    for extra in ((), ("--ca-file", str(pki.other_ca))):
        refused = await roomctl(sp, "post", "secure", "x", "--timeout", "3", *extra)
        line = one_error_line(refused)
        assert refused.rc == 5, line
        assert "TLS" in line and "--ca-file" in line
    await alive(sp, pki)


async def test_a_verifying_client_without_the_ca_is_refused_by_tls(tls_daemon: ServeProcess,
                                                                   pki: Pki) -> None:
    # What the CLI meets underneath: the handshake fails on certificate verification.
    with pytest.raises(trio.BrokenResourceError) as failed:
        await https_get(tls_daemon, "/healthz", ssl.create_default_context())
    assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
    await alive(tls_daemon, pki)


async def test_plain_http_on_the_tls_port_is_told_so_and_nothing_hangs(
        tls_daemon: ServeProcess, pki: Pki) -> None:
    sp = tls_daemon
    # A plain HTTP request gets a 400 that says what to do, then the connection closes.
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(sp.host, sp.port)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"this port speaks TLS" in answer
    # The CLI pointed at http:// gets one line and exit 5, quickly.
    started = trio.current_time()
    refused = await roomctl(sp, "post", "secure", "x", url=f"http://{sp.host}:{sp.port}")
    assert refused.rc == 5
    assert "speaks TLS" in one_error_line(refused)
    assert trio.current_time() - started < 10
    await alive(sp, pki)


async def test_a_stalled_or_trickled_tls_handshake_is_cut_at_the_head_timeout(
        tls_daemon: ServeProcess, pki: Pki) -> None:
    sp = tls_daemon  # --head-timeout 1

    async def cut_after(trickle: bool) -> float:
        started = trio.current_time()
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream(sp.host, sp.port)
            async with stream:
                try:
                    # A ClientHello record header, then one byte at a time (or nothing).
                    await stream.send_all(b"\x16\x03\x01\x02\x00")
                    while trickle:
                        await stream.send_all(b"\x01")
                        await trio.sleep(0.1)
                    while await stream.receive_some(4096):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return trio.current_time() - started

    for trickle in (False, True):
        took = await cut_after(trickle)
        assert 0.8 < took < 1.0 + 2.0, (trickle, took)
    await alive(sp, pki)


@pytest.mark.parametrize("problem", ["missing cert", "missing key", "not pem", "wrong key"])
async def test_an_unusable_certificate_or_key_is_one_line_and_exit_1(
        problem: str, pki: Pki, tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    other_key = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    cert, key = {
        "missing cert": (tmp_path / "nope.pem", pki.key),
        "missing key": (pki.cert, tmp_path / "nope.pem"),
        "not pem": (junk, pki.key),
        "wrong key": (pki.cert, other_key),
    }[problem]
    with trio.fail_after(CLI_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "roomctl", "serve", "--port", "0", "--memory", "--data-dir",
             str(tmp_path / "data"), "--tls-cert", str(cert), "--tls-key", str(key)],
            capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT)
    err = done.stderr.decode()
    lines = err.strip().splitlines()
    assert done.returncode == 1, err
    assert done.stdout == b""  # never claimed to be listening
    assert len(lines) == 1 and lines[0].startswith("roomctl serve: TLS "), err
    expected = {"missing cert": "No such file", "missing key": "No such file",
                "not pem": "not a PEM certificate", "wrong key": "does not belong"}[problem]
    assert expected in lines[0]
