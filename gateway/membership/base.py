"""The membership seam: who this gateway is among the gateways that share one store, which
of them are alive, and which one leads what is done once for all of them (the Kubernetes
pool controller, taking over the work of replicas that are gone).

Every invocation records the identity of the gateway that owns it. A gateway only ever
recovers invocations it owns, or, while it leads, those of replicas its membership knows
to be gone: never a live one's."""

from __future__ import annotations

from abc import ABC, abstractmethod


class Membership(ABC):
    name: str
    # This gateway, as recorded on what it accepts (the owner of an invocation) and claims.
    identity: str

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @property
    @abstractmethod
    def leads(self) -> bool:
        """Whether this replica runs the duties done once for all replicas: pool control
        and taking over the unfinished work of replicas that are gone."""

    @property
    def api_calls(self) -> dict[str, int]:
        """Calls this made to a control plane, by verb (observability; none by default)."""
        return {}

    @abstractmethod
    async def live_replicas(self) -> set[str]:
        """The replicas this one can see alive now, itself included."""

    @abstractmethod
    async def gone(self, replicas: set[str]) -> set[str]:
        """Those of ``replicas`` known to be gone for good, whose unfinished work the
        leader takes over. Never this replica, and never one this membership cannot see:
        a replica it knows nothing about may be alive."""
