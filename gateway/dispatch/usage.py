"""A tenant's usage: what its fair share holds here (running, queued: this replica's
counts) and what it stores (the stored-bytes quota's view, across replicas), against the
limits that apply to it."""

from __future__ import annotations

import asyncio

from gateway.dispatch.parts import Parts
from gateway.dispatch.tenant_gate import burst_of
from gateway.models import Usage, UsageLimits


async def usage_of(parts: Parts, tenant: str) -> Usage:
    limits, share = parts.limits.of(tenant), parts.share
    max_ttl = min(limits.max_ttl_s or parts.settings.max_ttl_s, parts.settings.max_ttl_s)
    return Usage(
        tenant=tenant, replica=parts.membership.identity, running=share.running(tenant),
        queued=share.queued(tenant), stored_bytes=await parts.quota.used(tenant),
        limits=UsageLimits(
            max_running=limits.max_running, max_queued=limits.max_queued,
            rate_per_s=limits.rate_per_s, burst=burst_of(limits),
            max_stored_bytes=limits.max_stored_bytes, max_ttl_s=max_ttl,
            weight=limits.weight))


async def every_usage(parts: Parts) -> list[Usage]:
    """Every configured tenant's, and any other with invocations here (none can
    authenticate without a key, so this is the configured ones)."""
    names = sorted({*parts.tenants.names, *parts.share.tenants()})
    return list(await asyncio.gather(*(usage_of(parts, name) for name in names)))


def by_label(parts: Parts) -> dict[str, tuple[int, int]]:
    """(running, queued) by metrics label: every configured tenant (0 when idle), and
    ``other`` for the sum of any else."""
    share = parts.share
    counts = dict.fromkeys(parts.tenants.names, (0, 0))
    for tenant in sorted({*parts.tenants.names, *share.tenants()}):
        label = parts.tenants.label(tenant)
        running, queued = counts.get(label, (0, 0))
        counts[label] = (running + share.running(tenant), queued + share.queued(tenant))
    return counts
