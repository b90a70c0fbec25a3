"""Exceptions to HTTP, in one place. Nothing a client sends may produce a 500 or a
traceback; an unexpected error is logged with its traceback and answered in the one
error shape without it."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.api.responses import error_response, from_error
from gateway.errors import JobgateError

log = logging.getLogger("jobgate.api")

HTTP_CODES = {404: "NotFound", 405: "MethodNotAllowed", 400: "BadRequest"}


async def jobgate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobgateError)
    return from_error(exc)


def validation_details(exc: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    """A validation error as every front door words it: the first problem as a sentence,
    and each one (where, what, its type), never the input itself."""
    details = [
        {"loc": list(err["loc"]), "message": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    first = details[0] if details else {"loc": [], "message": "invalid"}
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['message']}", details


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    message, details = validation_details(exc)
    return error_response("InvalidInput", message, 422, details)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "HTTPError")
    # A 405 carries the Allow header Starlette put on it (RFC 9110 requires it).
    return error_response(code, str(exc.detail), exc.status_code, headers=exc.headers)


async def client_disconnect(request: Request, exc: Exception) -> Response:
    # The client went away mid-body, or the server's body timeout cut it off (and answered
    # 408): nobody reads this answer, but metrics count it as 499, as nginx would.
    log.info("client gone during %s %s", request.method, request.url.path)
    return error_response("ClientDisconnected", "the client went away", 499)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response("Internal", "internal error; it was logged", 500)


HANDLERS = {
    JobgateError: jobgate_error,
    ValidationError: validation_error,
    HTTPException: http_error,
    ClientDisconnect: client_disconnect,
    Exception: unexpected_error,
}
