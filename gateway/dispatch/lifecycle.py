"""The run of one accepted invocation, top to bottom: claim a worker (warm, or queue for a
cold one) -> send the assignment -> apply the report -> store outputs -> charge what it
keeps (the tenant's quota) and store the final record -> release the worker -> answer
(the waiting caller) -> callback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime

from gateway.callbacks.delivery import CallbackDeliverer
from gateway.dispatch.charges import settle
from gateway.dispatch.fair_share import Turn
from gateway.dispatch.live import LiveInvocation, LiveTable
from gateway.dispatch.outputs import Outputs
from gateway.dispatch.parts import Parts
from gateway.dispatch.plan import Plan, make_assignment
from gateway.dispatch.results import apply_report, fail, with_storage_retries
from gateway.dispatch.retries import Reruns
from gateway.errors import (
    AlreadyFinished,
    ExecutorUnavailable,
    JobgateError,
    StorageUnavailable,
    WorkerFailure,
    WorkerLost,
)
from gateway.executors.base import WorkerHandle
from gateway.executors.runner_client import WorkerUnreachable
from gateway.models import InvocationCreate, InvocationRecord, Reason, Status, WorkerReport

log = logging.getLogger("jobgate.dispatch")
UNREACHABLE_RETRIES = 3
EXECUTOR_RETRY_BUDGET_S = 30.0


class Lifecycle:
    def __init__(self, parts: Parts, outputs: Outputs, reruns: Reruns,
                 deliverer: CallbackDeliverer, live: LiveTable):
        self.parts = parts
        self.outputs = outputs
        self.reruns = reruns
        self.deliverer = deliverer
        self.live = live
        # Resolved when the gateway stops and its callers' waits must end (made in the
        # event loop, on first use: the gateway is built before the loop runs).
        self._waits_over: asyncio.Future[None] | None = None

    @property
    def waits_over(self) -> asyncio.Future[None]:
        if self._waits_over is None:
            self._waits_over = asyncio.get_running_loop().create_future()
        return self._waits_over

    def end_waits(self) -> None:
        """Every wait, current and later, ends now: a stopping server answers its waiting
        callers (202 and the invocation's URL) before it would have to cut them off."""
        if not self.waits_over.done():
            self.waits_over.set_result(None)

    def start(self, record: InvocationRecord, plan: Plan, req: InvocationCreate,
              turn: Turn | None = None) -> LiveInvocation:
        """Run the invocation in its turn of the fair share (admission's, or a new one:
        recovered work queues like any other)."""
        live = LiveInvocation(record=record, plan=plan, request=req,
                              accepted_at=time.monotonic(),
                              done=asyncio.get_running_loop().create_future(),
                              turn=turn or self.parts.share.enter(plan.profile.name,
                                                                  record.tenant))
        self.live.add(live)
        live.task = asyncio.create_task(self._run(live), name=f"invocation:{record.id}")
        return live

    async def _run(self, live: LiveInvocation) -> None:
        record = live.record
        report: WorkerReport | None = None
        try:
            report = await self._run_attempts(live)
            self.apply(live, report)
            await with_storage_retries(record, lambda: self.outputs.store(record, report),
                                       self.parts.settings.storage_retry_budget_s)
        except asyncio.CancelledError:
            if live.abandoned:
                self.live.remove(record.id)
                raise
            # Cancelled while queued (no worker yet), or the gateway is stopping.
            if live.cancel_requested:
                fail(record, Reason.Cancelled, "the invocation was cancelled")
            else:
                fail(record, Reason.WorkerLost, "the gateway shut down during the run")
        except WorkerLost as e:
            if live.cancel_requested:
                fail(record, Reason.Cancelled, "the invocation was cancelled")
            else:
                fail(record, e.reason, str(e))
        except WorkerFailure as e:
            fail(record, e.reason, str(e))
        except StorageUnavailable as e:  # reading a report the worker stored
            fail(record, Reason.StorageUnavailable, e.message)
        except ExecutorUnavailable as e:  # past its retries: not a bug, a state
            fail(record, Reason.WorkerLost if live.worker else Reason.StartFailed,
                 f"the executor was unavailable: {e.message}")
        except Exception as e:  # a bug of ours: the invocation ends recorded all the same
            log.exception("invocation %s: an internal error of the gateway ended it",
                          record.id)
            fail(record, Reason.InternalError,
                 f"the gateway failed while running the invocation ({type(e).__name__}); "
                 "this is a bug in the gateway, and its log has the details")
        finally:
            if not live.abandoned:
                await self.finish(live, live.worker, report)
            if live.turn is not None:
                live.turn.close()  # abandoned (shutdown), or finish failed

    async def _run_attempts(self, live: LiveInvocation) -> WorkerReport:
        """Attempt after attempt, while workers are lost through no fault of the code and
        attempts remain (``max_attempts``); any other loss ends the invocation."""
        while True:
            try:
                return await self._claim_and_run(live)
            except WorkerLost as lost:
                if not self.reruns.may_run_again(live, lost):
                    raise
                worker, live.worker = live.worker, None
                if worker is not None:
                    await self.parts.executor.release(worker, None)
                report = await self.reruns.prepare(live, lost)
                if report is not None:
                    return report
                with contextlib.suppress(JobgateError, OSError):
                    await self.parts.records.save(live.record)

    async def _claim_and_run(self, live: LiveInvocation) -> WorkerReport:
        record, plan = live.record, live.plan
        settings, executor, metrics = self.parts.settings, self.parts.executor, self.parts.metrics
        number = len(record.attempt_history) + 1  # of this attempt (a retry: 2 and up)
        assignment = make_assignment(plan, live.request, record.id, settings, number)
        await self.outputs.prepare(assignment, record, plan)
        for attempt in range(UNREACHABLE_RETRIES):
            worker = await self._acquire(live)
            live.worker = worker
            claimed = time.monotonic()
            if attempt == 0:
                record.timings.queued_ms = round((claimed - live.accepted_at) * 1000, 3)
                metrics.phase.labels(record.profile, "queue").observe(
                    claimed - live.accepted_at)
            metrics.starts.labels(record.profile, "warm" if worker.warm else "cold").inc()
            record.status, record.started_at = Status.running, datetime.now(UTC)
            record.warm, record.worker = worker.warm, worker.id
            record.attempts = number
            self._save_in_background(live)
            try:
                report = await executor.run(worker, assignment, live.output)
            except WorkerUnreachable as e:
                # The code never started: another worker may take it.
                log.warning("invocation %s: %s; trying another worker", record.id, e)
                await executor.release(worker, None)
                live.worker = None
                if live.cancel_requested or attempt == UNREACHABLE_RETRIES - 1:
                    raise
                continue
            except WorkerLost:
                # The answer was lost, but the worker may have stored its report first.
                stored = None
                if assignment.uploads is not None and not live.cancel_requested:
                    stored = await self.reruns.stored_outcome(record)
                if stored is None:
                    raise
                report = stored
            prepare = report.timings.get("prepare_ms", 0.0)
            run_ms = report.timings.get("run_ms")
            record.timings.start_ms = round((time.monotonic() - claimed) * 1000
                                            - (run_ms or 0.0), 3) if run_ms else prepare
            record.timings.run_ms = run_ms
            metrics.phase.labels(record.profile, "start").observe(
                (record.timings.start_ms or 0) / 1000)
            if run_ms is not None:
                metrics.phase.labels(record.profile, "run").observe(run_ms / 1000)
            return report
        raise WorkerLost("no worker could be reached")

    async def _acquire(self, live: LiveInvocation) -> WorkerHandle:
        """A worker for the invocation, in its turn of the fair share; while the executor
        is unavailable (its API refusing or unreachable for a moment, as in a rollout),
        tried again with backoff for up to EXECUTOR_RETRY_BUDGET_S: no code has run yet,
        so waiting is safe."""
        if live.turn is not None:
            await live.turn.wait()
        started, delay = time.monotonic(), 0.25
        while True:
            try:
                return await self.parts.executor.acquire(live.plan.profile, live.record.id)
            except ExecutorUnavailable as e:
                if time.monotonic() - started > EXECUTOR_RETRY_BUDGET_S:
                    raise
                log.warning("invocation %s: %s; claiming again in %.1fs", live.record.id,
                            e.message, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    def apply(self, live: LiveInvocation, report: WorkerReport) -> None:
        apply_report(live.record, report, timeout_s=live.plan.timeout_s,
                     cancel_requested=live.cancel_requested,
                     outputs_lost=self.outputs.lost(report))

    def _save_in_background(self, live: LiveInvocation) -> None:
        """The 'running' state is worth recording, not worth waiting for. (Nor may it be
        skipped for a short call: after a crash, recovery runs a record that says
        'queued' as one that never ran.)"""
        snapshot = live.record.model_copy(deep=True)

        async def save() -> None:
            with contextlib.suppress(JobgateError, OSError):
                await self.parts.records.save(snapshot)

        live.pending_writes.spawn(save())

    async def finish(self, live: LiveInvocation, worker: WorkerHandle | None,
                     report: WorkerReport | None) -> None:
        """Store the final record, release the worker, answer the waiter, queue the
        callback."""
        record, records, metrics = live.record, self.parts.records, self.parts.metrics
        record.finished_at = datetime.now(UTC)
        total = time.monotonic() - live.accepted_at
        record.timings.total_ms = round(total * 1000, 3)
        await live.pending_writes.settle()

        async def store_final() -> None:
            kept = await settle(record, records, self.parts.quota,
                                workers_upload=self.outputs.workers_upload,
                                charged=live.charged)
            await records.finish(record, stored_bytes=kept)

        try:
            await with_storage_retries(record, store_final,
                                       self.parts.settings.storage_retry_budget_s,
                                       until_stored=True)
        except Exception:  # the pending marker stays: recovery retries it
            log.exception("invocation %s: storing the result failed", record.id)
        if worker is not None:
            try:
                await self.parts.executor.release(worker, report)
            except Exception:
                log.exception("invocation %s: releasing worker %s failed", record.id, worker.id)
        if live.turn is not None:
            live.turn.close()  # the worker is back: the slot goes to the next in turn
        metrics.phase.labels(record.profile, "total").observe(total)
        metrics.invocations.labels(record.profile, record.status.value, record.mode).inc()
        if record.callback is not None:
            secret = live.request.callback.secret if live.request.callback else None
            try:
                await self.deliverer.enqueue(record, secret)
            except Exception:
                log.exception("invocation %s: the callback could not be queued", record.id)
        self.live.remove(record.id)
        if not live.done.done():
            live.done.set_result(record)

    async def wait(self, live: LiveInvocation, timeout_s: float) -> InvocationRecord | None:
        """The record once the run ends, None if it has not within ``timeout_s`` (or the
        gateway is stopping). ``asyncio.wait`` cancels neither future."""
        if not live.done.done():
            await asyncio.wait((live.done, self.waits_over), timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        return live.done.result() if live.done.done() else None

    async def cancel(self, tenant: str, invocation_id: str) -> InvocationRecord:
        live = self.live.get(invocation_id, tenant)
        if live is None:
            record = await self.parts.records.load(tenant, invocation_id)
            if record.status.terminal:
                raise AlreadyFinished(f"invocation {invocation_id} already ended as "
                                      f"{record.status.value}", {"status": record.status.value})
            # Accepted by a replica that is gone, not yet recovered: record the cancel.
            fail(record, Reason.Cancelled, "the invocation was cancelled")
            record.finished_at = datetime.now(UTC)
            await self.parts.records.finish(record)
            return record
        live.cancel_requested = True
        if live.worker is not None:
            await self.parts.executor.cancel(live.worker)
        elif live.task is not None:
            live.task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(live.done), 10)
        return live.record.model_copy(deep=True)
