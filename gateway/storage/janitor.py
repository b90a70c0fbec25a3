"""The janitor: deletes every invocation past its TTL, with everything it owns, through
the expiry index (the usage ledger's entries, in expiry order per tenant: so a sweep
reads what is due and one page per tenant that keeps anything, never the whole store)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from gateway.metrics.registry import Metrics
from gateway.storage.records import InvocationStore
from gateway.supervise import every, forever

log = logging.getLogger("jobgate.janitor")


class Janitor:
    def __init__(self, records: InvocationStore, metrics: Metrics, interval_s: float):
        self.records = records
        self.metrics = metrics
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete what is due at ``now``; returns the number of objects deleted."""
        now = now or datetime.now(UTC)
        deleted = 0
        async for due in self.records.due(now, limit=500):
            deleted += await self.records.delete_expired(due)
        if deleted:
            self.metrics.janitor_deleted.inc(deleted)
            log.info("janitor: deleted %d expired object(s)", deleted)
        return deleted

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="janitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        """Never dies: a failed sweep is logged and the next one comes on schedule."""
        await forever("janitor sweep", self.sweep, every(self.interval_s), log)
