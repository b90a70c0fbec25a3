"""The HTTP API v1. Each handler reads top to bottom: authenticate -> parse -> call the
dispatcher (``invoke`` for a new invocation: the sync-or-202 decision is its) -> answer.
Errors are raised as types and mapped in gateway.api.errors."""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import AsyncIterator
from typing import IO, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.api.batch import batch_is_post_only, create_batch
from gateway.api.bodies import read_json as _read_json
from gateway.api.responses import JSONResponse, answer
from gateway.api.sse import MEDIA_TYPE, EventStream, offsets_of, wants_follow
from gateway.api.state import gateway_of, openapi_of
from gateway.config.profiles import ProfileList
from gateway.dispatch.invoke import InvocationRequest
from gateway.errors import (
    ArtifactNotFound,
    Forbidden,
    InvalidInput,
    InvocationNotFound,
    JobgateError,
    ObjectNotFound,
    Unauthorized,
)
from gateway.executors.live_output import STREAMS
from gateway.ids import is_invocation_id
from gateway.models import (
    AcceptedInvocation,
    ArtifactList,
    ArtifactListing,
    Health,
    InvocationLinks,
    InvocationLogs,
    InvocationPage,
    InvocationRecord,
    InvocationSummary,
    PoolList,
    Readiness,
    Status,
    UsageList,
)

INV = "/v1/invocations"


def _tenant(request: Request) -> str:
    return gateway_of(request.app).auth.tenant(request)


def _invocation_id(request: Request) -> str:
    value: str = request.path_params["id"]
    if not is_invocation_id(value):
        raise InvocationNotFound(f"no invocation {value!r}")
    return value


def _accepted(record: InvocationRecord) -> Response:
    links = InvocationLinks.of(record.id, INV)
    return answer(AcceptedInvocation(id=record.id, status=record.status, links=links),
                  202, headers={"Location": links.self})


# -- invocations ---------------------------------------------------------------------------


async def create_invocation(request: Request) -> Response:
    gw = gateway_of(request.app)
    tenant = _tenant(request)
    data, raw = await _read_json(request, gw.settings.max_request_bytes)
    outcome = await gw.service.invoke(InvocationRequest.parse(
        tenant, data, raw, request.headers.get("idempotency-key")))
    if not outcome.finished:
        return _accepted(outcome.record)
    return answer(outcome.record.public(INV))


async def list_invocations(request: Request) -> Response:
    gw = gateway_of(request.app)
    tenant = _tenant(request)
    q = request.query_params
    status = None
    if q.get("status"):
        try:
            status = Status(q["status"])
        except ValueError:
            raise InvalidInput(f"unknown status {q['status']!r}",
                               {"known": [s.value for s in Status]}) from None
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        raise InvalidInput("limit must be an integer") from None
    if not 1 <= limit <= 200:
        raise InvalidInput("limit must be between 1 and 200")
    cursor = q.get("cursor") or None
    if cursor is not None and not is_invocation_id(cursor):
        raise InvalidInput("invalid cursor")
    records, next_cursor = await gw.records.list_page(
        tenant, status=status, profile=q.get("profile") or None, cursor=cursor, limit=limit)
    items = [InvocationSummary.model_validate(r, from_attributes=True) for r in records]
    return answer(InvocationPage(items=items, next_cursor=next_cursor))


async def get_invocation(request: Request) -> Response:
    """``?wait=S`` long-polls: answers once the invocation ends, or after S seconds."""
    gw = gateway_of(request.app)
    tenant, inv = _tenant(request), _invocation_id(request)
    wait = request.query_params.get("wait")
    if wait is not None:
        try:
            wait_s = float(wait)
        except ValueError:
            raise InvalidInput("wait must be a number of seconds") from None
        if not 0 <= wait_s <= gw.settings.sync_wait_s:
            raise InvalidInput(f"wait must be between 0 and {gw.settings.sync_wait_s:g}")
        record = await gw.service.wait_for(tenant, inv, wait_s)
    else:
        record = await gw.service.get(tenant, inv)
    return answer(record.public(INV))


async def get_logs(request: Request) -> Response:
    """``?follow=true``: live, as server-sent events (gateway.api.sse)."""
    gw = gateway_of(request.app)
    tenant, inv = _tenant(request), _invocation_id(request)
    stream = request.query_params.get("stream")
    if stream not in (None, "", "stdout", "stderr"):
        raise InvalidInput("stream must be stdout or stderr")
    offsets = offsets_of(request.query_params, request.headers)
    if wants_follow(request.query_params):
        if request.method == "HEAD":  # the stream's head, without holding a stream open
            await gw.service.get(tenant, inv)
            return Response(media_type=MEDIA_TYPE)
        streams = tuple(name for name in STREAMS if stream in (None, "", name))
        return EventStream(await gw.service.follow_logs(tenant, inv, offsets, streams))
    record = await gw.service.get(tenant, inv)
    if record.status.terminal and record.stdout is None:  # a live record's last moment
        record = await gw.records.load(tenant, inv)
    stdout, stderr = ((record.stdout or "", record.stderr or "") if record.status.terminal
                      else ("", ""))
    if stream in ("stdout", "stderr"):
        return PlainTextResponse(stdout if stream == "stdout" else stderr)
    return answer(InvocationLogs(id=inv, status=record.status, stdout=stdout, stderr=stderr,
                                 stdout_truncated=record.stdout_truncated,
                                 stderr_truncated=record.stderr_truncated))


async def list_artifacts(request: Request) -> Response:
    gw = gateway_of(request.app)
    tenant, inv = _tenant(request), _invocation_id(request)
    record = await gw.service.get(tenant, inv)
    return answer(ArtifactList(items=record.public(INV).artifacts))


async def get_artifact(request: Request) -> Response:
    gw = gateway_of(request.app)
    tenant, inv = _tenant(request), _invocation_id(request)
    name = request.path_params["name"]
    record = await gw.service.get(tenant, inv)
    artifact = next((a for a in record.artifacts if a.name == name), None)
    if artifact is None:
        raise ArtifactNotFound(f"invocation {inv} has no artifact {name!r}")
    url = await gw.records.artifact_url(tenant, inv, name,
                                         expires_s=gw.settings.s3.presign_ttl_s)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    stream = gw.records.artifact_stream(tenant, inv, name)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""
    except ObjectNotFound:
        raise ArtifactNotFound(f"artifact {name!r} is gone (expired?)") from None

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in stream:
            yield chunk

    filename = name.rsplit("/", 1)[-1].replace('"', "")
    return StreamingResponse(body(), media_type="application/octet-stream", headers={
        "Content-Length": str(artifact.size), "X-Jobgate-Sha256": artifact.sha256,
        "Content-Disposition": f'attachment; filename="{filename}"'})


class _ZipSink:
    """A write-only file for zipfile that hands out what was written since last asked."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


async def get_artifacts_zip(request: Request) -> Response:
    """Streams: memory holds one chunk at a time, never a whole file."""
    gw = gateway_of(request.app)
    tenant, inv = _tenant(request), _invocation_id(request)
    record = await gw.service.get(tenant, inv)

    async def body() -> AsyncIterator[bytes]:
        sink = _ZipSink()
        with zipfile.ZipFile(cast(IO[bytes], sink), "w", compression=zipfile.ZIP_STORED) as zf:
            for artifact in record.artifacts:
                with zf.open(artifact.name, "w", force_zip64=artifact.size > 2**31) as entry:
                    try:
                        async for chunk in gw.records.artifact_stream(tenant, inv,
                                                                       artifact.name):
                            entry.write(chunk)
                            if sink.parts:
                                yield sink.take()
                    except ObjectNotFound:
                        pass
                yield sink.take()
        yield sink.take()

    return StreamingResponse(body(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{inv}-artifacts.zip"'})


async def presign_uploads(request: Request) -> Response:
    """Internal: a worker asks where to upload its artifacts (S3 storage)."""
    gw = gateway_of(request.app)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("missing upload token")
    data, _ = await _read_json(request, 4 * 1024 * 1024)
    listing = ArtifactListing.model_validate(data)
    urls = await gw.service.presign_artifacts(token.strip(), _invocation_id(request), listing)
    return JSONResponse({"urls": urls})


async def cancel_invocation(request: Request) -> Response:
    gw = gateway_of(request.app)
    record = await gw.service.cancel(_tenant(request), _invocation_id(request))
    return answer(record.public(INV))


# -- catalogue and state -------------------------------------------------------------------


async def list_profiles(request: Request) -> Response:
    gw = gateway_of(request.app)
    _tenant(request)
    return answer(ProfileList(items=gw.profiles.all()))


async def list_pools(request: Request) -> Response:
    gw = gateway_of(request.app)
    _tenant(request)
    return answer(PoolList(items=gw.service.pools()))


async def get_usage(request: Request) -> Response:
    gw = gateway_of(request.app)
    return answer(await gw.service.usage(_tenant(request)))


async def get_all_usage(request: Request) -> Response:
    gw = gateway_of(request.app)
    if _tenant(request) not in gw.settings.operator_tenants:
        raise Forbidden("only the operator tenants (JOBGATE_OPERATOR_TENANTS) may see "
                        "every tenant's usage")
    return answer(UsageList(items=await gw.service.every_usage()))


async def healthz(request: Request) -> Response:
    return answer(Health())


async def readyz(request: Request) -> Response:
    gw = gateway_of(request.app)
    checks: dict[str, str] = {}
    ready = gw.service.accepting
    if not ready:
        checks["gateway"] = "shutting down"
    for name, check in (("storage", gw.store.check), ("executor", gw.executor.check)):
        try:
            await asyncio.wait_for(check(), 5)
            checks[name] = "ok"
        except (JobgateError, TimeoutError, OSError) as e:
            ready = False
            checks[name] = getattr(e, "message", None) or f"{type(e).__name__}"
    return answer(Readiness(ready=ready, checks=checks), 200 if ready else 503)


async def metrics(request: Request) -> Response:
    gw = gateway_of(request.app)
    calls: dict[str, int] = {}
    for part in (gw.executor, gw.membership):
        for verb, count in part.api_calls.items():
            calls[verb] = calls.get(verb, 0) + count
    for verb, count in calls.items():
        gw.metrics.k8s_api_calls.labels(verb).set(count)
    for operation, count in gw.store.requests.items():
        gw.metrics.storage_requests.labels(operation).set(count)
    for pool in gw.service.pools():
        for state in ("idle", "starting", "busy", "queued"):
            gw.metrics.pool_workers.labels(pool.profile, state).set(getattr(pool, state))
    for label, (running, queued) in gw.service.usage_by_label().items():
        gw.metrics.tenant_running.labels(label).set(running)
        gw.metrics.tenant_queued.labels(label).set(queued)
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_of(request.app))


ROUTES = [
    Route(INV, create_invocation, methods=["POST"]),
    Route(INV + "/batch", create_batch, methods=["POST"]),
    Route(INV + "/batch", batch_is_post_only, methods=["GET"], include_in_schema=False),
    Route(INV, list_invocations, methods=["GET"]),
    Route(INV + "/{id}", get_invocation, methods=["GET"]),
    Route(INV + "/{id}/logs", get_logs, methods=["GET"]),
    Route(INV + "/{id}/artifacts", list_artifacts, methods=["GET"]),
    Route(INV + "/{id}/artifacts.zip", get_artifacts_zip, methods=["GET"]),
    Route(INV + "/{id}/artifacts/{name:path}", get_artifact, methods=["GET"]),
    Route(INV + "/{id}/cancel", cancel_invocation, methods=["POST"]),
    # The workers' own endpoint (upload token, not an API key): not in the document.
    Route("/internal" + INV + "/{id}/uploads", presign_uploads, methods=["POST"],
          include_in_schema=False),
    Route("/v1/profiles", list_profiles, methods=["GET"]),
    Route("/v1/pools", list_pools, methods=["GET"]),
    Route("/v1/usage", get_usage, methods=["GET"]),
    Route("/v1/admin/usage", get_all_usage, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
