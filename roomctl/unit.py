"""``roomctl serve --print-systemd-unit``: a hardened systemd service for the daemon.

The unit runs ``roomctl serve`` as ``Type=notify`` (the daemon says ``READY=1`` once it
accepts connections, and pings the watchdog), under a user that exists only while it runs
(``DynamicUser=yes``), with its data directory made and owned by systemd
(``StateDirectory=roomctl``, i.e. ``/var/lib/roomctl``) and the rest of the system read-only
or out of sight. Checked with ``systemd-analyze verify`` where that exists
(tests/test_systemd.py).
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path

__all__ = ["command_line", "systemd_unit"]

WATCHDOG_SECONDS = 30
PRIVILEGED_PORTS = 1024


def command_line() -> list[str]:
    """Return the command that runs this roomctl again: its script, or ``python -m roomctl``.

    Absolute, since systemd does not search a virtual environment's ``bin``.
    """
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if (script is not None and script.name == "roomctl" and script.is_file()
            and os.access(script, os.X_OK)):
        return [os.path.abspath(script)]
    # Not resolved: a virtual environment's python is a symlink that must stay one.
    return [os.path.abspath(sys.executable), "-m", "roomctl"]


def _quote(argument: str) -> str:
    # systemd's ExecStart splits like a shell; "%" starts a specifier and must be doubled.
    return shlex.quote(argument).replace("%", "%%")


def systemd_unit(command: list[str], options: list[str], *, config_file: Path | None,
                 port: int, shutdown_timeout: float) -> str:
    """Return the text of ``roomctl.service`` running ``command serve options``.

    ``config_file`` is passed on (``--config``) when given. A ``port`` under 1024 gets the
    one capability it needs; ``shutdown_timeout`` sizes the time systemd waits for a stop.
    """
    exec_start = [*command, "serve"]
    if config_file is not None:
        exec_start += ["--config", str(config_file.absolute())]
    exec_start += options
    # The daemon waits shutdown_timeout for clients, then as long again for the store.
    stop_seconds = math.ceil(2 * shutdown_timeout) + 10
    capabilities = "CAP_NET_BIND_SERVICE" if 0 < port < PRIVILEGED_PORTS else ""
    lines = [
        "# roomctl.service: made by roomctl serve --print-systemd-unit",
        "# Install: save as /etc/systemd/system/roomctl.service, then",
        "#   systemctl daemon-reload && systemctl enable --now roomctl",
        "# Settings: the config file given with --config (roomctl serve --print-config",
        "# writes one to start from), or Environment=ROOMCTL_... lines below.",
        "[Unit]",
        "Description=roomctl rooms daemon (chat and WebRTC signaling)",
        "Documentation=man:roomctl(1)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=" + " ".join(_quote(arg) for arg in exec_start),
        # The default data directory is $XDG_STATE_HOME/roomctl, so this makes it
        # systemd's StateDirectory while a config file may still name another.
        "Environment=XDG_STATE_HOME=%S",
        "Environment=ROOMCTL_LOG_FORMAT=json",
        "Environment=PYTHONUNBUFFERED=1",
        "StateDirectory=roomctl",
        "StateDirectoryMode=0700",
        "# A user made for the service while it runs; for a fixed one instead, replace",
        "# DynamicUser=yes with User=roomctl and Group=roomctl (created beforehand).",
        "DynamicUser=yes",
        "UMask=0077",
        "Restart=on-failure",
        "RestartSec=2s",
        f"WatchdogSec={WATCHDOG_SECONDS}s",
        f"TimeoutStopSec={stop_seconds}s",
        "LimitNOFILE=65536",
        "",
        "# Hardening: the daemon needs its state directory, the network and nothing else.",
        "NoNewPrivileges=yes",
        f"CapabilityBoundingSet={capabilities}",
        f"AmbientCapabilities={capabilities}",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "PrivateUsers=" + ("no" if capabilities else "yes"),
        "ProtectHostname=yes",
        "ProtectClock=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        # Not ProcSubset=pid: the process metrics read the boot time in /proc/stat.
        "ProtectProc=invisible",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RemoveIPC=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
