"""The invocations this replica runs (or adopts after a crash), by id: their handles."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from gateway.dispatch.fair_share import Turn
from gateway.dispatch.plan import Plan
from gateway.executors.base import WorkerHandle
from gateway.executors.live_output import LiveOutput
from gateway.models import InvocationCreate, InvocationRecord
from gateway.supervise import TaskSet

log = logging.getLogger("jobgate.dispatch")


@dataclass
class LiveInvocation:
    record: InvocationRecord
    plan: Plan
    request: InvocationCreate
    accepted_at: float  # monotonic
    done: asyncio.Future[InvocationRecord]
    task: asyncio.Task[None] | None = None
    worker: WorkerHandle | None = None
    cancel_requested: bool = False
    abandoned: bool = False  # shutdown: left pending in storage, resumed by the next start
    # What its admission charged the tenant's stored-bytes quota (0: not known, as for a
    # recovered one): its final usage entry is written only when it keeps more.
    charged: int = 0
    # Its place in the profile's fair share (None: adopted by recovery, never queued here).
    turn: Turn | None = None
    # Its output while it runs, for followers (empty unless someone follows).
    output: LiveOutput = field(default_factory=LiveOutput)
    # Record writes not waited for (the 'running' state): settled before any write that
    # must land after them.
    pending_writes: TaskSet = field(init=False)

    def __post_init__(self) -> None:
        self.pending_writes = TaskSet(f"invocation {self.record.id}: a record write", log)


class LiveTable:
    """Runs are tasks owned by this table, not by the HTTP request: a sync caller that goes
    away does not stop its invocation, and its result is stored all the same."""

    def __init__(self) -> None:
        self._live: dict[str, LiveInvocation] = {}
        self._adopting: dict[str, asyncio.Task[None]] = {}

    def add(self, live: LiveInvocation) -> None:
        self._live[live.record.id] = live

    def remove(self, invocation_id: str) -> None:
        self._live.pop(invocation_id, None)

    def get(self, invocation_id: str, tenant: str | None = None) -> LiveInvocation | None:
        """The live handle, if it runs here (and, given a tenant, is that tenant's)."""
        live = self._live.get(invocation_id)
        if live is None or (tenant is not None and live.record.tenant != tenant):
            return None
        return live

    def __contains__(self, invocation_id: object) -> bool:
        return invocation_id in self._live

    def __len__(self) -> int:
        return len(self._live)

    def busy(self, invocation_id: str) -> bool:
        """Running here, or being adopted by recovery."""
        return invocation_id in self._live or invocation_id in self._adopting

    def adopt(self, invocation_id: str, task: asyncio.Task[None]) -> None:
        self._adopting[invocation_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._adopting.get(invocation_id) is done:
                del self._adopting[invocation_id]

        task.add_done_callback(forget)

    def all(self) -> list[LiveInvocation]:
        return list(self._live.values())

    def tasks(self) -> list[asyncio.Task[None]]:
        return [live.task for live in self._live.values() if live.task is not None] \
            + list(self._adopting.values())
