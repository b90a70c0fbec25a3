"""The invocation record: what is stored, and the parts an answer shares with it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.models.status import CallbackReason, Reason, Status

if TYPE_CHECKING:
    from gateway.models.answers import Invocation


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
    # Why it was given up (status failed); None otherwise.
    reason: CallbackReason | None = None
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
        from gateway.models.answers import ArtifactLink, Invocation, InvocationLinks

        links = InvocationLinks.of(self.id, base_path)
        fields = self.model_dump(exclude={"tenant", "replica", "artifacts"})
        return Invocation(
            **fields, links=links,
            artifacts=[ArtifactLink(**a.model_dump(), url=f"{links.artifacts}/{a.name}")
                       for a in self.artifacts])
