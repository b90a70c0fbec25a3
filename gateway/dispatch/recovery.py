"""Recovery: finishing the unfinished work a gateway left (its own previous run's at start,
a dead replica's while this one leads), and the loop that keeps looking for it."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from pydantic import ValidationError

from gateway.callbacks.delivery import CallbackDeliverer
from gateway.dispatch.lifecycle import Lifecycle
from gateway.dispatch.live import LiveInvocation, LiveTable
from gateway.dispatch.parts import Parts
from gateway.dispatch.plan import make_plan
from gateway.dispatch.results import fail
from gateway.dispatch.retries import Reruns
from gateway.errors import (
    InvocationNotFound,
    JobgateError,
    ObjectNotFound,
    WorkerFailure,
    WorkerLost,
)
from gateway.models import InvocationCreate, InvocationRecord, Reason, Status
from gateway.supervise import every, forever

log = logging.getLogger("jobgate.dispatch")


class Recovery:
    def __init__(self, parts: Parts, lifecycle: Lifecycle, reruns: Reruns,
                 deliverer: CallbackDeliverer, live: LiveTable):
        self.parts = parts
        self.lifecycle = lifecycle
        self.reruns = reruns
        self.deliverer = deliverer
        self.live = live

    async def recover(self, *, at_start: bool = False) -> int:
        """Finish the unfinished work this gateway owns or takes over, never a live
        replica's: at start, what its own previous run left (the same identity: that run
        is over); while it leads (Kubernetes), the work of replicas that are gone. Queued
        work runs. Running work is finished from the report its worker stored, or waited
        for while its worker still runs; else it runs again if its worker was lost through
        no fault of its code and attempts remain, or is recorded as lost. Unfinished
        callback deliveries of the same owners are resumed."""
        membership, records = self.parts.membership, self.parts.records
        if not at_start and not membership.leads:
            return 0
        found: list[InvocationRecord] = []
        for tenant, invocation_id in await records.pending():
            if self.live.busy(invocation_id):
                continue
            try:
                found.append(await records.load(tenant, invocation_id, with_logs=False))
            except (InvocationNotFound, ValidationError):
                continue
        taken = await self._taken_over({record.replica or "" for record in found}, at_start)
        recovered = 0
        for record in found:
            if (record.replica or "") not in taken or self.live.busy(record.id):
                continue  # a live replica's (it finishes it), or started meanwhile
            if record.status.terminal:
                await records.finish(record)  # finished, marker left by a crash
                continue
            recovered += 1
            tenant, invocation_id = record.tenant, record.id
            try:
                raw = await records.load_request(tenant, invocation_id)
                req = InvocationCreate.model_validate_json(raw)
                plan = make_plan(req, self.parts.profiles.get(req.profile), self.parts.settings)
            except (JobgateError, ValidationError, ObjectNotFound) as e:
                # ObjectNotFound: the crash came in the middle of accepting it (it was
                # never acknowledged); it is closed, not run.
                fail(record, Reason.StartFailed, f"could not be resumed: {e!r}")
                await self._close(record)
                continue
            record.replica = membership.identity
            live = LiveInvocation(record=record, plan=plan, request=req,
                                  accepted_at=time.monotonic(),
                                  done=asyncio.get_running_loop().create_future())
            self.live.adopt(invocation_id, asyncio.create_task(
                self._resume(live), name=f"resume:{invocation_id}"))
        if recovered:
            log.warning("recovering %d unfinished invocation(s) of %s", recovered,
                        ", ".join(sorted(taken)))
        await self.deliverer.resume_pending(lambda owners: self._taken_over(owners, at_start))
        return recovered

    async def _taken_over(self, owners: set[str], at_start: bool) -> set[str]:
        """Of these owners of unfinished work, those whose work this gateway finishes now."""
        membership = self.parts.membership
        me = membership.identity
        taken = {me} & owners if at_start else set()
        if membership.leads:
            taken |= await membership.gone(owners - {me})
        return taken

    async def _resume(self, live: LiveInvocation) -> None:
        """An invocation its gateway left unfinished: queued (or so its record says: the
        crash may have come before 'running' was stored), or running."""
        record = live.record
        report = None
        try:
            report = await self.reruns.stored_report(record)
            lost: WorkerFailure | None = None
            if report is None:
                try:
                    adopted = await self.parts.executor.adopt(record.id,
                                                              live.plan.timeout_s + 60)
                    if adopted:
                        report = await self.reruns.stored_report(record)
                        lost = WorkerLost("its worker ended without storing a report")
                    elif record.status == Status.queued:
                        self.lifecycle.start(record, live.plan, live.request)  # never ran
                        return
                except WorkerLost as e:
                    lost = e
                    report = await self.reruns.stored_report(record)
            if report is None:
                # No worker of it runs any more, and none was seen to fail: the crash lost it.
                lost = lost or WorkerLost("the gateway restarted while the invocation ran, "
                                          "and its worker left no report",
                                          no_fault_of_the_code=True)
                if not self.reruns.may_run_again(live, lost):
                    raise lost
                report = await self.reruns.prepare(live, lost)
                if report is None:
                    if await self._still_pending(record):  # not cancelled meanwhile
                        self.lifecycle.start(record, live.plan, live.request)
                    return
        except WorkerFailure as e:  # lost for good, or a stored report it cannot use
            fail(record, e.reason, str(e))
            report = None
        if report is not None:
            self.lifecycle.apply(live, report)
        await self.lifecycle.finish(live, None, report)

    async def _still_pending(self, record: InvocationRecord) -> bool:
        try:
            stored = await self.parts.records.load(record.tenant, record.id, with_logs=False)
        except (InvocationNotFound, ValidationError):
            return False
        return not stored.status.terminal

    async def _close(self, record: InvocationRecord) -> None:
        record.finished_at = datetime.now(UTC)
        await self.parts.records.finish(record)
        if record.callback is not None:
            await self.deliverer.enqueue(record, None)

    async def loop(self, interval_s: float) -> None:
        """Keeps taking over the work of replicas that die, while this one leads (Lease
        membership). Never dies: errors are logged and retried."""
        await asyncio.sleep(interval_s)
        await forever("recovery sweep", self.recover, every(interval_s), log)
