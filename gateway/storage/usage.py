"""The usage ledger: what each invocation keeps in storage, as empty objects whose keys
say it, so one listing sums a tenant's stored bytes. It is also the expiry index: the
janitor finds what is due at the front of each tenant's listing.

    _usage/{tenant}/{expires_epoch}~{id}~{kind}~{bytes}[~{idempotency key hash}]

``kind`` is when the entry was written:

    a   admitted: the request and room for its record, written with the request; the
        invocation's expiry marker too (it names its Idempotency-Key's entry, if any)
    r   reserved: the artifacts about to be stored (or presigned), before they are
    s   stored: everything the invocation keeps, measured at its end (then r is
        superseded, and a counts nothing: it stays, as the marker)

An invocation counts as its ``s`` entry if it has one, else ``a`` plus its largest ``r``
(a worker asking for URLs twice leaves two). An entry counts until its expiry, the
invocation's own: the bytes come back at the TTL, whenever the janitor deletes the
objects. A listing deletes the superseded ``r`` entries it finds; the janitor deletes the
rest with the invocation. The expiry leads the name, so a tenant's listing is in expiry
order (the due entries first), and one invocation's entries stay adjacent (they share
``{epoch}~{id}~``).

The earlier layout, ``{id}~{kind}~{epoch}~{bytes}`` beside a separate ``_expiry/`` marker,
is still counted (its names sort after these: letters after digits), and its expired
entries are deleted by the listing that finds them, as before.

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
KINDS = frozenset({ADMITTED, RESERVED, STORED})
_SEP = "~"
# A listing reads at most this many entries of one tenant (10 GiB in 4 KiB invocations is
# 2.6 million): bounded, and far above what a refresh interval can afford anyway.
MAX_ENTRIES = 5_000_000

log = logging.getLogger("jobgate.usage")


def entry_key(tenant: str, invocation_id: str, kind: str, expires_at: datetime,
              nbytes: int, idempotency_hash: str | None = None) -> str:
    name = (f"{int(expires_at.timestamp()):010d}{_SEP}{invocation_id}{_SEP}{kind}{_SEP}"
            f"{max(nbytes, 0)}")
    if idempotency_hash is not None:
        name += _SEP + idempotency_hash
    return f"{USAGE}/{tenant}/{name}"


def tenant_prefix(tenant: str) -> str:
    return f"{USAGE}/{tenant}/"


@dataclass(frozen=True)
class Entry:
    key: str
    invocation_id: str
    kind: str
    expires_epoch: int
    nbytes: int
    # The hash of the invocation's Idempotency-Key (its a entry names it; the janitor
    # deletes that entry with the invocation).
    idempotency_hash: str | None = None
    # An entry of the earlier layout (its own expiry marker elsewhere): the listing that
    # finds it expired deletes it.
    legacy: bool = False


def parse_entry(key: str) -> Entry | None:
    """An entry from its key; None for a key that is not one (never trusted blindly)."""
    parts = key.rsplit("/", 1)[-1].split(_SEP)
    try:
        if parts[0].isdigit() and len(parts) in (4, 5) and parts[2] in KINDS:
            return Entry(key, parts[1], parts[2], int(parts[0]), int(parts[3]),
                         parts[4] if len(parts) == 5 else None)
        if len(parts) == 4 and parts[1] in KINDS:
            return Entry(key, parts[0], parts[1], int(parts[2]), int(parts[3]),
                         legacy=True)
    except ValueError:
        return None
    return None


@dataclass(frozen=True)
class Tally:
    """A tenant's stored bytes as one listing found them, and the entries it no longer
    needs (superseded, or expired of the earlier layout)."""

    total: int
    invocations: int
    garbage: list[str]


def tally(keys: Iterable[str], now_epoch: float) -> Tally:
    """The total of ``keys`` in listing order (lexicographic), where an invocation's
    entries are adjacent: one invocation's entries are held at a time, not the whole
    listing's (10^5 kept invocations held 35 MiB)."""
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
            # The a entry is the expiry marker, kept for the janitor (but one of the
            # earlier layout, whose marker is elsewhere).
            garbage.extend(e.key for e in entries
                           if e is not final and (e.kind != ADMITTED or e.legacy))
        else:
            total += sum(e.nbytes for e in entries if e.kind == ADMITTED)
            total += max((e.nbytes for e in entries if e.kind == RESERVED), default=0)

    for key in keys:
        entry = parse_entry(key)
        if entry is None:
            continue
        if entry.expires_epoch <= now_epoch:
            if entry.legacy:  # the janitor deletes the others, after their invocation
                garbage.append(key)
            continue
        if group and (group[0].invocation_id, group[0].legacy) != (entry.invocation_id,
                                                                   entry.legacy):
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
        keys = await self._store.list_keys(tenant_prefix(tenant), limit=MAX_ENTRIES)
        found = tally(keys, now.timestamp())
        if found.garbage:
            try:
                await self._store.delete_keys(found.garbage)
            except Exception:  # the next listing deletes them; the total stands
                log.warning("usage: could not delete %d old entries of %s",
                            len(found.garbage), tenant, exc_info=True)
        return found.total
