"""ICE configuration: which servers, and which local addresses give host candidates.

aiortc falls back to a public STUN server when given no ICE servers at all, so we always pass
an explicit list, empty unless the user names servers (DESIGN section 8).

aioice gathers host candidates from ``aioice.ice.get_host_addresses``, which skips loopback
addresses: on a host or container whose only interface is ``lo`` it gathers nothing and ICE
never leaves ``new``. ``--allow-loopback`` and ``--ice-address`` replace that function, in
this process only, with one that may include 127.0.0.1 and ::1 (and may keep to the named
addresses). This is a documented patch of aioice's module namespace, applied once at start.
"""

from __future__ import annotations

import ipaddress

import aioice.ice
import ifaddr
from aiortc import RTCConfiguration, RTCIceServer

from roomctl.media.settings import CallSettings


def configuration(settings: CallSettings) -> RTCConfiguration:
    """Return the RTCConfiguration for every peer connection: the named servers, or none."""
    servers = [RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
               for s in settings.ice_servers]
    return RTCConfiguration(iceServers=servers)


def local_addresses(*, ipv4: bool = True, ipv6: bool = True,
                    loopback: bool = True) -> list[str]:
    """Return this host's addresses usable for ICE (no link-local IPv6), loopback optional."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                address, scope = ip.ip, 0
                if not ipv4:
                    continue
            else:
                address, _, scope = ip.ip
                if not ipv6 or scope != 0:  # link-local needs a scope id aioice cannot use
                    continue
            parsed = ipaddress.ip_address(address)
            if parsed.is_loopback and not (loopback and str(parsed) in ("127.0.0.1", "::1")):
                continue
            if str(parsed) not in found:
                found.append(str(parsed))
    return found


def check_addresses(addresses: tuple[str, ...]) -> None:
    """Raise ValueError naming the first of ``addresses`` that is not one of this host's."""
    mine = set(local_addresses())
    for address in addresses:
        if address not in mine:
            raise ValueError(f"{address} is not an address of this host "
                             f"(it has {', '.join(sorted(mine)) or 'none'})")


def apply_host_candidate_policy(settings: CallSettings) -> None:
    """Make aioice gather host candidates as the settings say (a no-op by default)."""
    if not settings.allow_loopback and not settings.ice_addresses:
        return
    chosen = settings.ice_addresses
    allow_loopback = settings.allow_loopback or any(
        ipaddress.ip_address(a).is_loopback for a in chosen)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = local_addresses(ipv4=use_ipv4, ipv6=use_ipv6, loopback=allow_loopback)
        if chosen:
            addresses = [a for a in addresses if a in chosen]
        return addresses

    aioice.ice.get_host_addresses = get_host_addresses
