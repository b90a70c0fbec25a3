"""The stored-bytes quota of each tenant (``max_stored_bytes``), held across replicas.

The truth is the usage ledger in the shared store (``gateway.storage.usage``: an entry per
invocation, written before the bytes it stands for, counted until the invocation's TTL).
Each replica keeps, per tenant, the total its last listing found plus what it charged
itself since that listing began; a listing every ``refresh_s`` (for the tenants in use)
brings in what the other replicas stored and what expired. So:

- on one replica the quota is exact: a check and its charge happen with no await between
  them, so concurrent calls cannot both take the last bytes;
- with N replicas, a tenant can go past its quota by what the other N-1 store for it
  between two listings (at most ``2 * refresh_s`` apart), never by more than N-1 times its
  free room at the last listing;
- bytes come back at the invocation's TTL, seen by each replica at its next listing;
- a listing costs one request per 1,000 kept invocations: a tenant is listed at most every
  LISTING_SHARE_INVERSE times as long as its last listing took (so "2 * refresh_s" above
  grows with what the tenant keeps), and a tenant with no limit is listed only for its
  gauge and its /v1/usage (every IDLE_REFRESH_S, and when asked), not on every call.

Nothing needs compare-and-swap (SeaweedFS has conditional PUTs, not every S3-compatible
store does), and a crash loses nothing: the ledger is in the store, and a restarted
replica lists it again. Per-replica counters were the other design: cheaper to read (one
object per replica), but a counter's unflushed deltas die with a crash, and two replicas'
janitors deleting the same invocation would both release it; a periodic reconciliation
from the records would then fight the counters it corrects. The ledger's price is one
listing request per 1,000 kept invocations of a tenant per refresh, for tenants in use."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import Gauge

from gateway.errors import StorageQuotaExceeded, StorageUnavailable
from gateway.storage.usage import RESERVED, UsageLedger
from gateway.supervise import every, forever
from gateway.tenants.directory import OTHER, TenantDirectory
from gateway.tenants.limits import LimitsTable

log = logging.getLogger("jobgate.quota")
# A tenant asked about within this long is in use: its total is listed every refresh.
ACTIVE_S = 60.0
# A named tenant not in use is listed this often (its gauge stays true).
IDLE_REFRESH_S = 60.0
# A tenant of no name (neither configured nor an API key's) not asked about for this
# long is forgotten: their number is not bounded.
FORGET_S = 600.0
# A tenant's listing takes at most this share of the time: listed at most every
# LISTING_SHARE_INVERSE times as long as its last listing took (at 10^5 kept invocations
# a listing is 100 requests on S3; every 2 s it would never stop).
LISTING_SHARE_INVERSE = 10


@dataclass
class _View:
    """One tenant's total as this replica knows it."""

    base: int | None = None  # what the last listing found (None: never listed)
    listed_at: float = 0.0  # when that listing began (monotonic)
    listing_s: float = 0.0  # how long it took
    read_at: float = 0.0  # when its total was last asked for (a limit, /v1/usage)
    charged_at: float = 0.0  # when this replica last charged it
    # What this replica charged since: (when, bytes). Charges made while a listing runs
    # are kept after it (it may have missed them): counted twice at worst, until the next.
    added: list[tuple[float, int]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def total(self) -> int:
        return (self.base or 0) + sum(n for _, n in self.added)


class StorageQuota:
    def __init__(self, ledger: UsageLedger, limits: LimitsTable, gauge: Gauge, *,
                 refresh_s: float, tenants: TenantDirectory):
        self.ledger = ledger
        self.limits = limits
        self.gauge = gauge
        self.refresh_s = refresh_s
        # Tenants the gauge names (configured or with API keys): a bounded set, labelled
        # as every per-tenant metric is.
        self.tenants = tenants
        self.named = frozenset(tenants.names)
        self._views: dict[str, _View] = {}

    def limit(self, tenant: str) -> int | None:
        """The tenant's ``max_stored_bytes`` (None: no bound)."""
        return self.limits.of(tenant).max_stored_bytes

    def _interval(self, view: _View) -> float:
        """How often the tenant is listed while in use: every ``refresh_s``, or less
        often when a listing costs more than its share of the time."""
        return max(self.refresh_s, LISTING_SHARE_INVERSE * view.listing_s)

    async def used(self, tenant: str) -> int:
        """The tenant's stored bytes as this replica knows them (see the module's
        docstring for how exact): listed now if the last listing is too old."""
        view = self._views.setdefault(tenant, _View())
        view.read_at = time.monotonic()
        if view.base is None or time.monotonic() - view.listed_at > 2 * self._interval(view):
            try:
                await self._refresh(tenant, view)
            except StorageUnavailable:
                if view.base is None:
                    raise
                log.warning("quota: listing %s failed; using its total of %.0fs ago",
                            tenant, time.monotonic() - view.listed_at)
        return view.total

    async def reserve(self, tenant: str, nbytes: int) -> None:
        """Count ``nbytes`` more for the tenant, or raise StorageQuotaExceeded if they do
        not fit (nothing counted). The caller then stores them, usage entry first. A
        tenant with no limit is not listed for it: its total (the gauge, /v1/usage) is
        brought up to date by the idle round, or when asked."""
        limit = self.limit(tenant)
        if limit is None:
            view = self._views.setdefault(tenant, _View())
            view.charged_at = time.monotonic()
            view.added.append((view.charged_at, nbytes))
            return
        used = await self.used(tenant)
        if used + nbytes > limit:
            raise StorageQuotaExceeded(
                f"tenant {tenant!r} stores {used} bytes of its {limit}: {nbytes} more do "
                "not fit; stored bytes come back as invocations reach their TTL",
                {"used_bytes": used, "limit_bytes": limit, "requested_bytes": nbytes})
        self._views[tenant].added.append((time.monotonic(), nbytes))

    async def reserve_artifacts(self, tenant: str, invocation_id: str,
                                expires_at: datetime, nbytes: int) -> None:
        """Room for artifacts about to be stored, counted and written to the ledger."""
        await self.reserve(tenant, nbytes)
        await self.ledger.record(tenant, invocation_id, RESERVED, expires_at, nbytes)

    async def _refresh(self, tenant: str, view: _View) -> None:
        asked = time.monotonic()
        async with view.lock:
            if view.base is not None and view.listed_at >= asked:
                return  # another call listed it while this one waited
            started = time.monotonic()
            total = await self.ledger.total(tenant, datetime.now(UTC))
            view.base, view.listed_at = total, started
            view.listing_s = time.monotonic() - started
            view.added = [(at, n) for at, n in view.added if at >= started]

    # -- the background listing -----------------------------------------------------------

    async def refresh(self) -> None:
        """One round: list the tenants in use (and named ones not listed for a while),
        forget unnamed idle ones, set the gauge."""
        now = time.monotonic()
        for tenant in self.named:
            self._views.setdefault(tenant, _View())
        for tenant, view in list(self._views.items()):
            active = now - view.read_at < ACTIVE_S
            idle_for = now - max(view.read_at, view.charged_at)
            # A cheap listing is done every round, as before: rounds come every refresh_s,
            # and comparing their jitter with the interval would skip every other one.
            cheap = LISTING_SHARE_INVERSE * view.listing_s <= self.refresh_s
            if tenant not in self.named and idle_for > FORGET_S:
                del self._views[tenant]
            elif (view.base is None or now - view.listed_at > IDLE_REFRESH_S
                  or (active and (cheap or now - view.listed_at >= self._interval(view)))):
                await self._refresh(tenant, view)
        self._set_gauge()

    def _set_gauge(self) -> None:
        per_label: dict[str, int] = dict.fromkeys(self.named, 0)
        per_label[OTHER] = 0
        for tenant, view in self._views.items():
            per_label[self.tenants.label(tenant)] += view.total
        for label, value in per_label.items():
            self.gauge.labels(label).set(value)

    async def loop(self) -> None:
        """Never dies: a failed round is logged and the next comes on schedule."""
        await forever("stored-bytes listing", self.refresh, every(self.refresh_s), log)
