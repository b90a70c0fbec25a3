"""The OpenAPI document, generated from the pydantic models (never written by hand): the
operations are declared next to the models they take and return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.models import (
    AcceptedInvocation,
    ErrorResponse,
    InvocationCreate,
    InvocationPage,
    InvocationRecord,
    PoolState,
)

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    responses: dict[int, type[BaseModel] | str | None]
    body: type[BaseModel] | None = None
    params: list[dict[str, Any]] = field(default_factory=list)
    list_of: frozenset[int] = frozenset()
    auth: bool = True


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


INV = "/v1/invocations"
ERRORS: dict[int, type[BaseModel] | str | None] = {
    400: ErrorResponse, 401: ErrorResponse, 404: ErrorResponse, 422: ErrorResponse,
    429: ErrorResponse, 503: ErrorResponse,
}

OPERATIONS = [
    Operation("post", INV, "Invoke code (sync: 200 with the result, or 202 past the wait "
              "limit; async: 202)", {200: InvocationRecord, 202: AcceptedInvocation,
                                     409: ErrorResponse, 413: ErrorResponse, 415: ErrorResponse,
                                     **ERRORS},
              body=InvocationCreate,
              params=[{"name": "Idempotency-Key", "in": "header", "required": False,
                       "schema": {"type": "string", "maxLength": 255}}]),
    Operation("get", INV, "List this tenant's invocations, newest first",
              {200: InvocationPage, **ERRORS},
              params=[_query("status", {"type": "string"}, "filter by status"),
                      _query("profile", {"type": "string"}, "filter by profile"),
                      _query("limit", {"type": "integer", "minimum": 1, "maximum": 200},
                             "page size (default 50)"),
                      _query("cursor", {"type": "string"}, "next_cursor of the last page")]),
    Operation("get", INV + "/{id}", "One invocation with its result",
              {200: InvocationRecord, **ERRORS},
              params=[_path_param("id"),
                      _query("wait", {"type": "number", "minimum": 0},
                             "long-poll: answer when it ends, or after this many seconds")]),
    Operation("get", INV + "/{id}/logs", "stdout and stderr (JSON, or text with ?stream=)",
              {200: "logs", **ERRORS},
              params=[_path_param("id"),
                      _query("stream", {"type": "string", "enum": ["stdout", "stderr"]},
                             "one stream as text/plain")]),
    Operation("get", INV + "/{id}/artifacts", "The artifacts' names, sizes and digests",
              {200: "artifacts", **ERRORS}, params=[_path_param("id")]),
    Operation("get", INV + "/{id}/artifacts.zip", "All artifacts as one zip (streamed)",
              {200: "zip", **ERRORS}, params=[_path_param("id")]),
    Operation("get", INV + "/{id}/artifacts/{name}",
              "One artifact: 307 to a presigned URL, or the bytes (local storage)",
              {200: "binary", 307: None, **ERRORS},
              params=[_path_param("id"), _path_param("name")]),
    Operation("post", INV + "/{id}/cancel", "Cancel a queued or running invocation",
              {200: InvocationRecord, 409: ErrorResponse, **ERRORS},
              params=[_path_param("id")]),
    Operation("get", "/v1/profiles", "Runtime profiles", {200: "profiles"}),
    Operation("get", "/v1/pools", "Warm pool state per profile", {200: PoolState},
              list_of=frozenset({200})),
    Operation("get", "/healthz", "Liveness", {200: "health"}, auth=False),
    Operation("get", "/readyz", "Readiness: storage and executor", {200: "health",
                                                                    503: ErrorResponse},
              auth=False),
    Operation("get", "/metrics", "Prometheus metrics", {200: "text"}, auth=False),
]

_INLINE: dict[str, dict[str, Any]] = {
    "logs": {"type": "object", "properties": {
        "stdout": {"type": "string"}, "stderr": {"type": "string"},
        "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"}}},
    "artifacts": {"type": "object", "properties": {"items": {"type": "array", "items": {
        "$ref": REF.format(model="Artifact")}}}},
    "profiles": {"type": "object", "properties": {"items": {"type": "array",
                                                            "items": {"type": "object"}}}},
    "health": {"type": "object"},
}


def _media(kind: type[BaseModel] | str | None, as_list: bool) -> dict[str, Any] | None:
    if kind is None:
        return None
    if kind == "zip":
        return {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
    if kind == "binary":
        return {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    if kind == "text":
        return {"text/plain": {"schema": {"type": "string"}}}
    if isinstance(kind, str):
        return {"application/json": {"schema": _INLINE[kind]}}
    schema: dict[str, Any] = {"$ref": REF.format(model=kind.__name__)}
    if as_list:
        schema = {"type": "object", "properties": {"items": {"type": "array", "items": schema}}}
    return {"application/json": {"schema": schema}}


def build_openapi(version: str) -> dict[str, Any]:
    models: list[type[BaseModel]] = [InvocationCreate, InvocationRecord, AcceptedInvocation,
                                     InvocationPage, ErrorResponse, PoolState]
    _, defs = models_json_schema([(m, "validation" if m is InvocationCreate else
                                   "serialization") for m in models], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        for status, kind in op.responses.items():
            entry: dict[str, Any] = {"description": str(status)}
            media = _media(kind, status in op.list_of)
            if media:
                entry["content"] = media
            responses[str(status)] = entry
        spec: dict[str, Any] = {"summary": op.summary, "responses": responses}
        if op.params:
            spec["parameters"] = op.params
        if op.body is not None:
            spec["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF.format(model=op.body.__name__)}}}}
        if not op.auth:
            spec["security"] = []
        paths.setdefault(op.path, {})[op.method] = spec
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobgate", "version": version,
                 "description": "Serverless-style function gateway on Kubernetes Jobs"},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
