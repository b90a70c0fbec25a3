"""Recovery after a replica is gone: adopting the worker still running one of its
invocations (waiting for it to end), and ending an earlier attempt's worker before the
invocation runs again."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.errors import WorkerLost
from gateway.executors.kubernetes.endings import PodEndings
from gateway.executors.kubernetes.jobs import WorkerJobs
from gateway.executors.kubernetes.pods import Pod
from gateway.executors.kubernetes.spec import INVOCATION
from gateway.executors.kubernetes.tracker import PodTracker
from gateway.kube.names import label_value
from gateway.models import Reason

log = logging.getLogger("jobgate.k8s")
# How long an earlier attempt's worker pod may take to be gone once its Job is deleted.
END_ATTEMPT_TIMEOUT_S = 120.0
END_ATTEMPT_POLL_S = 0.5


class Recovery:
    def __init__(self, tracker: PodTracker, endings: PodEndings, jobs: WorkerJobs):
        self.tracker = tracker
        self.endings = endings
        self.jobs = jobs

    def _of(self, invocation_id: str) -> list[Pod]:
        return self.tracker.labelled(INVOCATION, label_value(invocation_id))

    async def adopt(self, invocation_id: str, timeout_s: float) -> bool | None:
        pods = [p for p in self._of(invocation_id) if p.ended() is None]
        if not pods:
            return None
        pod = pods[0]
        with self.endings.watch(pod.name) as gone:
            try:
                async with asyncio.timeout(timeout_s):
                    ending = await gone
            except TimeoutError:
                if pod.job:
                    await self.jobs.delete(pod.job)
                raise WorkerLost(f"the worker ran {timeout_s:g}s without a report, and was "
                                 "ended", reason=Reason.Timeout) from None
        if ending.reason == Reason.WorkerLost and not ending.no_fault_of_the_code:
            return True  # it exited: the report it stored, if any, is the outcome
        raise WorkerLost(ending.message, reason=ending.reason,
                         no_fault_of_the_code=ending.no_fault_of_the_code)

    async def end_attempt(self, invocation_id: str) -> bool:
        """The earlier attempt's worker pods are deleted (their Jobs), and waited for until
        none of them runs: gone from the watch, or ended (Succeeded/Failed)."""
        deadline = time.monotonic() + END_ATTEMPT_TIMEOUT_S
        deleted: set[str] = set()
        while True:
            running = [p for p in self._of(invocation_id)
                       if p.phase not in ("Succeeded", "Failed")]
            if not running:
                return True
            for pod in running:
                if pod.job and pod.job not in deleted:
                    deleted.add(pod.job)
                    await self.jobs.delete(pod.job)
            if time.monotonic() > deadline:
                log.warning("invocation %s: the worker of its earlier attempt is still "
                            "there after %.0fs", invocation_id, END_ATTEMPT_TIMEOUT_S)
                return False
            await asyncio.sleep(END_ATTEMPT_POLL_S)
