"""Leader election and replica presence through coordination.k8s.io/v1 Leases.

One Lease elects the replica that maintains the pools (every replica serves and claims).
Each replica also renews a Lease of its own: a claim whose replica's Lease has expired is
an orphan the leader may clean up."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.executors.kubernetes.api import Conflict, KubeApi, Missing
from gateway.executors.kubernetes.spec import COMPONENT, MANAGED_BY, dns_name

log = logging.getLogger("jobgate.k8s.leader")
Obj = dict[str, Any]
REPLICA_SELECTOR = f"{MANAGED_BY}=jobgate,{COMPONENT}=replica"


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def lease_expired(lease: Obj, now: datetime | None = None) -> bool:
    spec = lease.get("spec", {})
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    if not spec.get("holderIdentity") or renewed is None:
        return True
    duration = timedelta(seconds=int(spec.get("leaseDurationSeconds") or 15))
    return renewed + duration < (now or _now())


def replica_lease_name(identity: str) -> str:
    return f"jobgate-replica-{dns_name(identity)}"


class LeaderElector:
    def __init__(self, api: KubeApi, name: str, identity: str, duration_s: int,
                 labels: dict[str, str] | None = None):
        self.api = api
        self.labels = {MANAGED_BY: "jobgate", **(labels or {})}
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.is_leader = False
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    def _lease(self, transitions: int, acquired: datetime, resource_version: str | None = None,
               holder: str | None = None) -> Obj:
        meta: Obj = {"name": self.name, "labels": dict(self.labels)}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.identity if holder is None else holder,
                         "leaseDurationSeconds": self.duration_s,
                         "acquireTime": _micro(acquired), "renewTime": _micro(_now()),
                         "leaseTransitions": transitions}}

    async def try_acquire(self) -> bool:
        """One round: create, renew or take over the lease. True when we hold it."""
        try:
            lease = await self.api.get_lease(self.name)
        except Missing:
            try:
                await self.api.create_lease(self._lease(0, _now()))
                return True
            except Conflict:
                return False
        spec = lease.get("spec", {})
        rv = lease["metadata"]["resourceVersion"]
        transitions = int(spec.get("leaseTransitions") or 0)
        try:
            if spec.get("holderIdentity") == self.identity:
                acquired = _parse(spec.get("acquireTime")) or _now()
                await self.api.replace_lease(self.name, self._lease(transitions, acquired, rv))
                return True
            if lease_expired(lease):
                await self.api.replace_lease(self.name,
                                             self._lease(transitions + 1, _now(), rv))
                log.info("took over the pool leader lease from %r",
                         spec.get("holderIdentity"))
                return True
        except Conflict:
            return False  # another replica moved first
        return False

    async def run(self) -> None:
        while True:
            try:
                leading = await self.try_acquire()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - lose the lead rather than act on a stale belief
                log.warning("leader election failed: %r", e)
                leading = False
            if leading != self.is_leader:
                self.is_leader = leading
                log.info("this replica %s the pool leader",
                         "is now" if leading else "is no longer")
                self.changed.set()
            await asyncio.sleep(self.duration_s / 3)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="k8s:leader")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.is_leader:
            # Hand over at once instead of making the others wait out the lease.
            try:
                lease = await self.api.get_lease(self.name)
                await self.api.replace_lease(self.name, self._lease(
                    int(lease["spec"].get("leaseTransitions") or 0), _now(),
                    lease["metadata"]["resourceVersion"], holder=""))
            except Exception as e:  # noqa: BLE001 - best effort; the lease expires anyway
                log.warning("could not release the leader lease: %r", e)
            self.is_leader = False


class ReplicaHeartbeat:
    """This replica's own lease, renewed while it lives; deleted when it stops."""

    def __init__(self, api: KubeApi, identity: str, duration_s: int):
        self.elector = LeaderElector(api, replica_lease_name(identity), identity, duration_s,
                                     labels={COMPONENT: "replica"})
        self.api = api

    def start(self) -> None:
        self.elector.start()

    async def stop(self) -> None:
        await self.elector.stop()
        await self.api.delete_lease(self.elector.name)

    async def live_replicas(self) -> set[str]:
        listing = await self.api.list_leases(REPLICA_SELECTOR)
        return {item["spec"].get("holderIdentity", "") for item in listing.get("items", [])
                if not lease_expired(item)}
