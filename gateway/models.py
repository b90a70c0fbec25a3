"""Plain data models that cross jobgate's seams: the API request, the invocation record,
and the runner protocol (assignment and report). Nothing here imports anything above it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

# Environment names a client may set; reserved prefixes stay jobgate's.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV_PREFIXES = ("JOBGATE_",)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|K|M|G|m)?$")


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
    # Kubernetes executor: read from the worker pod's and Job's status.
    ImagePullFailed = "ImagePullFailed"
    OOMKilled = "OOMKilled"
    Evicted = "Evicted"
    Unschedulable = "Unschedulable"
    PodFailed = "PodFailed"


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


# ---------------------------------------------------------------------------------------
# API request
# ---------------------------------------------------------------------------------------


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float | str | None = Field(
        None, description='CPU cores: 0.5 or "500m". At most the profile maximum.'
    )
    memory: int | str | None = Field(
        None, description='Memory: MiB as an integer, or a quantity such as "512Mi", "1Gi".'
    )

    def cpu_cores(self) -> float | None:
        if self.cpu is None:
            return None
        if isinstance(self.cpu, float | int):
            value = float(self.cpu)
        else:
            m = _QUANTITY.match(self.cpu.strip())
            if not m or m.group(2) not in (None, "m"):
                raise ValueError(f'cpu must be a number of cores or millicores ("500m"), '
                                 f"not {self.cpu!r}")
            value = float(m.group(1)) / (1000 if m.group(2) == "m" else 1)
        if value <= 0:
            raise ValueError("cpu must be positive")
        return value

    def memory_mb(self) -> int | None:
        if self.memory is None:
            return None
        if isinstance(self.memory, int):
            value = float(self.memory)
        else:
            m = _QUANTITY.match(self.memory.strip())
            if not m or m.group(2) == "m":
                raise ValueError(f'memory must be MiB or a quantity like "512Mi", '
                                 f"not {self.memory!r}")
            scale = {None: 1 / (1024 * 1024), "Ki": 1 / 1024, "Mi": 1, "Gi": 1024,
                     "K": 1000 / 1024 / 1024, "M": 1e6 / 1024 / 1024, "G": 1e9 / 1024 / 1024}
            value = float(m.group(1)) * scale[m.group(2)]
        if value < 1:
            raise ValueError("memory must be at least 1 MiB")
        return int(value)


class CallbackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2048, description="http(s) URL that receives the result")
    secret: str | None = Field(
        None, min_length=16, max_length=256,
        description="Per-call signing secret; the server's secret when absent.",
    )


# Exactly one of code and files (checked in dispatch/plan.py; said here for the document).
CODE_OR_FILES: list[JsonValue] = [
    {"required": ["code"], "properties": {"code": {"type": "string"}, "files": {"type": "null"}}},
    {"required": ["files"], "properties": {"files": {"type": "object", "minProperties": 1},
                                           "code": {"type": "null"}}},
]


class InvocationCreate(BaseModel):
    """The body of ``POST /v1/invocations``."""

    model_config = ConfigDict(extra="forbid", str_max_length=16 * 1024 * 1024,
                              json_schema_extra={"oneOf": CODE_OR_FILES})
    profile: str = Field(max_length=64, description="Runtime profile name, see /v1/profiles")
    code: str | None = Field(None, description="Inline source, written to the entrypoint")
    files: dict[str, str] | None = Field(None, description="File name -> text, multi-file")
    entrypoint: str | None = Field(None, max_length=255,
                                   description="File to run; the profile default if absent")
    args: list[str] = Field(default_factory=list)
    stdin: str | None = None
    input: Any = Field(None, description="Any JSON: input.json and $JOBGATE_INPUT")
    env: dict[str, str] = Field(default_factory=dict, json_schema_extra={
        "propertyNames": {"pattern": ENV_NAME.pattern,
                          "not": {"pattern": "^[Jj][Oo][Bb][Gg][Aa][Tt][Ee]_"}}})
    timeout_s: float | None = Field(None, gt=0)
    resources: Resources | None = None
    mode: Literal["sync", "async"] = "sync"
    callback: CallbackSpec | None = None
    ttl_s: int | None = Field(None, gt=0)
    wait_s: float | None = Field(
        None, gt=0, description="Sync only: seconds to wait before answering 202"
    )
    max_attempts: int | None = Field(
        None, ge=1, le=10,
        description="How many times it may run when its worker is lost through no fault "
                    "of its code (the gateway crashed, the worker pod was deleted or "
                    "evicted, its node was lost). Default: 3 for async (1 + 2 retries), "
                    "1 for sync; at most the server's JOBGATE_MAX_ATTEMPTS. A run that "
                    "fails by itself (exit code, timeout, limits) is never retried.",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name {name!r}")
            if name.upper().startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"environment variable {name!r} uses a reserved prefix")
            if "\x00" in value:
                raise ValueError(f"environment variable {name!r} contains a NUL byte")
        return env

    @field_validator("args")
    @classmethod
    def _args(cls, args: list[str]) -> list[str]:
        if any("\x00" in a for a in args):
            raise ValueError("arguments may not contain NUL bytes")
        return args


# ---------------------------------------------------------------------------------------
# The invocation record (stored and returned)
# ---------------------------------------------------------------------------------------


# The record's parts are stored and answered. Their schema says every field is in their
# JSON (pydantic dumps defaulted fields too: the OpenAPI document must not call them
# optional) and nothing else is (model_dump writes only fields), without refusing, when a
# record is loaded, one written by a version that had more.
ANSWERED = ConfigDict(json_schema_serialization_defaults_required=True,
                      json_schema_extra={"additionalProperties": False})


class Timings(BaseModel):
    model_config = ANSWERED
    queued_ms: float | None = None
    start_ms: float | None = None
    run_ms: float | None = None
    total_ms: float | None = None


class Artifact(BaseModel):
    """An artifact as stored in the record (its URL is the gateway's, added when answered)."""

    model_config = ANSWERED
    name: str
    size: int
    sha256: str


class CallbackAttempt(BaseModel):
    model_config = ANSWERED
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float


class CallbackState(BaseModel):
    model_config = ANSWERED
    url: str
    delivery_id: str
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: list[CallbackAttempt] = Field(default_factory=list)
    next_attempt_at: datetime | None = None


class LostAttempt(BaseModel):
    """An earlier attempt of an invocation: its worker was lost without a report, through
    no fault of the code, and the invocation ran again."""

    model_config = ANSWERED
    attempt: int
    worker: str | None = None
    started_at: datetime | None = None
    ended_at: datetime
    reason: Reason
    message: str | None = None


class InvocationFields(BaseModel):
    """What the stored record and the answer share."""

    model_config = ANSWERED
    id: str
    profile: str
    mode: Literal["sync", "async"]
    status: Status = Status.queued
    reason: Reason | None = None
    message: str | None = None
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    result: Any = None
    result_error: str | None = None
    # A Sequence: the answer narrows it to ArtifactLink (with its URL).
    artifacts: Sequence[Artifact] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    warm: bool | None = None
    worker: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime
    callback: CallbackState | None = None
    # How many attempts started (a worker took it), of at most max_attempts; the earlier
    # ones, each lost through no fault of the code, in attempt_history.
    attempts: int = 0
    max_attempts: int = 1
    attempt_history: list[LostAttempt] = Field(default_factory=list)


class InvocationRecord(InvocationFields):
    """Everything known about an invocation. Stored as record.json; stdout and stderr are
    stored beside it and joined in when an invocation is returned. Never answered as is:
    ``public()`` is what a client sees."""

    tenant: str
    # Its owner: the gateway that accepted it, or that took it over from a replica that is
    # gone. Only its owner (restarted) or the leader (once the owner is gone) recovers it.
    replica: str | None = None

    def public(self, base_path: str = "/v1/invocations") -> Invocation:
        links = InvocationLinks.of(self.id, base_path)
        fields = self.model_dump(exclude={"tenant", "replica", "artifacts"})
        return Invocation(
            **fields, links=links,
            artifacts=[ArtifactLink(**a.model_dump(), url=f"{links.artifacts}/{a.name}")
                       for a in self.artifacts])


# ---------------------------------------------------------------------------------------
# API answers: what each operation serves, and so what the OpenAPI document describes.
# extra="forbid" gives additionalProperties: false (built here, never read from a client).
# ---------------------------------------------------------------------------------------

ANSWER = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class InvocationLinks(BaseModel):
    model_config = ANSWER
    self: str
    logs: str
    artifacts: str
    cancel: str

    @classmethod
    def of(cls, invocation_id: str, base_path: str = "/v1/invocations") -> InvocationLinks:
        base = f"{base_path}/{invocation_id}"
        return cls(self=base, logs=f"{base}/logs", artifacts=f"{base}/artifacts",
                   cancel=f"{base}/cancel")


class ArtifactLink(Artifact):
    model_config = ANSWER
    url: str


class Invocation(InvocationFields):
    """An invocation as answered (and as POSTed to its callback)."""

    model_config = ANSWER
    artifacts: Sequence[ArtifactLink] = Field(default_factory=list)
    links: InvocationLinks


class InvocationSummary(BaseModel):
    model_config = ANSWER
    id: str
    profile: str
    mode: Literal["sync", "async"]
    status: Status
    reason: Reason | None
    created_at: datetime
    finished_at: datetime | None


class InvocationPage(BaseModel):
    model_config = ANSWER
    items: list[InvocationSummary]
    next_cursor: str | None


class AcceptedInvocation(BaseModel):
    model_config = ANSWER
    id: str
    status: Status
    links: InvocationLinks


class InvocationLogs(BaseModel):
    model_config = ANSWER
    id: str
    status: Status
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool


class ArtifactList(BaseModel):
    model_config = ANSWER
    items: list[ArtifactLink]


class PoolState(BaseModel):
    model_config = ANSWER
    profile: str
    executor: str
    idle: int
    starting: int
    busy: int
    queued: int
    min_idle: int
    max_idle: int
    target_idle: int
    warm_starts: int
    cold_starts: int


class PoolList(BaseModel):
    model_config = ANSWER
    items: list[PoolState]


class Health(BaseModel):
    model_config = ANSWER
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ANSWER
    ready: bool
    checks: dict[str, str] = Field(description="storage, executor (and gateway while "
                                   "shutting down): ok, or what is wrong")


class ErrorBody(BaseModel):
    model_config = ANSWER
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    model_config = ANSWER
    error: ErrorBody


# ---------------------------------------------------------------------------------------
# Runner protocol (gateway -> worker), shared by every executor
# ---------------------------------------------------------------------------------------

# The version of the protocol this gateway speaks (runtimes/runner.py's PROTOCOL_VERSION).
RUNNER_PROTOCOL = 1
# The reasons a runner reports; the others are the gateway's and its executors' to give.
RUNNER_REASONS = frozenset({
    Reason.Timeout, Reason.MemoryLimit, Reason.OutputLimit, Reason.DiskLimit,
    Reason.NonZeroExit, Reason.Cancelled, Reason.StartFailed,
})


class RunLimits(BaseModel):
    memory_bytes: int
    memory_mode: Literal["as", "data", "none"] = "as"
    cpu_seconds: int
    # CPU quota of the whole invocation, in thousandths of a core (0: none).
    cpu_millis: int = 0
    nofile: int
    nproc: int
    fsize_bytes: int


class ArtifactLimits(BaseModel):
    max_count: int
    max_file_bytes: int
    max_total_bytes: int


class UploadSpec(BaseModel):
    """Where a worker puts its outputs itself (S3 storage): presigned, credential-free."""

    report_url: str
    artifacts_url: str
    token: str
    retry_budget_s: float


class Assignment(BaseModel):
    """What a worker runs. Everything per-call travels here, never in the worker's spec,
    so any warm worker of the profile can take any invocation."""

    protocol: int = RUNNER_PROTOCOL
    invocation_id: str
    attempt: int = 1
    files: dict[str, str]
    argv: list[str]
    inprocess: bool = False
    stdin: str | None = None
    input: Any = None
    env: dict[str, str] = Field(default_factory=dict, json_schema_extra={
        "propertyNames": {"pattern": ENV_NAME.pattern,
                          "not": {"pattern": "^[Jj][Oo][Bb][Gg][Aa][Tt][Ee]_"}}})
    timeout_s: float
    limits: RunLimits
    output_cap_bytes: int
    result_cap_bytes: int
    artifacts: ArtifactLimits
    keep_workspace: bool = False
    uploads: UploadSpec | None = None


class ReportedArtifactBase(BaseModel):
    name: str = Field(max_length=1024)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ArtifactListing(BaseModel):
    """What a worker asks to upload (the body of the internal uploads endpoint)."""

    model_config = ConfigDict(extra="forbid")
    artifacts: list[ReportedArtifactBase] = Field(max_length=10_000)


class ReportedArtifact(ReportedArtifactBase):
    path: str | None = None


class WorkerReport(BaseModel):
    """What a worker answers after the run (or instead of it: StartFailed). The fields
    without a default are in every report a runner sends; the gateway checks
    ``protocol`` where a report arrives (gateway.executors.runner_client.parse_report)."""

    model_config = ConfigDict(extra="ignore")
    protocol: int
    reason: Reason | None
    exit_code: int | None
    # The worker's own directory: the local executor removes it after storing outputs.
    workspace_base: str | None
    signal: int | None = None
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    result: Any = None
    result_error: str | None = None
    artifacts: list[ReportedArtifact] = Field(default_factory=list)
    artifact_error: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    report_uploaded: bool = False
    upload_error: str | None = None

    @field_validator("reason")
    @classmethod
    def _runner_reason(cls, reason: Reason | None) -> Reason | None:
        if reason is not None and reason not in RUNNER_REASONS:
            raise ValueError(f"{reason.value} is not a reason a runner reports")
        return reason
