"""The OpenAPI document, derived from the routes and generated from the pydantic models the
handlers answer with (never written by hand).

Paths, methods and path parameters come from ``ROUTES``; each route's endpoint has one
``Operation`` here saying what it takes and what it answers. A route without one, or an
operation without a route, stops the gateway from starting (``DocumentMismatch``).
tests/test_openapi_contract.py sends what the document allows and checks every answer
against it (schemathesis)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute, Route

from gateway.api import routes as r
from gateway.api.batch import create_batch
from gateway.config.profiles import ProfileList
from gateway.ids import ID_PATTERN
from gateway.models import (
    AcceptedInvocation,
    ArtifactList,
    ErrorResponse,
    Health,
    Invocation,
    InvocationCreate,
    InvocationLogs,
    InvocationPage,
    LiveLogEnd,
    LiveLogOutput,
    PoolList,
    Readiness,
    Status,
    Usage,
    UsageList,
)
from gateway.models.batch import BatchAnswer, BatchCreate, BatchItem

Endpoint = Callable[..., Any]


class DocumentMismatch(RuntimeError):
    """The routes and the operations described here do not match."""


@dataclass(frozen=True)
class Media:
    """A body that is not JSON from a model."""

    media_type: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Events:
    """A ``text/event-stream`` body: each event named here carries one JSON ``data`` of
    its model (described per event, as OpenAPI before 3.2 has ``schema`` do)."""

    events: dict[str, type[BaseModel]]
    id_pattern: str


Body = type[BaseModel] | Media | Events


@dataclass(frozen=True)
class Answer:
    description: str
    bodies: tuple[Body, ...] = ()
    headers: tuple[str, ...] = ()
    # The invocation's operations, reached with the answer's ``id`` (OpenAPI links).
    links: bool = False


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: dict[int, Answer]
    # Error answers shared by several operations (ERRORS); every operation also has those
    # of the HTTP server (SERVER_ERRORS), and 401 when it needs a key.
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    params: tuple[dict[str, Any], ...] = ()
    auth: bool = True


HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "Where the invocation (or the artifact) is",
                 "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before trying again",
                    "schema": {"type": "integer", "minimum": 0}},
    "X-Jobgate-Sha256": {"description": "The artifact's SHA-256, hex",
                         "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
}

ERRORS: dict[int, Answer] = {
    400: Answer("BadRequest: malformed JSON, or a malformed HTTP request", (ErrorResponse,)),
    401: Answer("Unauthorized: no API key, or an unknown one", (ErrorResponse,)),
    403: Answer("Forbidden: the tenant may not do this", (ErrorResponse,)),
    404: Answer("InvocationNotFound, ArtifactNotFound: none of this tenant's",
                (ErrorResponse,)),
    408: Answer("RequestTimeout: the request head or body came too slowly", (ErrorResponse,)),
    409: Answer("IdempotencyConflict, AlreadyFinished", (ErrorResponse,)),
    413: Answer("PayloadTooLarge: the body, code, files, input, stdin or an env value; "
                "StorageQuotaExceeded: the tenant keeps its max_stored_bytes already",
                (ErrorResponse,)),
    415: Answer("UnsupportedMediaType: the body must be application/json", (ErrorResponse,)),
    422: Answer("InvalidInput (details lists each problem), ProfileNotFound, CallbackRefused,"
                " TtlTooLong (above the tenant's max_ttl_s)", (ErrorResponse,)),
    429: Answer("QueueFull (the profile's queue), TenantQueueFull (the tenant's max_queued),"
                " RateLimited (the tenant's rate_per_s), TooManyFollowers (live logs)",
                (ErrorResponse,),
                headers=("Retry-After",)),
    431: Answer("RequestHeadersTooLarge", (ErrorResponse,)),
    503: Answer("StorageUnavailable, ExecutorUnavailable, ShuttingDown", (ErrorResponse,),
                headers=("Retry-After",)),
}
# What the HTTP server itself answers to any request (gateway/api/server.py).
SERVER_ERRORS = (400, 408, 431)

# The operations an invocation's ``id`` leads to (its ``links`` in the answers).
INVOCATION_LINKS: dict[str, Endpoint] = {
    "GetInvocation": r.get_invocation, "GetLogs": r.get_logs,
    "ListArtifacts": r.list_artifacts, "GetArtifactsZip": r.get_artifacts_zip,
    "CancelInvocation": r.cancel_invocation,
}

PATH_PARAMS: dict[str, dict[str, Any]] = {
    "id": {"type": "string", "pattern": ID_PATTERN.pattern},
    "name": {"type": "string", "minLength": 1},
}

TEXT = Media("text/plain", {"type": "string"})
# Live logs (docs/api.md): output events, then one end event; ": ping" comments between.
LIVE_LOGS = Events({"output": LiveLogOutput, "end": LiveLogEnd},
                   id_pattern=r"^[0-9]+\.[0-9]+$")


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def operations(sync_wait_s: float) -> dict[Endpoint, Operation]:
    invocation = Answer("The invocation", (Invocation,), links=True)
    return {
        r.create_invocation: Operation(
            "Invoke code (sync: 200 with the result, or 202 past the wait limit; async: 202)",
            {200: Answer("It ended within the wait: the invocation, however it ended",
                         (Invocation,), links=True),
             202: Answer("Accepted (async), or still running past the wait (sync)",
                         (AcceptedInvocation,), headers=("Location",), links=True)},
            errors=(409, 413, 415, 422, 429, 503), body=InvocationCreate,
            params=({"name": "Idempotency-Key", "in": "header", "required": False,
                     "description": "the same key and body answer the same invocation",
                     "schema": {"type": "string", "maxLength": 255}},)),
        create_batch: Operation(
            "Invoke several (async): 200 with each item's 202 answer or its error, in order",
            {200: Answer("Every item's answer, in the order sent", (BatchAnswer,))},
            errors=(413, 415, 422), body=BatchCreate,
            params=({"name": "Idempotency-Key", "in": "header", "required": False,
                     "description": "item i's key is KEY:i (unless it has its own): a "
                                    "batch sent again answers the same invocations",
                     "schema": {"type": "string", "maxLength": 200}},)),
        r.list_invocations: Operation(
            "List this tenant's invocations, newest first",
            {200: Answer("One page", (InvocationPage,))}, errors=(422, 503),
            # An empty status, profile or cursor is the same as none (so is ?stream= below).
            params=(_query("status", {"type": "string",
                                      "enum": ["", *(s.value for s in Status)]},
                           "only those with this status"),
                    _query("profile", {"type": "string"}, "only those of this profile"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200},
                           "page size (default 50)"),
                    _query("cursor", {"type": "string",
                                      "pattern": f"^({ID_PATTERN.pattern[1:-1]})?$"},
                           "next_cursor of the previous page"))),
        r.get_invocation: Operation(
            "One invocation with its result", {200: invocation}, errors=(404, 422, 503),
            params=(_query("wait", {"type": "number", "minimum": 0, "maximum": sync_wait_s},
                           "long-poll: answer when it ends, or after this many seconds"),)),
        r.get_logs: Operation(
            "stdout and stderr (JSON, or one stream as text with ?stream=; live as "
            "server-sent events with ?follow=true)",
            {200: Answer("The logs (empty until it ends); with follow, the live stream",
                         (InvocationLogs, TEXT, LIVE_LOGS))},
            errors=(404, 422, 429, 503),
            params=(_query("stream", {"type": "string", "enum": ["", "stdout", "stderr"]},
                           "one stream as text/plain (empty: the JSON); with follow, "
                           "only this stream's events"),
                    _query("follow", {"type": "boolean"},
                           "true: stream the logs live (text/event-stream) until it ends"),
                    _query("stdout_offset", {"type": "integer", "minimum": 0,
                                             "maximum": 2**53 - 1},
                           "with follow: only stdout past this byte offset"),
                    _query("stderr_offset", {"type": "integer", "minimum": 0,
                                             "maximum": 2**53 - 1},
                           "with follow: only stderr past this byte offset"),
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "description": "with follow: resume after this event (its id); "
                                    "wins over the offsets in the query",
                     "schema": {"type": "string",
                                "pattern": r"^([0-9]{1,16}\.[0-9]{1,16})?$"}})),
        r.list_artifacts: Operation(
            "The artifacts' names, sizes and digests",
            {200: Answer("The artifacts", (ArtifactList,))}, errors=(404, 503)),
        r.get_artifacts_zip: Operation(
            "All artifacts as one zip (streamed)",
            {200: Answer("A zip of the artifacts",
                         (Media("application/zip", {"type": "string", "format": "binary"}),))},
            errors=(404, 503)),
        r.get_artifact: Operation(
            "One artifact: 307 to a presigned URL (S3 storage), or the bytes (local storage)",
            {200: Answer("The artifact's bytes", (Media("application/octet-stream", {
                "type": "string", "format": "binary"}),), headers=("X-Jobgate-Sha256",)),
             307: Answer("A short-lived presigned URL", headers=("Location",))},
            errors=(404, 503)),
        r.cancel_invocation: Operation(
            "Cancel a queued or running invocation",
            {200: Answer("The invocation, cancelled", (Invocation,))},
            errors=(404, 409, 503)),
        r.list_profiles: Operation(
            "Runtime profiles", {200: Answer("The profiles", (ProfileList,))}),
        r.list_pools: Operation(
            "Warm pool state per profile", {200: Answer("The pools", (PoolList,))}),
        r.get_usage: Operation(
            "This tenant's usage in this replica (running, queued) and its limits",
            {200: Answer("The usage", (Usage,))}),
        r.get_all_usage: Operation(
            "Every tenant's usage in this replica (operator tenants only)",
            {200: Answer("Every configured tenant's usage", (UsageList,))}, errors=(403,)),
        r.healthz: Operation(
            "Liveness", {200: Answer("The process answers", (Health,))}, auth=False),
        r.readyz: Operation(
            "Readiness: storage and executor",
            {200: Answer("Ready", (Readiness,)),
             503: Answer("Not ready: checks says what is not", (Readiness,))}, auth=False),
        r.metrics: Operation(
            "Prometheus metrics", {200: Answer("The metrics, text format", (TEXT,))},
            auth=False),
        r.openapi: Operation(
            "This document", {200: Answer("OpenAPI 3.1", (Media("application/json", {
                "type": "object"}),))}, auth=False),
    }


def _openapi_path(route: Route) -> str:
    return re.sub(r"{(\w+)(:\w+)?}", r"{\1}", route.path)


def documented_routes(routes: Iterable[BaseRoute]) -> list[tuple[str, str, Route]]:
    """(method, OpenAPI path, route) of every route that belongs in the document: all but
    those with ``include_in_schema=False``. HEAD, which Starlette adds to every GET, is left
    implied. A route of another kind (a Mount) cannot be described here: it is refused."""
    out = []
    for route in routes:
        if not getattr(route, "include_in_schema", True):
            continue
        if not isinstance(route, Route):
            raise DocumentMismatch(f"cannot describe {route!r}: give it "
                                   "include_in_schema=False, or describe it here")
        for method in sorted((route.methods or set()) - {"HEAD"}):
            out.append((method.lower(), _openapi_path(route), route))
    return out


def _model_schemas(models: Iterable[tuple[type[BaseModel], JsonSchemaMode]]
                   ) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """The $ref of each (model, mode), and the schemas they point to."""
    refs, defs = models_json_schema(list(models),
                                    ref_template="#/components/schemas/{model}")
    return dict(refs), defs.get("$defs", {})


def build_openapi(version: str, routes: Iterable[BaseRoute], *, profiles: list[str],
                  sync_wait_s: float) -> dict[str, Any]:
    ops = operations(sync_wait_s)
    by_route = documented_routes(routes)
    endpoints = {route.endpoint for _, _, route in by_route}
    undocumented = sorted(f"{m.upper()} {p}" for m, p, route in by_route
                          if route.endpoint not in ops)
    missing = sorted(e.__name__ for e in ops if e not in endpoints)
    if undocumented or missing:
        raise DocumentMismatch(f"routes without an operation: {undocumented}; "
                               f"operations without a route: {missing}")

    answers = [a for op in ops.values() for a in op.answers.values()] + list(ERRORS.values())
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for op in ops.values():
        if op.body is not None:
            models[(op.body, "validation")] = None
    for answer in answers:
        for body in answer.bodies:
            if isinstance(body, Events):
                models.update({(model, "serialization"): None
                               for model in body.events.values()})
            elif not isinstance(body, Media):
                models[(body, "serialization")] = None
    refs, schemas = _model_schemas(models)
    # The profiles this gateway serves: a client (and the contract test) can pick one.
    for model in (InvocationCreate, BatchItem):
        schemas[model.__name__]["properties"]["profile"]["enum"] = list(profiles)

    def content(bodies: tuple[Body, ...]) -> dict[str, Any]:
        media: dict[str, Any] = {}
        for body in bodies:
            if isinstance(body, Media):
                media[body.media_type] = {"schema": body.schema}
            elif isinstance(body, Events):
                media["text/event-stream"] = {"schema": {"oneOf": [
                    {"type": "object", "required": ["event", "data"], "properties": {
                        "event": {"const": name},
                        "id": {"type": "string", "pattern": body.id_pattern},
                        "data": {"type": "string", "contentMediaType": "application/json",
                                 "contentSchema": refs[(model, "serialization")]}}}
                    for name, model in body.events.items()]}}
            else:
                media["application/json"] = {"schema": refs[(body, "serialization")]}
        return media

    def response(answer: Answer) -> dict[str, Any]:
        out: dict[str, Any] = {"description": answer.description}
        if answer.bodies:
            out["content"] = content(answer.bodies)
        if answer.headers:
            out["headers"] = {name: HEADERS[name] for name in answer.headers}
        if answer.links:
            out["links"] = {name: {"operationId": endpoint.__name__,
                                   "parameters": {"id": "$response.body#/id"}}
                            for name, endpoint in INVOCATION_LINKS.items()}
        return out

    paths: dict[str, dict[str, Any]] = {}
    for method, path, route in by_route:
        op = ops[route.endpoint]
        responses = {str(status): response(answer) for status, answer in op.answers.items()}
        errors = {*op.errors, *SERVER_ERRORS, *((401,) if op.auth else ())}
        for status in sorted(errors):
            responses.setdefault(str(status), {"$ref": f"#/components/responses/{status}"})
        unknown = set(route.param_convertors) - set(PATH_PARAMS)
        if unknown:
            raise DocumentMismatch(f"{path}: no PATH_PARAMS entry for {sorted(unknown)}")
        params = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name]}
                  for name in route.param_convertors]
        spec: dict[str, Any] = {"operationId": route.endpoint.__name__, "summary": op.summary,
                                "responses": dict(sorted(responses.items()))}
        if params or op.params:
            spec["parameters"] = params + list(op.params)
        if op.body is not None:
            spec["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": refs[(op.body, "validation")]}}}
        if not op.auth:
            spec["security"] = []
        paths.setdefault(path, {})[method] = spec
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobgate", "version": version,
                 "description": "Serverless-style function gateway on Kubernetes Jobs"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {str(status): response(answer) for status, answer in ERRORS.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
