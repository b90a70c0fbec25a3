"""A batch of invocations: the body of ``POST /v1/invocations/batch`` and its answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.models.answers import ANSWER, AcceptedInvocation, ErrorBody
from gateway.models.requests import InvocationCreate


class BatchItem(InvocationCreate):
    """One invocation of a batch: an invocation request that runs async, with an
    Idempotency-Key of its own if it likes."""

    mode: Literal["async"] = Field(
        "async", description="A batch never waits: its items run async (sync is refused)")
    idempotency_key: str | None = Field(
        None, max_length=255,
        description="This item's Idempotency-Key (the tenant's one namespace, as the "
                    "header's); else <batch Idempotency-Key>:<index> when the batch has one")

    @field_validator("mode", mode="before")
    @classmethod
    def _async_only(cls, mode: object) -> object:
        if mode == "sync":
            raise ValueError("a batch item runs async: leave mode out, or set it to async")
        return mode


class BatchCreate(BaseModel):
    """The body of ``POST /v1/invocations/batch``. An item that is not a valid BatchItem
    does not make the body invalid: it is answered as that item's error."""

    model_config = ConfigDict(extra="forbid")
    invocations: list[Annotated[BatchItem | Any, Field(union_mode="left_to_right")]] = Field(
        min_length=1,
        description="Up to JOBGATE_BATCH_MAX_ITEMS invocation requests, each validated and "
                    "admitted on its own")


class BatchItemResult(BaseModel):
    """One item's answer: its accepted invocation (as a single async call's 202), or its
    error (as a single call's error body); ``status_code`` is what a single call would
    have answered."""

    model_config = ANSWER
    index: int
    status_code: int
    invocation: AcceptedInvocation | None
    error: ErrorBody | None
    retry_after: int | None = Field(
        None, description="With a 429 or 503 item: seconds to wait before sending it again")


class BatchAnswer(BaseModel):
    model_config = ANSWER
    items: list[BatchItemResult]
