"""Running an attempt again when its worker was lost through no fault of the code: up to
the invocation's ``max_attempts``, never while an earlier attempt may still run."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime

from gateway.dispatch.live import LiveInvocation
from gateway.errors import JobgateError, WorkerFailure
from gateway.executors.base import Executor
from gateway.executors.runner_client import parse_report
from gateway.models import InvocationRecord, LostAttempt, Reason, Status, WorkerReport
from gateway.storage.records import InvocationStore

log = logging.getLogger("jobgate.dispatch")


class Reruns:
    def __init__(self, executor: Executor, records: InvocationStore):
        self.executor = executor
        self.records = records

    def may_run_again(self, live: LiveInvocation, lost: WorkerFailure) -> bool:
        record = live.record
        return (lost.no_fault_of_the_code and not live.cancel_requested
                and max(record.attempts, 1) < record.max_attempts)

    async def stored_report(self, record: InvocationRecord) -> WorkerReport | None:
        """The report the worker stored itself, None if there is none; BadWorkerReport
        if it is not one this gateway can use."""
        raw = await self.records.worker_report(record)
        if raw is None:
            return None
        return parse_report(raw, f"the stored report of {record.id}")

    async def stored_outcome(self, record: InvocationRecord) -> WorkerReport | None:
        """The report a worker stored itself, if it says how the code ended. Asked only
        where no cancel was requested: a 'Cancelled' then is the worker stopped from
        outside (its pod deleted, or ended before a retry), not an outcome."""
        report = await self.stored_report(record)
        return None if report is not None and report.reason == Reason.Cancelled else report

    async def prepare(self, live: LiveInvocation, lost: WorkerFailure) -> WorkerReport | None:
        """Before an invocation runs again: its earlier attempt's worker is ended and
        waited for, so the two never overlap. If it stored its report after all, that is
        the outcome (returned); else the attempt is recorded as lost, and the invocation
        is queued again (None; the caller stores that). Raises ``lost`` when the earlier
        worker cannot be made sure gone."""
        record = live.record
        if not await self.executor.end_attempt(record.id):
            raise lost
        report = await self.stored_outcome(record)
        if report is not None:
            return report
        with contextlib.suppress(JobgateError, OSError):  # never taken for the next one's
            await self.records.drop_worker_report(record)
        record.attempts = max(record.attempts, 1)
        record.attempt_history.append(LostAttempt(
            attempt=record.attempts, worker=record.worker, started_at=record.started_at,
            ended_at=datetime.now(UTC), reason=Reason(lost.reason), message=str(lost)))
        log.warning("invocation %s: attempt %d of %d lost (%s); running it again", record.id,
                    record.attempts, record.max_attempts, lost)
        record.status, record.started_at = Status.queued, None
        record.worker, record.warm = None, None
        # The earlier attempt's 'running' must not land after this.
        await live.pending_writes.settle()
        return None
