"""``POST /v1/invocations/batch``: several async invocations in one request. Authenticate
-> read the body (the whole-request errors: not JSON, not a batch, too many items, too
large) -> each item on its own: validate -> ``invoke`` (admission, idempotency, quotas and
queue room, exactly as a single call) -> answer every item in order, 200.

One item's refusal (invalid, queue full, idempotency conflict) is that item's error; the
others still go in."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.bodies import read_json
from gateway.api.errors import validation_details
from gateway.api.responses import answer, retry_after_of
from gateway.api.state import gateway_of
from gateway.dispatch.invoke import Dispatcher, InvocationRequest
from gateway.errors import InvalidInput, JobgateError
from gateway.models import AcceptedInvocation, ErrorBody, InvocationLinks
from gateway.models.batch import BatchAnswer, BatchCreate, BatchItem, BatchItemResult

log = logging.getLogger("jobgate.api")
# Items admitted at once: each admission writes to storage (a few requests to S3), so a
# batch is quicker than one by one, without one batch taking every storage connection.
ADMIT_AT_ONCE = 8
# The batch's Idempotency-Key, with ":<index>" added, must still be a valid key (255).
MAX_BATCH_KEY = 200


def _batch_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and (len(key) > MAX_BATCH_KEY or not key.isprintable()):
        raise InvalidInput(f"a batch's Idempotency-Key must be at most {MAX_BATCH_KEY} "
                           "printable characters (each item's key is KEY:INDEX)")
    return key


def _check_size(data: object, limit: int) -> None:
    """Too many items is refused before any of them is validated."""
    items = data.get("invocations") if isinstance(data, dict) else None
    if isinstance(items, list) and len(items) > limit:
        raise InvalidInput(f"a batch has at most {limit} invocations, not {len(items)}",
                           {"limit": limit, "setting": "JOBGATE_BATCH_MAX_ITEMS"})


def _refused(index: int, exc: JobgateError) -> BatchItemResult:
    return BatchItemResult(
        index=index, status_code=exc.status, invocation=None,
        error=ErrorBody(code=exc.code, message=exc.message, details=exc.details),
        retry_after=retry_after_of(exc))


async def _admit(service: Dispatcher, tenant: str, index: int, sent: Any, item: object,
                 key: str | None) -> BatchItemResult:
    """One item, as a single async call would go: its answer, or its error."""
    try:
        if not isinstance(item, BatchItem):
            BatchItem.model_validate(sent)  # raises: what is wrong with it
            raise InvalidInput("a batch item must be an invocation request")
        # What is stored (and compared for idempotency) is the invocation request itself,
        # as a single call would have sent it: recovery reads it back as one.
        fields = {name: value for name, value in sent.items() if name != "idempotency_key"}
        fields["mode"] = "async"
        outcome = await service.invoke(InvocationRequest(
            tenant, item, orjson.dumps(fields), item.idempotency_key or key))
    except ValidationError as e:
        message, details = validation_details(e)
        return _refused(index, InvalidInput(message, details))
    except JobgateError as e:
        return _refused(index, e)
    except Exception:  # a bug of ours: this item's 500; the items accepted are still told
        log.exception("batch item %d: an unexpected error", index)
        return BatchItemResult(index=index, status_code=500, invocation=None, error=ErrorBody(
            code="Internal", message="internal error; it was logged"))
    record = outcome.record
    return BatchItemResult(
        index=index, status_code=202, error=None,
        invocation=AcceptedInvocation(id=record.id, status=record.status,
                                      links=InvocationLinks.of(record.id)))


async def create_batch(request: Request) -> Response:
    gw = gateway_of(request.app)
    tenant = gw.auth.tenant(request)
    key = _batch_key(request)
    data, _ = await read_json(request, gw.settings.max_request_bytes)
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object: {\"invocations\": [...]}")
    _check_size(data, gw.settings.batch_max_items)
    batch = BatchCreate.model_validate(data)
    turns = asyncio.Semaphore(ADMIT_AT_ONCE)

    async def admit(index: int, sent: Any, item: object) -> BatchItemResult:
        async with turns:
            return await _admit(gw.service, tenant, index, sent, item,
                                None if key is None else f"{key}:{index}")

    results = await asyncio.gather(*(
        admit(index, sent, item)
        for index, (sent, item) in enumerate(zip(data["invocations"], batch.invocations,
                                                 strict=True))))
    return answer(BatchAnswer(items=list(results)))


async def batch_is_post_only(request: Request) -> Response:
    """GET (and HEAD) of the batch URL: a 405, where the invocation route would otherwise
    look for an invocation named "batch" and answer 404."""
    raise HTTPException(405, headers={"Allow": "POST"})
