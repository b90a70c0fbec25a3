"""Running one call on the worker it claimed: the assignment over the runner protocol while
the watch keeps an eye on the pod (a pod that dies, is evicted or OOM-killed ends the wait
at once, with the reason its status gives), then cancel and release."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gateway.errors import WorkerLost
from gateway.executors.base import WorkerHandle
from gateway.executors.kubernetes.endings import Ending, PodEndings
from gateway.executors.kubernetes.jobs import WorkerJobs
from gateway.executors.live_output import LiveOutput
from gateway.executors.runner_client import RunnerClient
from gateway.models import Assignment, Reason, WorkerReport

# How long the pod's status may take to explain a broken connection, or a report to
# arrive once the pod is seen to have ended.
LOST_POD_SETTLE_S = 5.0


class Runs:
    def __init__(self, client: RunnerClient, endings: PodEndings, jobs: WorkerJobs):
        self.client = client
        self.endings = endings
        self.jobs = jobs
        self._cancelled: set[str] = set()  # workers this replica stopped (a cancel)

    async def run(self, worker: WorkerHandle, assignment: Assignment,
                  output: LiveOutput | None = None) -> WorkerReport:
        with self.endings.watch(worker.id) as gone:
            call = asyncio.create_task(self.client.run(worker, assignment, output))
            try:
                report = await self._report(call, gone)
                if report.reason == Reason.Cancelled and worker.id not in self._cancelled:
                    # Stopped (SIGTERM) without a cancel of ours: its pod is being deleted
                    # by a drain, an eviction, an operator or its node's loss, not by its
                    # code.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LOST_POD_SETTLE_S):
                            ending = await asyncio.shield(gone)
                        if ending.no_fault_of_the_code:
                            raise WorkerLost(ending.message, reason=ending.reason,
                                             no_fault_of_the_code=True)
                return report
            finally:
                if not call.done():
                    call.cancel()

    async def _report(self, call: asyncio.Task[WorkerReport],
                      gone: asyncio.Future[Ending]) -> WorkerReport:
        waiting: set[asyncio.Future[Any]] = {call, gone}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if call in done:
            try:
                return call.result()
            except WorkerLost as e:
                # The connection broke: the pod's status says why, once it is seen.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LOST_POD_SETTLE_S):
                        ending = await asyncio.shield(gone)
                    raise WorkerLost(ending.message, reason=ending.reason,
                                     no_fault_of_the_code=ending.no_fault_of_the_code) from e
                raise
        # The pod ended first. A worker that reports exits right after: its answer may
        # still be on the way, so give it a moment before calling the worker lost.
        with contextlib.suppress(TimeoutError, WorkerLost):
            async with asyncio.timeout(LOST_POD_SETTLE_S):
                return await asyncio.shield(call)
        call.cancel()
        ending = gone.result()
        raise WorkerLost(ending.message, reason=ending.reason,
                         no_fault_of_the_code=ending.no_fault_of_the_code)

    async def cancel(self, worker: WorkerHandle) -> None:
        if job := worker.meta.get("job"):
            self._cancelled.add(worker.id)
            await self.jobs.delete(job)

    async def release(self, worker: WorkerHandle, report: WorkerReport | None) -> None:
        """A worker that reported exits by itself and its Job is removed by its TTL: no API
        write. A lost one is deleted, so nothing of it lingers."""
        self._cancelled.discard(worker.id)
        job = worker.meta.get("job")
        if report is None and job:
            self.jobs.delete_soon(job)
