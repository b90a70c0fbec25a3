"""Deletes that may wait a moment, gathered into one request: a finished invocation's
pending marker, say, which costs a DeleteObjects of its own on S3 when deleted at once.

Safe to lose (a crash before the flush): what they delete must be something a later
pass deletes again (recovery finds a finished invocation's marker and drops it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.errors import JobgateError
from gateway.storage.base import ObjectStore

log = logging.getLogger("jobgate.storage")
# How long a delete may wait for others to share its request.
FLUSH_EVERY_S = 0.5
# Kept for the next flush when one fails; past this many, the oldest wait for recovery.
MAX_KEPT = 10_000


class DeferredDeletes:
    def __init__(self, store: ObjectStore, every_s: float = FLUSH_EVERY_S):
        self._store = store
        self._every_s = every_s
        self._keys: dict[str, None] = {}  # insertion-ordered, without duplicates
        self._flusher: asyncio.Task[None] | None = None

    def add(self, key: str) -> None:
        """Delete ``key`` within about ``every_s``, with the others due then."""
        self._keys[key] = None
        self._trim()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._later(), name="deferred-deletes")

    async def _later(self) -> None:
        # Until nothing waits: keys added while a flush awaits its request, and keys a
        # failed flush kept, go with the next round. (No await between the check and
        # the end of the task, so an add() after it starts a new one.)
        while self._keys:
            await asyncio.sleep(self._every_s)
            await self.flush()

    async def flush(self) -> None:
        """Delete everything due now; on failure they stay for the next flush."""
        keys, self._keys = list(self._keys), {}
        if not keys:
            return
        try:
            await self._store.delete_keys(keys)
        except (JobgateError, OSError) as e:
            log.warning("%d deferred delete(s) failed (%s); trying again later", len(keys), e)
            self._keys = {**dict.fromkeys(keys), **self._keys}
            self._trim()

    def _trim(self) -> None:
        while len(self._keys) > MAX_KEPT:
            del self._keys[next(iter(self._keys))]

    async def close(self) -> None:
        """The last flush (at shutdown): nothing waits any more."""
        if self._flusher is not None and self._flusher is not asyncio.current_task():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
