"""What a worker's report, or a failure, means for the invocation's record; and storage
retried while it is down."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from gateway.dispatch.plan import describe
from gateway.errors import StorageQuotaExceeded, StorageUnavailable
from gateway.models import REASON_STATUS, Artifact, InvocationRecord, Reason, Status, WorkerReport

log = logging.getLogger("jobgate.dispatch")


def fail(record: InvocationRecord, reason: Reason, message: str) -> None:
    record.reason = reason
    record.status = REASON_STATUS.get(reason, Status.failed)
    record.message = message


def apply_report(record: InvocationRecord, report: WorkerReport, *, timeout_s: float,
                 cancel_requested: bool, outputs_lost: bool) -> None:
    """``outputs_lost``: the worker could not upload its outputs and nothing took over."""
    reason = report.reason
    if report.artifact_error and reason is None:
        reason = (Reason.StorageQuota if report.artifact_refusal == StorageQuotaExceeded.code
                  else Reason.ArtifactLimit)
    if outputs_lost and reason is None:
        reason = Reason.StorageUnavailable
    record.reason = reason
    record.status = (Status.succeeded if reason is None
                     else REASON_STATUS.get(reason, Status.failed))
    if reason in (Reason.ArtifactLimit, Reason.StorageQuota):
        record.message = report.artifact_error
    elif reason == Reason.StorageUnavailable:
        record.message = f"outputs could not be stored: {report.upload_error}"
    elif reason == Reason.StartFailed:
        record.message = report.error or describe(report.reason, None, None, 0)
    else:
        record.message = describe(report.reason, report.exit_code, report.signal, timeout_s)
    if cancel_requested and reason == Reason.Cancelled:
        record.status = Status.cancelled
    record.exit_code = report.exit_code
    record.stdout, record.stderr = report.stdout, report.stderr
    record.stdout_bytes, record.stderr_bytes = report.stdout_bytes, report.stderr_bytes
    record.stdout_truncated = report.stdout_truncated
    record.stderr_truncated = report.stderr_truncated
    record.result, record.result_error = report.result, report.result_error
    record.artifacts = [Artifact(name=a.name, size=a.size, sha256=a.sha256)
                        for a in report.artifacts]


async def with_storage_retries(record: InvocationRecord, attempt: Callable[[], Awaitable[None]],
                               budget_s: float, *, until_stored: bool = False) -> None:
    """Storage is retried with backoff while it is down. Past the retry budget the
    invocation ends as error/StorageUnavailable; with ``until_stored``, that final word
    is itself retried (up to the invocation's expiry), so nothing accepted is lost
    silently: it completes, or says why it could not, once storage returns."""
    started = time.monotonic()
    delay = 0.5
    while True:
        try:
            await attempt()
            return
        except StorageUnavailable as e:
            elapsed = time.monotonic() - started
            if elapsed > budget_s and record.reason != Reason.StorageUnavailable:
                fail(record, Reason.StorageUnavailable,
                     f"storage was unavailable for more than {budget_s:g}s: {e.message}")
                if not until_stored:
                    return
            if datetime.now(UTC) > record.expires_at:
                raise
            log.warning("invocation %s: storage unavailable, retrying in %.1fs",
                        record.id, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 15.0)
