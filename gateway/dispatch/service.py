"""The path of one invocation, top to bottom:

    submit:  plan (validate against the profile) -> admit (storage, queue room)
             -> persist (request + record: durable from here) -> start the run
    run:     claim a worker (warm, or queue for a cold one) -> send the assignment
             -> store outputs and the final record -> release the worker -> callback

Runs are tasks owned by this service, not by the HTTP request: a sync caller that goes
away does not stop its invocation, and its result is stored all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from gateway.auth.upload_tokens import UploadTokens
from gateway.callbacks.delivery import CallbackDeliverer
from gateway.callbacks.ssrf import CallbackPolicy
from gateway.config.profiles import ProfileCatalog
from gateway.config.settings import Settings
from gateway.dispatch.keyed_locks import KeyedLocks
from gateway.dispatch.plan import (
    Plan,
    check_artifact_listing,
    describe,
    make_assignment,
    make_plan,
)
from gateway.errors import (
    AlreadyFinished,
    IdempotencyConflict,
    InvalidInput,
    InvocationNotFound,
    JobgateError,
    ObjectNotFound,
    ShuttingDown,
    StorageUnavailable,
    WorkerFailure,
    WorkerLost,
)
from gateway.executors.base import Executor, Worker
from gateway.executors.runner_client import WorkerUnreachable, parse_report
from gateway.ids import new_invocation_id, new_token
from gateway.membership.base import Membership
from gateway.metrics.registry import Metrics
from gateway.models import (
    REASON_STATUS,
    Artifact,
    ArtifactListing,
    CallbackState,
    InvocationCreate,
    InvocationRecord,
    LostAttempt,
    Reason,
    Status,
    UploadSpec,
    WorkerReport,
)
from gateway.storage.records import InvocationStore

log = logging.getLogger("jobgate.dispatch")
UNREACHABLE_RETRIES = 3


@dataclass
class LiveInvocation:
    record: InvocationRecord
    plan: Plan
    request: InvocationCreate
    accepted_at: float  # monotonic
    done: asyncio.Future[InvocationRecord]
    task: asyncio.Task[None] | None = None
    worker: Worker | None = None
    cancel_requested: bool = False
    abandoned: bool = False  # shutdown: left pending in storage, resumed by the next start
    pending_writes: list[asyncio.Task[None]] = field(default_factory=list)


class InvocationService:
    def __init__(self, settings: Settings, profiles: ProfileCatalog, executor: Executor,
                 records: InvocationStore, deliverer: CallbackDeliverer, metrics: Metrics,
                 policy: CallbackPolicy, upload_tokens: UploadTokens, membership: Membership):
        self.settings = settings
        self.profiles = profiles
        self.executor = executor
        self.records = records
        self.deliverer = deliverer
        self.metrics = metrics
        self.policy = policy
        self.upload_tokens = upload_tokens
        self.membership = membership
        self._live: dict[str, LiveInvocation] = {}
        self._adopting: dict[str, asyncio.Task[None]] = {}
        self._idem_locks = KeyedLocks()
        self.accepting = True

    # -- submit -------------------------------------------------------------------------

    async def submit(self, tenant: str, req: InvocationCreate, raw_body: bytes,
                     idempotency_key: str | None) -> tuple[InvocationRecord, LiveInvocation | None]:
        """Validate, admit, persist, start. Returns the record and, when it runs in this
        replica, the live handle to wait on."""
        if not self.accepting:
            raise ShuttingDown("the gateway is shutting down", retry_after=1)
        profile = self.profiles.get(req.profile)
        plan = make_plan(req, profile, self.settings)
        if req.callback is not None:
            await self.policy.resolve(req.callback.url)
        if idempotency_key is None:
            return await self._admit_and_start(tenant, req, raw_body, plan, None)
        if len(idempotency_key) > 255 or not idempotency_key.isprintable():
            raise InvalidInput("Idempotency-Key must be at most 255 printable characters")
        key_hash = self.records.hash_idempotency_key(idempotency_key)
        body_hash = hashlib.sha256(raw_body).hexdigest()
        # Same-key submissions to this replica take turns: the second finds the first's
        # entry instead of starting a second invocation.
        async with self._idem_locks.hold(f"{tenant}/{key_hash}"):
            entry = await self.records.idempotency(tenant, key_hash)
            if entry is not None:
                if entry.body_sha256 != body_hash:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used with a different request",
                        {"invocation_id": entry.invocation_id})
                live = self._live.get(entry.invocation_id)
                return await self.get(tenant, entry.invocation_id), live
            return await self._admit_and_start(tenant, req, raw_body, plan,
                                               (key_hash, body_hash))

    async def _admit_and_start(self, tenant: str, req: InvocationCreate, raw_body: bytes,
                               plan: Plan, idempotency: tuple[str, str] | None
                               ) -> tuple[InvocationRecord, LiveInvocation]:
        self.executor.check_room(plan.profile)
        now = datetime.now(UTC)
        record = InvocationRecord(
            id=new_invocation_id(), tenant=tenant, profile=plan.profile.name, mode=req.mode,
            created_at=now, expires_at=now + timedelta(seconds=plan.ttl_s),
            replica=self.membership.identity, max_attempts=plan.max_attempts,
            callback=None if req.callback is None else CallbackState(
                url=req.callback.url, delivery_id=f"dlv_{new_token(12)}"),
        )
        try:
            await self.records.create(record, raw_body, idempotency)
        except StorageUnavailable:
            self.metrics.rejected.labels("StorageUnavailable").inc()
            raise
        self.metrics.accepted.labels(record.profile, record.mode).inc()
        return record, self._start(record, plan, req)

    def _start(self, record: InvocationRecord, plan: Plan, req: InvocationCreate
               ) -> LiveInvocation:
        live = LiveInvocation(record=record, plan=plan, request=req,
                              accepted_at=time.monotonic(),
                              done=asyncio.get_running_loop().create_future())
        self._live[record.id] = live
        live.task = asyncio.create_task(self._run(live), name=f"invocation:{record.id}")
        return live

    # -- run ----------------------------------------------------------------------------

    async def _run(self, live: LiveInvocation) -> None:
        record = live.record
        report: WorkerReport | None = None
        try:
            report = await self._run_attempts(live)
            self._apply_report(live, report)
            uploaded = report.report_uploaded and not report.upload_error
            if not uploaded and self.executor.reads_workspace and report.artifacts:
                await self._with_storage_retries(
                    record, lambda: self._store_artifacts(record, report))
        except asyncio.CancelledError:
            if live.abandoned:
                self._live.pop(record.id, None)
                raise
            # Cancelled while queued (no worker yet), or the gateway is stopping.
            if live.cancel_requested:
                self._fail(record, Reason.Cancelled, "the invocation was cancelled")
            else:
                self._fail(record, Reason.WorkerLost, "the gateway shut down during the run")
        except WorkerLost as e:
            if live.cancel_requested:
                self._fail(record, Reason.Cancelled, "the invocation was cancelled")
            else:
                self._fail(record, e.reason, str(e))
        except WorkerFailure as e:
            self._fail(record, e.reason, str(e))
        except StorageUnavailable as e:  # reading a report the worker stored
            self._fail(record, Reason.StorageUnavailable, e.message)
        except Exception as e:  # a bug of ours: the invocation ends recorded all the same
            log.exception("invocation %s: an internal error of the gateway ended it",
                          record.id)
            self._fail(record, Reason.InternalError,
                        f"the gateway failed while running the invocation ({type(e).__name__}); "
                        "this is a bug in the gateway, and its log has the details")
        finally:
            if not live.abandoned:
                await self._finish(live, live.worker, report)

    async def _run_attempts(self, live: LiveInvocation) -> WorkerReport:
        """Attempt after attempt, while workers are lost through no fault of the code and
        attempts remain (``max_attempts``); any other loss ends the invocation."""
        record = live.record
        while True:
            try:
                return await self._claim_and_run(live)
            except WorkerLost as lost:
                if not self._may_run_again(live, lost):
                    raise
                worker, live.worker = live.worker, None
                if worker is not None:
                    await self.executor.release(worker, None)
                report = await self._prepare_rerun(live, lost)
                if report is not None:
                    return report
                with contextlib.suppress(JobgateError, OSError):
                    await self.records.save(record)

    async def _claim_and_run(self, live: LiveInvocation) -> WorkerReport:
        record, plan = live.record, live.plan
        number = len(record.attempt_history) + 1  # of this attempt (a retry: 2 and up)
        assignment = make_assignment(plan, live.request, record.id, self.settings, number)
        assignment.uploads = await self._uploads_for(record, plan)
        for attempt in range(UNREACHABLE_RETRIES):
            worker = await self.executor.acquire(plan.profile, record.id)
            live.worker = worker
            claimed = time.monotonic()
            if attempt == 0:
                record.timings.queued_ms = round((claimed - live.accepted_at) * 1000, 3)
                self.metrics.phase.labels(record.profile, "queue").observe(
                    claimed - live.accepted_at)
            self.metrics.starts.labels(record.profile, "warm" if worker.warm else "cold").inc()
            record.status, record.started_at = Status.running, datetime.now(UTC)
            record.warm, record.worker = worker.warm, worker.id
            record.attempts = number
            self._save_in_background(live)
            try:
                report = await self.executor.run(worker, assignment)
            except WorkerUnreachable as e:
                # The code never started: another worker may take it.
                log.warning("invocation %s: %s; trying another worker", record.id, e)
                await self.executor.release(worker, None)
                live.worker = None
                if live.cancel_requested or attempt == UNREACHABLE_RETRIES - 1:
                    raise
                continue
            except WorkerLost:
                # The answer was lost, but the worker may have stored its report first.
                stored = None
                if assignment.uploads is not None and not live.cancel_requested:
                    stored = await self._stored_outcome(record)
                if stored is None:
                    raise
                report = stored
            prepare = report.timings.get("prepare_ms", 0.0)
            run_ms = report.timings.get("run_ms")
            record.timings.start_ms = round((time.monotonic() - claimed) * 1000
                                            - (run_ms or 0.0), 3) if run_ms else prepare
            record.timings.run_ms = run_ms
            self.metrics.phase.labels(record.profile, "start").observe(
                (record.timings.start_ms or 0) / 1000)
            if run_ms is not None:
                self.metrics.phase.labels(record.profile, "run").observe(run_ms / 1000)
            return report
        raise WorkerLost("no worker could be reached")

    async def _uploads_for(self, record: InvocationRecord, plan: Plan) -> UploadSpec | None:
        """With a store that presigns (S3), the worker uploads its outputs itself: a URL
        for its report, and a token to ask for artifact URLs. None: the gateway stores
        them from the workspace (local executor, local storage)."""
        ttl = plan.timeout_s + self.settings.storage_retry_budget_s + 300
        report_url = await self.records.presign_report_put(record, expires_s=int(ttl))
        if report_url is None:
            return None
        base = self.settings.worker_gateway_url.rstrip("/") or \
            f"http://{_dialable(self.settings.host)}:{self.settings.port}"
        return UploadSpec(
            report_url=report_url,
            artifacts_url=f"{base}/internal/v1/invocations/{record.id}/uploads",
            token=self.upload_tokens.make(record.tenant, record.id, ttl),
            retry_budget_s=min(self.settings.storage_retry_budget_s, 600))

    async def presign_artifacts(self, token: str, invocation_id: str,
                                listing: ArtifactListing) -> dict[str, str]:
        """Upload URLs for a worker's artifacts, once they pass the limits."""
        tenant = self.upload_tokens.tenant_for(token, invocation_id)
        record = await self.get(tenant, invocation_id)
        if record.status.terminal:
            raise AlreadyFinished(f"invocation {invocation_id} has ended")
        check_artifact_listing(listing, self.settings)
        ttl = self.settings.s3_presign_ttl_s
        urls = {}
        for artifact in listing.artifacts:
            url = await self.records.presign_artifact_put(tenant, invocation_id,
                                                          artifact.name, expires_s=ttl)
            if url is None:
                raise InvalidInput("this gateway's storage takes no direct uploads")
            urls[artifact.name] = url
        return urls

    def _apply_report(self, live: LiveInvocation, report: WorkerReport) -> None:
        record = live.record
        reason = report.reason
        if report.artifact_error and reason is None:
            reason = Reason.ArtifactLimit
        if report.upload_error and reason is None and not self.executor.reads_workspace:
            reason = Reason.StorageUnavailable
        record.reason = reason
        record.status = (Status.succeeded if reason is None
                         else REASON_STATUS.get(reason, Status.failed))
        if reason == Reason.ArtifactLimit:
            record.message = report.artifact_error
        elif reason == Reason.StorageUnavailable:
            record.message = f"outputs could not be stored: {report.upload_error}"
        elif reason == Reason.StartFailed:
            record.message = report.error or describe(report.reason, None, None, 0)
        else:
            record.message = describe(report.reason, report.exit_code, report.signal,
                                      live.plan.timeout_s)
        if live.cancel_requested and reason == Reason.Cancelled:
            record.status = Status.cancelled
        record.exit_code = report.exit_code
        record.stdout, record.stderr = report.stdout, report.stderr
        record.stdout_bytes, record.stderr_bytes = report.stdout_bytes, report.stderr_bytes
        record.stdout_truncated = report.stdout_truncated
        record.stderr_truncated = report.stderr_truncated
        record.result, record.result_error = report.result, report.result_error
        record.artifacts = [Artifact(name=a.name, size=a.size, sha256=a.sha256)
                            for a in report.artifacts]

    async def _store_artifacts(self, record: InvocationRecord, report: WorkerReport) -> None:
        async def one(art_path: str, name: str, sha: str) -> None:
            await self.records.put_artifact_file(record, name, Path(art_path), sha)

        await asyncio.gather(*(one(a.path, a.name, a.sha256) for a in report.artifacts
                               if a.path))

    async def _with_storage_retries(self, record: InvocationRecord,
                                    attempt: Callable[[], Awaitable[None]],
                                    *, until_stored: bool = False) -> None:
        """Storage is retried with backoff while it is down. Past the retry budget the
        invocation ends as error/StorageUnavailable; with ``until_stored``, that final word
        is itself retried (up to the invocation's expiry), so nothing accepted is lost
        silently: it completes, or says why it could not, once storage returns."""
        started = time.monotonic()
        delay = 0.5
        budget = self.settings.storage_retry_budget_s
        while True:
            try:
                await attempt()
                return
            except StorageUnavailable as e:
                elapsed = time.monotonic() - started
                if elapsed > budget and record.reason != Reason.StorageUnavailable:
                    self._fail(record, Reason.StorageUnavailable,
                               f"storage was unavailable for more than {budget:g}s: "
                               f"{e.message}")
                    if not until_stored:
                        return
                if datetime.now(UTC) > record.expires_at:
                    raise
                log.warning("invocation %s: storage unavailable, retrying in %.1fs",
                            record.id, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 15.0)

    def _fail(self, record: InvocationRecord, reason: Reason, message: str) -> None:
        record.reason = reason
        record.status = REASON_STATUS.get(reason, Status.failed)
        record.message = message

    def _save_in_background(self, live: LiveInvocation) -> None:
        """The 'running' state is worth recording, not worth waiting for."""
        snapshot = live.record.model_copy(deep=True)

        async def save() -> None:
            with contextlib.suppress(JobgateError, OSError):
                await self.records.save(snapshot)

        live.pending_writes.append(asyncio.create_task(save()))

    async def _finish(self, live: LiveInvocation, worker: Worker | None,
                      report: WorkerReport | None) -> None:
        record = live.record
        record.finished_at = datetime.now(UTC)
        total = time.monotonic() - live.accepted_at
        record.timings.total_ms = round(total * 1000, 3)
        if live.pending_writes:
            await asyncio.gather(*live.pending_writes, return_exceptions=True)
        try:
            await self._with_storage_retries(record, lambda: self.records.finish(record),
                                             until_stored=True)
        except Exception:  # the pending marker stays: recovery retries it
            log.exception("invocation %s: storing the result failed", record.id)
        if worker is not None:
            try:
                await self.executor.release(worker, report)
            except Exception:
                log.exception("invocation %s: releasing worker %s failed", record.id, worker.id)
        self.metrics.phase.labels(record.profile, "total").observe(total)
        self.metrics.invocations.labels(record.profile, record.status.value, record.mode).inc()
        if record.callback is not None:
            secret = live.request.callback.secret if live.request.callback else None
            try:
                await self.deliverer.enqueue(record, secret)
            except Exception:
                log.exception("invocation %s: the callback could not be queued", record.id)
        self._live.pop(record.id, None)
        if not live.done.done():
            live.done.set_result(record)

    # -- reads and control --------------------------------------------------------------

    async def wait(self, live: LiveInvocation, timeout_s: float) -> InvocationRecord | None:
        try:
            return await asyncio.wait_for(asyncio.shield(live.done), timeout_s)
        except TimeoutError:
            return None

    async def wait_for(self, tenant: str, invocation_id: str, timeout_s: float
                       ) -> InvocationRecord:
        """The record once it ends (if it runs here), or as it is after ``timeout_s``."""
        live = self._live.get(invocation_id)
        if live is not None and live.record.tenant == tenant:
            finished = await self.wait(live, timeout_s)
            if finished is not None:
                return await self.records.load(tenant, invocation_id)
        return await self.get(tenant, invocation_id)

    async def get(self, tenant: str, invocation_id: str) -> InvocationRecord:
        live = self._live.get(invocation_id)
        if live is not None and live.record.tenant == tenant:
            return live.record.model_copy(deep=True)
        return await self.records.load(tenant, invocation_id)

    async def cancel(self, tenant: str, invocation_id: str) -> InvocationRecord:
        live = self._live.get(invocation_id)
        if live is None or live.record.tenant != tenant:
            record = await self.records.load(tenant, invocation_id)
            if record.status.terminal:
                raise AlreadyFinished(f"invocation {invocation_id} already ended as "
                                      f"{record.status.value}", {"status": record.status.value})
            # Accepted by a replica that is gone, not yet recovered: record the cancel.
            self._fail(record, Reason.Cancelled, "the invocation was cancelled")
            record.finished_at = datetime.now(UTC)
            await self.records.finish(record)
            return record
        live.cancel_requested = True
        if live.worker is not None:
            await self.executor.cancel(live.worker)
        elif live.task is not None:
            live.task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(live.done), 10)
        return live.record.model_copy(deep=True)

    # -- crash recovery and shutdown ----------------------------------------------------

    async def recover(self, *, at_start: bool = False) -> int:
        """Finish the unfinished work this gateway owns or takes over, never a live
        replica's: at start, what its own previous run left (the same identity: that run
        is over); while it leads (Kubernetes), the work of replicas that are gone. Queued
        work runs. Running work is finished from the report its worker stored, or waited
        for while its worker still runs; else it runs again if its worker was lost through
        no fault of its code and attempts remain, or is recorded as lost. Unfinished
        callback deliveries of the same owners are resumed."""
        if not at_start and not self.membership.leads:
            return 0
        found: list[InvocationRecord] = []
        for tenant, invocation_id in await self.records.pending():
            if invocation_id in self._live or invocation_id in self._adopting:
                continue
            try:
                found.append(await self.records.load(tenant, invocation_id, with_logs=False))
            except (InvocationNotFound, ValidationError):
                continue
        taken = await self._taken_over({record.replica or "" for record in found}, at_start)
        recovered = 0
        for record in found:
            if (record.replica or "") not in taken or record.id in self._live \
                    or record.id in self._adopting:
                continue  # a live replica's (it finishes it), or started meanwhile
            if record.status.terminal:
                await self.records.finish(record)  # finished, marker left by a crash
                continue
            recovered += 1
            tenant, invocation_id = record.tenant, record.id
            try:
                raw = await self.records.load_request(tenant, invocation_id)
                req = InvocationCreate.model_validate_json(raw)
                plan = make_plan(req, self.profiles.get(req.profile), self.settings)
            except (JobgateError, ValidationError, ObjectNotFound) as e:
                # ObjectNotFound: the crash came in the middle of accepting it (it was
                # never acknowledged); it is closed, not run.
                self._fail(record, Reason.StartFailed, f"could not be resumed: {e!r}")
                await self._close_recovered(record)
                continue
            record.replica = self.membership.identity
            live = LiveInvocation(record=record, plan=plan, request=req,
                                  accepted_at=time.monotonic(),
                                  done=asyncio.get_running_loop().create_future())
            task = asyncio.create_task(self._resume(live), name=f"resume:{invocation_id}")
            self._adopting[invocation_id] = task
            task.add_done_callback(self._forget_adopted)
        if recovered:
            log.warning("recovering %d unfinished invocation(s) of %s", recovered,
                        ", ".join(sorted(taken)))
        await self.deliverer.resume_pending(lambda owners: self._taken_over(owners, at_start))
        return recovered

    async def _taken_over(self, owners: set[str], at_start: bool) -> set[str]:
        """Of these owners of unfinished work, those whose work this gateway finishes now."""
        me = self.membership.identity
        taken = {me} & owners if at_start else set()
        if self.membership.leads:
            taken |= await self.membership.gone(owners - {me})
        return taken

    def _forget_adopted(self, task: asyncio.Task[None]) -> None:
        for invocation_id, adopted in list(self._adopting.items()):
            if adopted is task:
                del self._adopting[invocation_id]

    async def _stored_report(self, record: InvocationRecord) -> WorkerReport | None:
        """The report the worker stored itself, None if there is none; BadWorkerReport
        if it is not one this gateway can use."""
        raw = await self.records.worker_report(record)
        if raw is None:
            return None
        return parse_report(raw, f"the stored report of {record.id}")

    async def _stored_outcome(self, record: InvocationRecord) -> WorkerReport | None:
        """The report a worker stored itself, if it says how the code ended. Asked only
        where no cancel was requested: a 'Cancelled' then is the worker stopped from
        outside (its pod deleted, or ended before a retry), not an outcome."""
        report = await self._stored_report(record)
        return None if report is not None and report.reason == Reason.Cancelled else report

    async def _resume(self, live: LiveInvocation) -> None:
        """An invocation its gateway left unfinished: queued (or so its record says: the
        crash may have come before 'running' was stored), or running."""
        record = live.record
        report = None
        try:
            report = await self._stored_report(record)
            lost: WorkerFailure | None = None
            if report is None:
                try:
                    adopted = await self.executor.adopt(record.id, live.plan.timeout_s + 60)
                    if adopted:
                        report = await self._stored_report(record)
                        lost = WorkerLost("its worker ended without storing a report")
                    elif record.status == Status.queued:
                        self._start(record, live.plan, live.request)  # never reached a worker
                        return
                except WorkerLost as e:
                    lost = e
                    report = await self._stored_report(record)
            if report is None:
                # No worker of it runs any more, and none was seen to fail: the crash lost it.
                lost = lost or WorkerLost("the gateway restarted while the invocation ran, "
                                          "and its worker left no report",
                                          no_fault_of_the_code=True)
                if not self._may_run_again(live, lost):
                    raise lost
                report = await self._prepare_rerun(live, lost)
                if report is None:
                    if await self._still_pending(record):  # not cancelled meanwhile
                        self._start(record, live.plan, live.request)
                    return
        except WorkerFailure as e:  # lost for good, or a stored report it cannot use
            self._fail(record, e.reason, str(e))
            report = None
        if report is not None:
            self._apply_report(live, report)
        await self._finish(live, None, report)

    async def _still_pending(self, record: InvocationRecord) -> bool:
        try:
            stored = await self.records.load(record.tenant, record.id, with_logs=False)
        except (InvocationNotFound, ValidationError):
            return False
        return not stored.status.terminal

    def _may_run_again(self, live: LiveInvocation, lost: WorkerFailure) -> bool:
        record = live.record
        return (lost.no_fault_of_the_code and not live.cancel_requested
                and max(record.attempts, 1) < record.max_attempts)

    async def _prepare_rerun(self, live: LiveInvocation, lost: WorkerFailure
                             ) -> WorkerReport | None:
        """Before an invocation runs again: its earlier attempt's worker is ended and
        waited for, so the two never overlap. If it stored its report after all, that is
        the outcome (returned); else the attempt is recorded as lost, and the invocation
        is queued again (None; the caller stores that). Raises ``lost`` when the earlier
        worker cannot be made sure gone."""
        record = live.record
        if not await self.executor.end_attempt(record.id):
            raise lost
        report = await self._stored_outcome(record)
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
        if live.pending_writes:  # the earlier attempt's 'running' must not land after this
            await asyncio.gather(*live.pending_writes, return_exceptions=True)
            live.pending_writes.clear()
        return None

    async def _close_recovered(self, record: InvocationRecord) -> None:
        record.finished_at = datetime.now(UTC)
        await self.records.finish(record)
        if record.callback is not None:
            await self.deliverer.enqueue(record, None)

    async def recovery_loop(self, interval_s: float) -> None:
        """Keeps taking over the work of replicas that die, while this one leads (Lease
        membership). Never dies: errors are logged and retried."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recovery sweep failed")

    async def drain(self, grace_s: float) -> None:
        """Stop accepting; give in-flight invocations up to ``grace_s`` to finish."""
        self.accepting = False
        pending = [live.done for live in self._live.values()]
        if pending:
            log.info("draining %d in-flight invocation(s), up to %.0fs", len(pending), grace_s)
            await asyncio.wait(pending, timeout=grace_s)
        for live in list(self._live.values()):
            if live.task is not None and live.worker is None:
                # Still queued: leave it pending in storage; the next start runs it.
                live.abandoned = True
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task

    async def wait_all(self, timeout_s: float) -> None:
        tasks = [live.task for live in self._live.values() if live.task is not None]
        tasks += list(self._adopting.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    @property
    def in_flight(self) -> int:
        return len(self._live)


def _dialable(host: str) -> str:
    """The address a local worker dials to reach a gateway bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
