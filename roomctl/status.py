"""``roomctl status``: where the CLI points, whether a daemon answers there, and with what token.

Two plain HTTP requests (``roomctl.httpclient``): ``GET /healthz`` for the daemon's
version and health, and ``GET /v1/whoami`` with the token in use for what it is and
grants, as the daemon itself judges it. The token's source is the CLI's own knowledge:
``--token``, ``ROOMCTL_TOKEN``, a profile, or a local daemon's data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from roomctl import output
from roomctl.errors import CliError, ExitCode
from roomctl.httpclient import request
from roomctl.options import Context, client_command
from roomctl.target import Credential, Target

_SOURCES = {"flag": "--token", "environment": "ROOMCTL_TOKEN", "profile": "profile",
            "data-dir": "the data directory"}


def _daemon(target: Target) -> dict[str, Any]:
    """Return what /healthz says, or why nothing answered."""
    try:
        answer = request(target, "GET", "/healthz")
    except CliError as exc:
        return {"reachable": False, "error": exc.message, "exit": int(exc.exit_code)}
    body = answer.body if isinstance(answer.body, dict) else {}
    return {"reachable": True, "status": body.get("status", f"HTTP {answer.status}"),
            "version": body.get("version"), "rooms": body.get("rooms"),
            "connections": body.get("connections")}


def _about(source: str, file: Path | None, **known: Any) -> dict[str, Any]:
    """The report's ``token``: where it came from; what it is, as far as ``known``."""
    return {"source": source, "file": str(file) if file is not None else None,
            "valid": None, "kind": None, "grants": [], "room": None, "identity": None,
            "expires_at": None, **known}


def _token(target: Target, credential: Credential, reachable: bool) -> dict[str, Any]:
    """Return the token's source, and what the daemon says it is (when it answers)."""
    about = _about(credential.source, credential.file)
    if not reachable:
        return about
    answer = request(target, "GET", "/v1/whoami", token=credential.token)
    if answer.error is not None:
        about.update(valid=False, error=answer.error[1])
        return about
    info = answer.body
    expires = info.get("expires_at")
    about.update(valid=True, kind=info.get("kind"), grants=info.get("grants", []),
                 room=info.get("room"), identity=info.get("identity"),
                 expires_at=output.iso(expires) if isinstance(expires, int | float) else None)
    return about


def _where(about: dict[str, Any], profile: str | None) -> str:
    source = _SOURCES[about["source"]]
    if about["source"] == "profile":
        source = f"profile {profile!r}"
    return f"{source} ({about['file']})" if about["file"] else source


def _print(report: dict[str, Any]) -> None:
    lines: list[tuple[str, str]] = []
    daemon = report["daemon"]
    if daemon["reachable"]:
        rooms, conns = daemon["rooms"], daemon["connections"]
        health = f"{daemon['status']}, {rooms} room{'s' * (rooms != 1)}, {conns} " \
                 f"connection{'s' * (conns != 1)}"
        lines.append(("daemon", f"{report['url']}: roomctl {daemon['version']} ({health})"))
    else:
        reason = daemon["error"].removeprefix(f"cannot reach {report['url']}: ")
        lines.append(("daemon", f"{report['url']}: not reachable ({reason})"))
    if report["profile"] is not None:
        lines.append(("profile", f"{report['profile']['name']} ({report['profile']['file']})"))
    token = report["token"]
    if token is None:
        lines.append(("token", "none (open rooms only)"))
    else:
        where = _where(token, report["profile"] and report["profile"]["name"])
        if token.get("unreadable"):
            lines.append(("token", f"from {where}; {token['error']}"))
        elif token["valid"] is None:
            lines.append(("token", f"from {where}; not checked (no daemon)"))
        elif not token["valid"]:
            lines.append(("token", f"from {where}; refused: {token['error']}"))
        elif token["kind"] == "admin":
            lines.append(("token", f"the admin token, from {where}"))
            lines.append(("grants", "all, in every room"))
        else:
            lines.append(("token", f"a join token for room {token['room']!r} "
                                   f"(identity {token['identity']!r}), from {where}"))
            expires = f"; expires {token['expires_at']}" if token["expires_at"] else ""
            lines.append(("grants", (", ".join(token["grants"]) or "none") + expires))
    width = max(len(key) for key, _ in lines)
    output.emit_lines(f"{key:<{width}}  {value}" for key, value in lines)


@client_command
def status(ctx: Context) -> None:
    """Show the daemon this points at, whether it answers, and the token in use.

    Says the daemon's URL, version and health, then which token is used, where it came
    from (--token, ROOMCTL_TOKEN, a profile, the data directory) and what it grants.
    Exit 0 when the daemon answers and takes the token, 5 when nothing answers, 4 when
    the daemon refuses the token. With --json, one document.
    """
    target = ctx.target
    daemon = _daemon(target)
    try:
        credential = target.credential()
    except CliError as exc:  # a profile's token file that cannot be read: say so too
        token: dict[str, Any] | None = _about(target.token_source, target.token_file,
                                              valid=False, unreadable=True,
                                              error=exc.message)
    else:
        token = None if credential is None else _token(target, credential,
                                                       daemon["reachable"])
    profile = None
    if target.profile is not None:
        from roomctl.profiles import config_file

        profile = {"name": target.profile, "file": str(Path(config_file()))}
    report = {"url": target.url, "profile": profile, "daemon": daemon, "token": token}
    if ctx.json:
        output.emit_json(report)
    else:
        _print(report)
    if token is not None and token.get("unreadable"):
        raise typer.Exit(int(ExitCode.UNAUTHORIZED))
    if not daemon["reachable"]:
        raise typer.Exit(daemon["exit"])
    if token is not None and token["valid"] is False:
        raise typer.Exit(int(ExitCode.UNAUTHORIZED))
