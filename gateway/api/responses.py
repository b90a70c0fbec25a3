"""JSON responses rendered with orjson, and the one error shape."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from gateway.errors import JobgateError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def error_response(code: str, message: str, status: int, details: Any = None,
                   retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": {"code": code, "message": message, "details": details}},
                        status_code=status, headers=headers)


def from_error(exc: JobgateError) -> JSONResponse:
    retry_after = exc.retry_after
    if retry_after is None and exc.status in (429, 503):
        retry_after = 1
    return error_response(exc.code, exc.message, exc.status, exc.details, retry_after)
