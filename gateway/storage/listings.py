"""Sorted directory listings kept while the directory is unchanged, for the local store.

Paging ``GET /v1/invocations`` lists a tenant's directory: one entry per stored
invocation. Listing and sorting 10^5 names costs tens of milliseconds, and every page asked
for it again. A directory's mtime changes whenever an entry is added or removed, so a
listing stays good while the mtime does: a page then costs a stat and a bisect.

The catch is the mtime's resolution: the kernel stamps it from a coarse clock (one tick, up
to 10 ms), so a change made in the same tick as the one before it leaves the mtime as it
was. A listing taken within a tick of the directory's last change could miss a change
that follows it and never notice. Such a listing is used once and not kept: only one taken
well after the mtime it saw is trusted (git's "racy index" rule, for the same reason). Under
a steady stream of writes that is most listings, and the page costs the full listing as
before, without the sort (``heapq.nsmallest`` of the page).

Any process may write the directory: nothing here assumes this process is the only writer.
"""

from __future__ import annotations

import bisect
import heapq
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

# A listing taken at least this long after the mtime it saw is trusted: well over one tick
# of the kernel's coarse clock (4 ms at HZ=250, 10 ms at HZ=100).
RACY_NS = 50_000_000


@dataclass(frozen=True)
class _Listing:
    ino: int
    mtime_ns: int
    names: list[str]  # sorted


class DirectoryListings:
    """Sorted listings of up to ``max_names`` names in all, least recently used dropped
    first. Thread-safe: the local store lists in worker threads."""

    def __init__(self, max_names: int = 250_000) -> None:
        self._max_names = max_names
        self._listings: OrderedDict[str, _Listing] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def children(self, path: str, *, start_after: str | None, limit: int) -> list[str]:
        """The first ``limit`` names in ``path`` after ``start_after``, in sorted order;
        none when ``path`` is missing or not a directory."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        with self._lock:
            kept = self._listings.get(path)
            if kept is not None and (kept.ino, kept.mtime_ns) == (st.st_ino, st.st_mtime_ns):
                self._listings.move_to_end(path)
                return _page(kept.names, start_after, limit)
        listed_at = time.time_ns()
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        if listed_at - st.st_mtime_ns < RACY_NS or len(names) > self._max_names:
            # Not kept: pick the page without sorting everything.
            after = start_after or ""
            return heapq.nsmallest(limit, (n for n in names if n > after))
        names.sort()
        self._keep(path, _Listing(st.st_ino, st.st_mtime_ns, names))
        return _page(names, start_after, limit)

    def _keep(self, path: str, listing: _Listing) -> None:
        with self._lock:
            old = self._listings.pop(path, None)
            if old is not None:
                self._held -= len(old.names)
            self._listings[path] = listing
            self._held += len(listing.names)
            while self._held > self._max_names:
                _, dropped = self._listings.popitem(last=False)
                self._held -= len(dropped.names)

    @property
    def held_names(self) -> int:
        return self._held


def _page(names: list[str], start_after: str | None, limit: int) -> list[str]:
    start = bisect.bisect_right(names, start_after) if start_after else 0
    return names[start:start + limit]
