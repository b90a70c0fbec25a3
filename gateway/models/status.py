"""Where an invocation stands, and why it did not succeed: stable names clients branch on."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    timeout = "timeout"
    cancelled = "cancelled"
    error = "error"

    @property
    def terminal(self) -> bool:
        return self not in (Status.queued, Status.running)


class Reason(StrEnum):
    """Why an invocation did not succeed. Stable names: clients branch on them."""

    Timeout = "Timeout"
    MemoryLimit = "MemoryLimit"
    OutputLimit = "OutputLimit"
    NonZeroExit = "NonZeroExit"
    Cancelled = "Cancelled"
    WorkerLost = "WorkerLost"
    StartFailed = "StartFailed"
    ArtifactLimit = "ArtifactLimit"
    StorageUnavailable = "StorageUnavailable"
    # A bug in the gateway ended the invocation (its log has the traceback).
    InternalError = "InternalError"
    # The code failed with its workspace (and /tmp) full: the profile's workspace_mb.
    DiskLimit = "DiskLimit"
    # Its outputs (artifacts, logs, result) would have taken the tenant past its stored
    # bytes quota (max_stored_bytes): they were not stored.
    StorageQuota = "StorageQuota"
    # Kubernetes executor: read from the worker pod's and Job's status.
    ImagePullFailed = "ImagePullFailed"
    OOMKilled = "OOMKilled"
    Evicted = "Evicted"
    Unschedulable = "Unschedulable"
    PodFailed = "PodFailed"


class CallbackReason(StrEnum):
    """Why a callback was given up (its status ``failed``). Stable names."""

    # The receiver answered 410 Gone: it wants no more deliveries (Standard Webhooks).
    Gone = "Gone"
    # The receiver answered another 4xx that no retry can change (400, 401, 404...).
    Rejected = "Rejected"
    # The callback URL was refused at delivery (it now resolves to a non-public address).
    Refused = "Refused"
    # Every attempt (JOBGATE_CALLBACK_MAX_ATTEMPTS) failed with an error worth retrying.
    AttemptsExhausted = "AttemptsExhausted"


REASON_STATUS: dict[Reason, Status] = {
    Reason.Timeout: Status.timeout,
    Reason.Cancelled: Status.cancelled,
    Reason.WorkerLost: Status.error,
    Reason.StartFailed: Status.error,
    Reason.StorageUnavailable: Status.error,
    Reason.InternalError: Status.error,
    Reason.ImagePullFailed: Status.error,
    Reason.Unschedulable: Status.error,
    Reason.Evicted: Status.error,
    Reason.PodFailed: Status.error,
}
