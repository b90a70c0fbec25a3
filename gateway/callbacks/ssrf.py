"""Callback URLs must not become a way into the operator's network: a URL whose host
resolves to a loopback, private, link-local or otherwise non-public address is refused
unless the operator allow-listed it (JOBGATE_CALLBACK_ALLOW: CIDRs or host names).
Checked when the call is accepted and again, against the address actually dialled, at
every delivery (a DNS answer can change in between).

An IPv6 address that carries an IPv4 address (mapped, compatible, translated, NAT64,
6to4, Teredo, ISATAP) is judged by every IPv4 address it carries, allow list included: a
dual-stack socket, a translator or a tunnel on the path delivers it there, so
``64:ff9b::7f00:1`` is 127.0.0.1 on a NAT64 network. Any other IPv6 address must be
global unicast (2000::/3) and public."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.errors import CallbackRefused

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
IPAddress = IPv4 | IPv6
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_net6 = ipaddress.IPv6Network
# Prefixes that exist to carry an IPv4 address in the last 32 bits.
LAST_32_BITS = (
    _net6("::ffff:0:0/96"),    # IPv4-mapped (RFC 4291)
    _net6("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765)
    _net6("64:ff9b::/96"),     # NAT64 well-known prefix (RFC 6052)
    # NAT64 local-use (RFC 8215): its layout is the operator's; the usual /96 one puts the
    # IPv4 address last. See docs/security.md for the shorter layouts.
    _net6("64:ff9b:1::/48"),
)
IPV4_COMPATIBLE = _net6("::/96")  # deprecated (RFC 4291), still routed by some stacks
GLOBAL_UNICAST = _net6("2000::/3")
# Documentation ranges (RFC 3849, RFC 9637): Python 3.11 takes 3fff::/20 for global.
DOCUMENTATION_V6 = (_net6("2001:db8::/32"), _net6("3fff::/20"))
# ISATAP interface ids (RFC 5214): ::5efe:a.b.c.d and ::200:5efe:a.b.c.d, under any
# prefix; the mask ignores the u and g bits.
ISATAP_MASK, ISATAP_ID = 0xFCFF_FFFF, 0x0000_5EFE


def prefix_ipv4(addr: IPv6) -> tuple[IPv4, ...]:
    """The IPv4 addresses carried by a prefix that exists to carry them (mapped,
    translated, NAT64, compatible, 6to4, Teredo server and client); empty for others."""
    value = int(addr)
    if any(addr in net for net in LAST_32_BITS):
        return (IPv4(value & 0xFFFF_FFFF),)
    if addr in IPV4_COMPATIBLE and value > 1:  # :: and ::1 are IPv6's own
        return (IPv4(value & 0xFFFF_FFFF),)
    if addr.sixtofour is not None:
        return (addr.sixtofour,)
    if addr.teredo is not None:
        return addr.teredo
    return ()


def isatap_ipv4(addr: IPv6) -> IPv4 | None:
    """The IPv4 address in an ISATAP interface id, whatever the prefix."""
    value = int(addr)
    return IPv4(value & 0xFFFF_FFFF) if (value >> 32) & ISATAP_MASK == ISATAP_ID else None


@dataclass(frozen=True)
class ResolvedTarget:
    scheme: str
    host: str
    port: int
    address: str  # the checked IP to connect to


class CallbackPolicy:
    def __init__(self, allow: list[str]):
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        for entry in allow:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def _listed(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self.networks)

    def _ipv4_allowed(self, addr: IPv4) -> bool:
        return self._listed(addr) or (addr.is_global and not addr.is_multicast)

    def refusal(self, addr: IPAddress) -> IPAddress | None:
        """The address that makes ``addr`` refused (itself, or an IPv4 address it
        carries), or None when ``addr`` may be dialled."""
        if self._listed(addr):
            return None
        if isinstance(addr, IPv4):
            return None if self._ipv4_allowed(addr) else addr
        carried = prefix_ipv4(addr)
        isatap = isatap_ipv4(addr)
        for v4 in (*carried, *([isatap] if isatap else [])):
            if not self._ipv4_allowed(v4):
                return v4
        if carried:  # the prefix only carries them: the IPv4 addresses are the destination
            return None
        public = (addr in GLOBAL_UNICAST and addr.is_global
                  and not any(addr in net for net in DOCUMENTATION_V6))
        return None if public else addr

    @staticmethod
    def parse(url: str) -> tuple[str, str, int]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise CallbackRefused(f"invalid callback URL: {e}", {"url": url}) from None
        if parts.scheme not in ("http", "https"):
            raise CallbackRefused("callback URL must be http or https", {"url": url})
        if not parts.hostname:
            raise CallbackRefused("callback URL has no host", {"url": url})
        if parts.username or parts.password:
            raise CallbackRefused("callback URL must not carry credentials", {"url": url})
        default = 443 if parts.scheme == "https" else 80
        return parts.scheme, parts.hostname.lower().rstrip("."), port or default

    async def resolve(self, url: str) -> ResolvedTarget:
        """Resolve and check; the first allowed address is the one to dial."""
        scheme, host, port = self.parse(url)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise CallbackRefused(f"callback host {host!r} does not resolve: {e}",
                                      {"url": url}) from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if host in self.hosts:
            return ResolvedTarget(scheme, host, port, addresses[0])
        for address in addresses:
            addr = ipaddress.ip_address(address)
            why = self.refusal(addr)
            if why is None:
                continue
            details = {"url": url, "address": address}
            carries = ""
            if why != addr:
                carries = f", which carries {why}"
                details["carried_ipv4"] = str(why)
            raise CallbackRefused(
                f"callback host {host!r} resolves to a non-public address ({address}"
                f"{carries}); an operator can allow it with JOBGATE_CALLBACK_ALLOW",
                details,
            )
        return ResolvedTarget(scheme, host, port, addresses[0])
