"""A uid of its own for every local worker (root only): the range and who holds which."""

from __future__ import annotations

import os

from gateway.errors import WorkerStartFailed


class UidAllocator:
    """Hands out uids from a range, one per live worker (root only)."""

    def __init__(self, first: int, last: int):
        self._free = list(range(last, first - 1, -1))
        self._used: set[int] = set()

    def take(self) -> int:
        if not self._free:
            raise WorkerStartFailed("no free worker uid: raise JOBGATE_LOCAL_UID_RANGE")
        uid = self._free.pop()
        self._used.add(uid)
        return uid

    def give_back(self, uid: int) -> None:
        if uid in self._used:
            self._used.remove(uid)
            self._free.insert(0, uid)  # reuse last: stray processes get time to die


def parse_uid_range(value: str) -> tuple[int, int] | None:
    if value == "off" or (value == "auto" and os.geteuid() != 0):
        return None
    if value == "auto":
        return 200000, 265535
    first, _, last = value.partition("-")
    lo, hi = int(first), int(last)
    if not 0 < lo <= hi:
        raise ValueError(f"invalid JOBGATE_LOCAL_UID_RANGE {value!r}")
    return lo, hi
