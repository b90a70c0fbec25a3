"""Error types of jobgate. Each knows its HTTP status and error code; the API maps them
to the one error shape ``{"error": {"code", "message", "details"}}`` in one place."""

from __future__ import annotations

from typing import Any

from gateway.models import Reason


class JobgateError(Exception):
    status = 500
    code = "Internal"

    def __init__(self, message: str, details: Any = None, *, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after = retry_after


class BadRequest(JobgateError):
    status = 400
    code = "BadRequest"


class InvalidInput(JobgateError):
    status = 422
    code = "InvalidInput"


class PayloadTooLarge(JobgateError):
    status = 413
    code = "PayloadTooLarge"


class StorageQuotaExceeded(JobgateError):
    """The tenant's stored bytes would go past its ``max_stored_bytes``: nothing was
    stored; it may store again once older invocations reach their TTL."""

    status = 413
    code = "StorageQuotaExceeded"


class UnsupportedMediaType(JobgateError):
    status = 415
    code = "UnsupportedMediaType"


class RequestTimeout(JobgateError):
    """The request head or body did not arrive in time (answered by the HTTP server)."""

    status = 408
    code = "RequestTimeout"


class RequestHeadersTooLarge(JobgateError):
    """Too many request header bytes or fields (answered by the HTTP server)."""

    status = 431
    code = "RequestHeadersTooLarge"


class ProfileNotFound(InvalidInput):
    code = "ProfileNotFound"


class CallbackRefused(InvalidInput):
    code = "CallbackRefused"


class TtlTooLong(InvalidInput):
    """A ttl_s above the tenant's max_ttl_s."""

    code = "TtlTooLong"


class Unauthorized(JobgateError):
    status = 401
    code = "Unauthorized"


class Forbidden(JobgateError):
    status = 403
    code = "Forbidden"


class NotFound(JobgateError):
    status = 404
    code = "NotFound"


class InvocationNotFound(NotFound):
    code = "InvocationNotFound"


class ArtifactNotFound(NotFound):
    code = "ArtifactNotFound"


class Conflict(JobgateError):
    status = 409
    code = "Conflict"


class IdempotencyConflict(Conflict):
    code = "IdempotencyConflict"


class AlreadyFinished(Conflict):
    code = "AlreadyFinished"


class QueueFull(JobgateError):
    status = 429
    code = "QueueFull"


class TenantQueueFull(QueueFull):
    """The tenant has as many invocations waiting as its max_queued allows."""

    code = "TenantQueueFull"


class RateLimited(JobgateError):
    """The tenant submits faster than its rate_per_s (its token bucket is empty)."""

    status = 429
    code = "RateLimited"


class TooManyFollowers(JobgateError):
    status = 429
    code = "TooManyFollowers"


class ShuttingDown(JobgateError):
    status = 503
    code = "ShuttingDown"


class StorageUnavailable(JobgateError):
    status = 503
    code = "StorageUnavailable"


class ExecutorUnavailable(JobgateError):
    status = 503
    code = "ExecutorUnavailable"


class ObjectNotFound(Exception):
    """A storage key that does not exist (internal; mapped to a 404 of the right kind)."""


class ChecksumMismatch(ValueError):
    """A file's bytes do not match the sha256 it was stored under (internal): raised by
    every store's ``put_file``, and nothing is stored."""


class WorkerFailure(Exception):
    """A worker could not run an invocation (internal; its ``reason`` becomes the
    invocation's). Subclasses name the usual reason; the executor that knows better (a
    pod's status, say) passes its own.

    ``no_fault_of_the_code``: the executor knows the code did not cause it (the worker's pod
    was deleted or evicted for the node's sake, its node was lost, its gateway crashed);
    such an attempt may be run again, up to the invocation's ``max_attempts``."""

    reason: Reason = Reason.WorkerLost

    def __init__(self, message: str, reason: Reason | None = None, *,
                 no_fault_of_the_code: bool = False):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.no_fault_of_the_code = no_fault_of_the_code


class WorkerLost(WorkerFailure):
    """The worker went away before it reported."""

    reason = Reason.WorkerLost


class WorkerStartFailed(WorkerFailure):
    """No worker could be started for a profile."""

    reason = Reason.StartFailed


class BadWorkerReport(WorkerFailure):
    """A worker answered with a report the gateway cannot use: one that does not
    validate, or of a runner protocol this gateway does not speak. Nothing of it is
    trusted; the invocation ends as WorkerLost, with a message that says why."""

    reason = Reason.WorkerLost


class ConfigError(ValueError):
    """This configuration cannot serve on this machine (said plainly at start)."""
