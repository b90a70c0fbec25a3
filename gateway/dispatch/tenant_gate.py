"""A tenant's limits at admission, before anything is stored: the longest TTL it may ask
for (422), how many of its calls may wait (429 TenantQueueFull), how fast it may submit
(429 RateLimited, a token bucket per tenant), and the room in the profile's queue (429
QueueFull). Per replica, in memory. (max_running is the fair share's: a tenant at its
max waits its turn, it is not refused.)"""

from __future__ import annotations

import dataclasses
import math

from gateway.dispatch.fair_share import FairShare
from gateway.dispatch.plan import Plan
from gateway.errors import RateLimited, TenantQueueFull, TtlTooLong
from gateway.executors.pool import RateLimiter
from gateway.models import InvocationCreate
from gateway.tenants.limits import LimitsTable, TenantLimits


def burst_of(limits: TenantLimits) -> int | None:
    """The bucket's depth: as configured, else one second's worth of submissions."""
    if limits.rate_per_s is None:
        return None
    return limits.burst or max(1, math.ceil(limits.rate_per_s))


class TenantGate:
    def __init__(self, limits: LimitsTable, share: FairShare):
        self.limits = limits
        self.share = share
        # One bucket per tenant with a rate; tenants are authenticated (their API keys
        # are configured), so this stays as small as the key ring.
        self._buckets: dict[str, RateLimiter] = {}

    def plan_for(self, tenant: str, req: InvocationCreate, plan: Plan) -> Plan:
        """The plan within the tenant's max_ttl_s: an explicit ttl_s above it is refused;
        the gateway's default is lowered to it."""
        max_ttl = self.limits.of(tenant).max_ttl_s
        if max_ttl is None or plan.ttl_s <= max_ttl:
            return plan
        if req.ttl_s is not None:
            raise TtlTooLong(f"ttl_s {req.ttl_s} is above this tenant's maximum of "
                               f"{max_ttl} (its max_ttl_s)", {"max_ttl_s": max_ttl})
        return dataclasses.replace(plan, ttl_s=max_ttl)

    def admit(self, tenant: str, profile: str) -> None:
        """Raise the 429 this submission gets, if any. The queue checks come first, so a
        refused submission spends no token of the rate."""
        limits = self.limits.of(tenant)
        if limits.max_queued is not None and self.share.queued(tenant) >= limits.max_queued \
                and self.share.would_wait(profile, tenant):
            raise TenantQueueFull(
                f"this tenant has {limits.max_queued} invocations waiting, its max_queued",
                {"max_queued": limits.max_queued},
                retry_after=self.share.retry_after(profile))
        self.share.check_room(profile)
        burst = burst_of(limits)
        if limits.rate_per_s is None or burst is None:
            return
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = RateLimiter(limits.rate_per_s, burst)
        if not bucket.try_take():
            raise RateLimited(
                f"this tenant submits faster than its rate of {limits.rate_per_s:g} a "
                f"second (burst {burst})",
                {"rate_per_s": limits.rate_per_s, "burst": burst},
                retry_after=max(1, math.ceil(bucket.wait_time())))
