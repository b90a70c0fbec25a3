"""The usage ledger: what each invocation keeps in storage, as empty objects whose keys
say it, so one listing sums a tenant's stored bytes:

    _usage/{tenant}/{id}~{kind}~{expires_epoch}~{bytes}

``kind`` is when the entry was written:

    a   admitted: the request and room for its record, written with the request
    r   reserved: the artifacts about to be stored (or presigned), before they are
    s   stored: everything the invocation keeps, measured at its end (then a and r are
        superseded)

An invocation counts as its ``s`` entry if it has one, else ``a`` plus its largest ``r``
(a worker asking for URLs twice leaves two). An entry counts until its expiry, the
invocation's own: the bytes come back at the TTL, whenever the janitor deletes the
objects. Superseded and expired entries are deleted by the listing that finds them.

Why entries and not a counter: the sum is exact across replicas and crashes with nothing
but PUT, LIST and DELETE (no compare-and-swap, which not every S3-compatible store has,
and no read-modify-write to lose). An entry is written before the bytes it stands for
(``a`` with the request, ``r`` before an artifact, ``s`` with the final record), so a
crash leaves an over-count (an entry without its bytes), corrected at the TTL, never an
under-count but for the final record's own gather. The cost is one listing request per
1,000 kept invocations of a tenant, each time its total is refreshed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.storage.base import ObjectStore

USAGE = "_usage"
ADMITTED, RESERVED, STORED = "a", "r", "s"
_SEP = "~"
# A listing reads at most this many entries of one tenant (10 GiB in 4 KiB invocations is
# 2.6 million): bounded, and far above what a refresh interval can afford anyway.
MAX_ENTRIES = 5_000_000

log = logging.getLogger("jobgate.usage")


def entry_key(tenant: str, invocation_id: str, kind: str, expires_at: datetime,
              nbytes: int) -> str:
    return (f"{USAGE}/{tenant}/{invocation_id}{_SEP}{kind}{_SEP}"
            f"{int(expires_at.timestamp()):010d}{_SEP}{max(nbytes, 0)}")


@dataclass(frozen=True)
class Entry:
    key: str
    invocation_id: str
    kind: str
    expires_epoch: int
    nbytes: int


def parse_entry(key: str) -> Entry | None:
    """An entry from its key; None for a key that is not one (never trusted blindly)."""
    name = key.rsplit("/", 1)[-1]
    parts = name.split(_SEP)
    if len(parts) != 4 or parts[1] not in (ADMITTED, RESERVED, STORED):
        return None
    try:
        return Entry(key, parts[0], parts[1], int(parts[2]), int(parts[3]))
    except ValueError:
        return None


@dataclass(frozen=True)
class Tally:
    """A tenant's stored bytes as one listing found them, and the entries it no longer
    needs (superseded or expired)."""

    total: int
    invocations: int
    garbage: list[str]


def tally(keys: Iterable[str], now_epoch: float) -> Tally:
    """The total of ``keys`` in listing order (lexicographic), where an invocation's
    entries are adjacent (they share the prefix ``{id}~``): one invocation's entries are
    held at a time, not the whole listing's (10^5 kept invocations held 35 MiB)."""
    total = invocations = 0
    garbage: list[str] = []
    group: list[Entry] = []

    def count(entries: list[Entry]) -> None:
        nonlocal total, invocations
        if not entries:
            return
        invocations += 1
        stored = [e for e in entries if e.kind == STORED]
        if stored:
            final = max(stored, key=lambda e: e.nbytes)
            total += final.nbytes
            garbage.extend(e.key for e in entries if e is not final)
        else:
            total += sum(e.nbytes for e in entries if e.kind == ADMITTED)
            total += max((e.nbytes for e in entries if e.kind == RESERVED), default=0)

    for key in keys:
        entry = parse_entry(key)
        if entry is None:
            continue
        if entry.expires_epoch <= now_epoch:
            garbage.append(key)
            continue
        if group and group[0].invocation_id != entry.invocation_id:
            count(group)
            group = []
        group.append(entry)
    count(group)
    return Tally(total, invocations, garbage)


class UsageLedger:
    def __init__(self, store: ObjectStore):
        self._store = store

    async def record(self, tenant: str, invocation_id: str, kind: str,
                     expires_at: datetime, nbytes: int) -> None:
        await self._store.put(entry_key(tenant, invocation_id, kind, expires_at, nbytes),
                              b"", expires_at=expires_at)

    async def total(self, tenant: str, now: datetime) -> int:
        """The tenant's stored bytes now, from one listing of its entries (in key order,
        as every store lists: what ``tally`` needs)."""
        keys = await self._store.list_keys(f"{USAGE}/{tenant}/", limit=MAX_ENTRIES)
        found = tally(keys, now.timestamp())
        if found.garbage:
            try:
                await self._store.delete_keys(found.garbage)
            except Exception:  # the next listing deletes them; the total stands
                log.warning("usage: could not delete %d old entries of %s",
                            len(found.garbage), tenant, exc_info=True)
        return found.total
