"""Waiting for a worker pod to end without a report: futures the watch resolves with how
it ended, for the call running on it and for the recovery that adopted it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.executors.kubernetes.tracker import Change, PodEvent
from gateway.models import Reason


@dataclass(frozen=True)
class Ending:
    """How a watched worker ended without a report."""

    reason: Reason
    message: str
    no_fault_of_the_code: bool  # ended from outside: a retry may follow


DELETED = Ending(Reason.WorkerLost, "the worker pod was deleted", True)


class PodEndings:
    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Ending]] = {}

    @contextlib.contextmanager
    def watch(self, pod: str) -> Iterator[asyncio.Future[Ending]]:
        """A future resolved when ``pod`` ends, while the block runs."""
        ending: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self._waiting[pod] = ending
        try:
            yield ending
        finally:
            if self._waiting.get(pod) is ending:
                del self._waiting[pod]

    def observe(self, event: PodEvent) -> None:
        ending = self._waiting.get(event.pod.name)
        if ending is None or ending.done():
            return
        if event.change is Change.DELETED:
            ending.set_result(DELETED)
        elif (failure := event.pod.ended()) is not None:
            ending.set_result(Ending(failure.reason, failure.message,
                                     event.pod.no_fault_of_the_code))
