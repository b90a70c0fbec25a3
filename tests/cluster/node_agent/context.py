"""What every pod worker of the test node agent shares."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.kube_client import JSON, KubeClient
from tests.cluster.node_agent.objects import ObjectSource


class PodIPs:
    """Hands each pod its own loopback address, 127.<net>.x.y: Linux answers on all of
    127.0.0.0/8 without configuration, so every pod can bind its own port 8080."""

    def __init__(self, second_octet: int) -> None:
        if not 1 <= second_octet <= 254:
            raise ValueError("pod network octet must be in 1..254")
        self._base = int(ipaddress.IPv4Address(f"127.{second_octet}.0.0"))
        self._next = 0
        self._in_use: set[str] = set()

    def allocate(self) -> str:
        # Addresses are not reused while free ones remain, so a late packet to a dead pod
        # never reaches a new one; 65k pods per agent run is plenty for a test session.
        for _ in range(65_024):
            self._next = self._next % 65_024 + 1
            host = self._next + (self._next - 1) // 254 * 2  # skip .0 and .255 of each /24
            address = str(ipaddress.IPv4Address(self._base + host))
            if address not in self._in_use:
                self._in_use.add(address)
                return address
        raise RuntimeError("test node agent: pod addresses exhausted")

    def release(self, address: str) -> None:
        self._in_use.discard(address)


@dataclass
class AgentContext:
    kube: KubeClient
    node_name: str
    host_ip: str
    capacity: JSON
    state_dir: Path
    image_map_path: Path | None
    base_env: dict[str, str]
    pod_ips: PodIPs
    log: logging.Logger
    objects: ObjectSource = field(init=False)

    def __post_init__(self) -> None:
        self.objects = ObjectSource(self.kube)

    def pod_dir(self, uid: str) -> Path:
        return self.state_dir / "pods" / uid
