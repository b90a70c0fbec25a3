"""Membership on Kubernetes: replica presence and leader election through
coordination.k8s.io/v1 Leases.

One Lease elects the replica that leads: it maintains the pools and takes over the work
of replicas that are gone (every replica serves and claims). Each replica also renews a
Lease of its own while it lives, and deletes it when it stops: a replica whose Lease is
missing or expired is gone, and its claims and unfinished invocations are the leader's to
clean up or finish."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta

from gateway.config.settings import Settings
from gateway.ids import new_token
from gateway.kube.api import connect
from gateway.kube.base import Conflict, KubeApi, Missing
from gateway.kube.names import COMPONENT, MANAGED_BY, dns_name
from gateway.kube.objects import Obj, parse_time
from gateway.membership.base import Membership

log = logging.getLogger("jobgate.membership.leases")
REPLICA_SELECTOR = f"{MANAGED_BY}=jobgate,{COMPONENT}=replica"


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_expired(lease: Obj, now: datetime | None = None) -> bool:
    spec = lease.get("spec", {})
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
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
                acquired = parse_time(spec.get("acquireTime")) or _now()
                await self.api.replace_lease(self.name, self._lease(transitions, acquired, rv))
                return True
            if lease_expired(lease):
                await self.api.replace_lease(self.name,
                                             self._lease(transitions + 1, _now(), rv))
                log.info("took over lease %s from %r", self.name,
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
                log.info("this replica %s the holder of lease %s",
                         "is now" if leading else "is no longer", self.name)
            await asyncio.sleep(self.duration_s / 3)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"lease:{self.name}")

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
        try:
            await self.api.delete_lease(self.elector.name)
        except Missing:
            pass
        except Exception as e:  # noqa: BLE001 - a stop must finish: the lease expires anyway
            # Seen on a rollout: a terminating pod's ServiceAccount token is refused (401).
            log.warning("could not delete this replica's lease %s (%s); it expires in %ss",
                        self.elector.name, e, self.elector.duration_s)

    async def live_replicas(self) -> set[str]:
        listing = await self.api.list_leases(REPLICA_SELECTOR)
        return {item["spec"].get("holderIdentity", "") for item in listing.get("items", [])
                if not lease_expired(item)}


class LeaseMembership(Membership):
    name = "leases"

    def __init__(self, settings: Settings, *, api: KubeApi | None = None):
        """``api``: the Kubernetes API to use (a fake, in tests); by default a client
        configured from the settings at start, and closed at stop."""
        self.settings = settings
        self.identity = settings.replica_id or f"{os.uname().nodename}-{new_token(4)}"
        self._given_api = api
        self.api: KubeApi | None = None
        self.leader: LeaderElector | None = None
        self.heartbeat: ReplicaHeartbeat | None = None

    async def start(self) -> None:
        settings = self.settings.kubernetes
        self.api = self._given_api or await connect(settings.kubeconfig, settings.namespace)
        duration = settings.lease_duration_s
        self.heartbeat = ReplicaHeartbeat(self.api, self.identity, duration)
        self.leader = LeaderElector(self.api, settings.leader_lease, self.identity,
                                    duration)
        # Present before it accepts anything, so the leader never takes its work for a
        # gone replica's (the renewal loop keeps trying if this first round fails).
        try:
            await self.heartbeat.elector.try_acquire()
        except Exception as e:  # noqa: BLE001 - the loop below retries
            log.warning("could not announce this replica yet: %r", e)
        self.heartbeat.start()
        self.leader.start()

    async def stop(self) -> None:
        # Hand the lead over at once, then say we are gone: our work is the next leader's.
        if self.leader is not None:
            await self.leader.stop()
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        if self.api is not None and self._given_api is None:
            await self.api.close()

    @property
    def leads(self) -> bool:
        return self.leader is not None and self.leader.is_leader

    async def live_replicas(self) -> set[str]:
        assert self.heartbeat is not None
        return await self.heartbeat.live_replicas() | {self.identity}

    async def gone(self, replicas: set[str]) -> set[str]:
        return replicas - await self.live_replicas()

    @property
    def api_calls(self) -> dict[str, int]:
        return dict(self.api.calls) if self.api else {}
