"""JSON responses rendered with orjson: answers are pydantic models (the ones the OpenAPI
document is generated from), errors the one error shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from gateway.errors import JobgateError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def answer(model: BaseModel, status: int = 200,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status, headers=headers)


def error_response(code: str, message: str, status: int, details: Any = None,
                   retry_after: int | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``ErrorResponse`` in the document; built as a dict so that ``details`` is any JSON."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": {"code": code, "message": message, "details": details}},
                        status_code=status, headers=headers)


def retry_after_of(exc: JobgateError) -> int | None:
    """Seconds a client should wait before trying again: what the error says, else 1 for
    a 429 or 503, else none."""
    if exc.retry_after is None and exc.status in (429, 503):
        return 1
    return exc.retry_after


def from_error(exc: JobgateError) -> JSONResponse:
    return error_response(exc.code, exc.message, exc.status, exc.details, retry_after_of(exc))
