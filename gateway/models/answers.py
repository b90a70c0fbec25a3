"""API answers: what each operation serves, and so what the OpenAPI document describes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.models.records import Artifact, InvocationFields
from gateway.models.status import Reason, Status

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


class LiveLogOutput(BaseModel):
    """The data of a live logs ``output`` event: text of one stream, from ``offset``
    (bytes of its UTF-8)."""

    model_config = ANSWER
    stream: Literal["stdout", "stderr"]
    offset: int = Field(ge=0)
    data: str


class LiveLogEnd(BaseModel):
    """The data of a live logs ``end`` event: how the invocation ended."""

    model_config = ANSWER
    status: Status
    exit_code: int | None
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
