"""Callback URLs must not become a way into the operator's network: a URL whose host
resolves to a loopback, private, link-local or otherwise non-public address is refused
unless the operator allow-listed it (JOBGATE_CALLBACK_ALLOW: CIDRs or host names).
Checked when the call is accepted and again, against the address actually dialled, at
every delivery (a DNS answer can change in between)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.errors import CallbackRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    def _address_allowed(self, addr: IPAddress) -> bool:
        if any(addr in net for net in self.networks):
            return True
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
            if any(addr in net for net in self.networks):
                return True
        return addr.is_global and not addr.is_multicast

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
        refused = [a for a in addresses if not self._address_allowed(ipaddress.ip_address(a))]
        if refused:
            raise CallbackRefused(
                f"callback host {host!r} resolves to a non-public address ({refused[0]}); "
                "an operator can allow it with JOBGATE_CALLBACK_ALLOW",
                {"url": url, "address": refused[0]},
            )
        return ResolvedTarget(scheme, host, port, addresses[0])
