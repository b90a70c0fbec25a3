"""Fair share of each profile's workers across tenants, in front of ``executor.acquire``,
the same for every executor.

Each profile has ``capacity`` slots (JOBGATE_MAX_CONCURRENCY: what the local pool runs at
once; the Kubernetes executor has no cap of its own, so this is its cap per replica). An
invocation holds a slot from the moment it may claim a worker until its worker is
released. While every slot is taken, the others wait in one FIFO queue per tenant, and a
freed slot goes to the tenant with the least *pass* (stride scheduling): each grant
advances the tenant's pass by ``1 / weight``, so under contention a tenant of weight 2
gets two slots for every one of a tenant of weight 1, and a tenant that was idle joins at
the current virtual time (no banked credit, no starvation). A tenant with 1,000 calls
waiting delays another tenant's single call by one freed slot: about one worker's run.

A tenant at its ``max_running`` (counted across profiles) waits its turn; it is not
refused. Everything is in memory, per replica."""

from __future__ import annotations

import asyncio
import collections
import math

from gateway.errors import QueueFull
from gateway.executors.pool import Ewma
from gateway.tenants.limits import LimitsTable


class Turn:
    """One invocation's place: queued, then holding a slot, then closed (``close`` is
    idempotent and always called: it leaves the queue or frees the slot)."""

    __slots__ = ("_granted", "_queue", "closed", "held_since", "holding", "tenant")

    def __init__(self, queue: _ProfileQueue, tenant: _Tenant):
        self._queue = queue
        self.tenant = tenant
        self.holding = False
        self.closed = False
        self.held_since = 0.0
        self._granted: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until this turn holds a slot (at once when it does)."""
        if self.holding:
            return
        if self._granted is None:
            self._granted = asyncio.get_running_loop().create_future()
        await self._granted

    def granted(self) -> None:
        """Wake the waiter (the queue has counted the slot as held)."""
        if self._granted is not None and not self._granted.done():
            self._granted.set_result(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.leave(self)


class _Tenant:
    """A tenant's counts across profiles (what its limits and its usage read)."""

    __slots__ = ("max_running", "name", "queued", "running", "weight")

    def __init__(self, name: str, max_running: int | None, weight: int):
        self.name = name
        self.max_running = max_running
        self.weight = weight
        self.running = 0
        self.queued = 0

    @property
    def at_max(self) -> bool:
        return self.max_running is not None and self.running >= self.max_running


class _ProfileQueue:
    def __init__(self, share: FairShare, profile: str, capacity: int, queue_size: int):
        self.share = share
        self.profile = profile
        self.capacity = capacity
        self.queue_size = queue_size
        self.running = 0
        self.waiting = 0
        self._queues: dict[str, collections.deque[Turn]] = {}
        self._pass: dict[str, float] = {}
        self._vtime = 0.0
        # How long a slot is held (claim + run + release): what a full queue's Retry-After
        # says to wait for.
        self.hold_s = Ewma(0.2, 1.0)

    def check_room(self) -> None:
        if self.waiting < self.queue_size or (self.running < self.capacity
                                              and not self.waiting):
            return
        raise QueueFull(
            f"the queue of profile {self.profile!r} is full ({self.queue_size} waiting)",
            {"profile": self.profile, "queue_size": self.queue_size},
            retry_after=self.retry_after())

    def retry_after(self) -> int:
        return max(1, math.ceil(self.hold_s.value))

    def free_for(self, tenant: _Tenant) -> bool:
        """A call of the tenant would hold a slot at once: one is free, and nobody who
        may take it waits (calls of tenants at their max_running may not)."""
        if self.running >= self.capacity or tenant.at_max or self.share.frozen:
            return False
        return not self.waiting or all(queue[0].tenant.at_max
                                       for queue in self._queues.values())

    def enter(self, tenant: _Tenant) -> Turn:
        turn = Turn(self, tenant)
        if self.free_for(tenant):
            self._advance(tenant)
            self._hold(turn)  # the uncontended path: no queue, no future
            return turn
        queue = self._queues.get(tenant.name)
        if queue is None:
            # Joining after an idle spell: at the current virtual time, not before it.
            queue = self._queues[tenant.name] = collections.deque()
            self._pass[tenant.name] = max(self._pass.get(tenant.name, 0.0), self._vtime)
        queue.append(turn)
        self.waiting += 1
        tenant.queued += 1
        if self.running < self.capacity:
            self.serve()  # a slot is free, and those waiting may not take it: maybe this
        return turn

    def leave(self, turn: Turn) -> None:
        tenant = turn.tenant
        if turn.holding:
            turn.holding = False
            self.running -= 1
            tenant.running -= 1
            self.hold_s.add(asyncio.get_running_loop().time() - turn.held_since)
            was_at_max = tenant.max_running is not None \
                and tenant.running + 1 >= tenant.max_running
            self.serve()
            if was_at_max:
                self.share.serve_tenant(tenant.name)
            return
        queue = self._queues.get(tenant.name)
        if queue is not None and turn in queue:
            queue.remove(turn)
            self.waiting -= 1
            tenant.queued -= 1
            if not queue:
                del self._queues[tenant.name]

    def serve(self) -> None:
        """Give free slots to the waiting tenants, least pass first."""
        while self.running < self.capacity and self._queues and not self.share.frozen:
            eligible = [name for name, queue in self._queues.items()
                        if not queue[0].tenant.at_max]
            if not eligible:
                return
            name = min(eligible, key=lambda n: (self._pass[n], n))
            queue = self._queues[name]
            turn = queue.popleft()
            if not queue:
                del self._queues[name]
            self.waiting -= 1
            turn.tenant.queued -= 1
            self._advance(turn.tenant)
            self._hold(turn)
            turn.granted()

    def waits_for(self, tenant: str) -> bool:
        return tenant in self._queues

    def _advance(self, tenant: _Tenant) -> None:
        start = max(self._pass.get(tenant.name, 0.0), self._vtime)
        self._vtime = start
        self._pass[tenant.name] = start + 1.0 / tenant.weight

    def _hold(self, turn: Turn) -> None:
        turn.holding = True
        turn.held_since = asyncio.get_running_loop().time()
        self.running += 1
        turn.tenant.running += 1


class FairShare:
    """Every profile's slots and queues, and every tenant's counts, in this replica."""

    def __init__(self, limits: LimitsTable, capacity: int, queue_size: int):
        self.limits = limits
        self.capacity = capacity
        self.queue_size = queue_size
        self._profiles: dict[str, _ProfileQueue] = {}
        self._tenants: dict[str, _Tenant] = {}
        # Shutdown: the calls still waiting are left pending for the next start, so no
        # slot a stopping call frees may start another.
        self.frozen = False

    def freeze(self) -> None:
        self.frozen = True

    def _tenant(self, name: str) -> _Tenant:
        tenant = self._tenants.get(name)
        if tenant is None:
            limits = self.limits.of(name)
            tenant = self._tenants[name] = _Tenant(name, limits.max_running, limits.weight)
        return tenant

    def _queue(self, profile: str) -> _ProfileQueue:
        queue = self._profiles.get(profile)
        if queue is None:
            queue = self._profiles[profile] = _ProfileQueue(self, profile, self.capacity,
                                                            self.queue_size)
        return queue

    def check_room(self, profile: str) -> None:
        """QueueFull when the profile's queue has no room (admission)."""
        self._queue(profile).check_room()

    def enter(self, profile: str, tenant: str) -> Turn:
        """A turn for one invocation, holding a slot at once when one is free and nobody
        waits for it. Counted as queued (or running) from here: admission reads it."""
        return self._queue(profile).enter(self._tenant(tenant))

    def would_wait(self, profile: str, tenant: str) -> bool:
        """A call of the tenant to the profile would wait for a slot."""
        return not self._queue(profile).free_for(self._tenant(tenant))

    def serve_tenant(self, tenant: str) -> None:
        """The tenant fell below its max_running: its waiting calls in any profile may go."""
        for queue in self._profiles.values():
            if queue.waits_for(tenant):
                queue.serve()

    def running(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.running if state else 0

    def queued(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.queued if state else 0

    def tenants(self) -> list[str]:
        """The tenants that have had an invocation here."""
        return list(self._tenants)

    def waiting(self, profile: str) -> int:
        queue = self._profiles.get(profile)
        return queue.waiting if queue else 0

    def retry_after(self, profile: str) -> int:
        """About one hold of a slot of the profile: when its running calls turn over."""
        return self._queue(profile).retry_after()
