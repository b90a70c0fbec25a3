"""Mutual exclusion per key (an Idempotency-Key, say) that costs memory only while a key
is in use."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # the holder and everyone waiting


class KeyedLocks:
    """One lock per key, kept while someone holds it or waits for it: the last to leave
    removes it. So the table never grows with the number of keys ever seen, and a lock is
    never dropped while others still wait on it (a newcomer would get a fresh one and run
    beside them)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        # No await between the lookup and the count: nobody can remove the entry between.
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]
