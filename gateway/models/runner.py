"""The runner protocol (gateway -> worker), shared by every executor: assignment and report."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.models.requests import ENV_NAME
from gateway.models.status import Reason

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
    # The gateway's error code when it refused the artifacts' upload URLs.
    artifact_refusal: str | None = Field(None, max_length=64)
    timings: dict[str, float] = Field(default_factory=dict)
    report_uploaded: bool = False
    upload_error: str | None = None

    @field_validator("reason")
    @classmethod
    def _runner_reason(cls, reason: Reason | None) -> Reason | None:
        if reason is not None and reason not in RUNNER_REASONS:
            raise ValueError(f"{reason.value} is not a reason a runner reports")
        return reason
