"""The client's errors: one hierarchy. Everything the gateway refuses is an ``ApiError``
carrying the API's error code, message, details and HTTP status (a subclass per common
status, so callers can catch ``NotFound`` rather than compare numbers); everything httpx
raises is mapped, in one place (the transports), to ``TransportError``.

    JobgateError
    ├── ApiError(code, status, message, details, retry_after)
    │   ├── BadRequest (400)          ├── Conflict (409)
    │   ├── Unauthorized (401)        ├── PayloadTooLarge (413)
    │   ├── Forbidden (403)           ├── InvalidInput (422)
    │   ├── NotFound (404)            ├── RateLimited (429)
    │   └── ...                       └── Unavailable (503)
    ├── TransportError        the gateway could not be reached, or the connection broke
    ├── UnexpectedAnswer      a success answer that is not what the API documents
    ├── WaitTimeout           the invocation had not ended within the client's wait
    ├── UnsafeArtifactName    an artifact name that would write outside the target folder
    ├── IntegrityError        downloaded bytes that do not match the listed size or sha256
    └── WebhookVerificationError
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class JobgateError(Exception):
    """Any error of the jobgate client."""


class ApiError(JobgateError):
    """The gateway answered with an error (its one shape ``{"error": {code, message,
    details}}``); ``retry_after`` is its Retry-After in seconds, when it sent one."""

    status_code: ClassVar[int | None] = None

    def __init__(self, code: str, status: int, message: str, details: Any = None,
                 retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {code}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.details = details
        self.retry_after = retry_after


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    """409: ``IdempotencyConflict`` or ``AlreadyFinished`` (see ``code``)."""

    status_code = 409


class PayloadTooLarge(ApiError):
    status_code = 413


class InvalidInput(ApiError):
    """422: ``InvalidInput``, ``ProfileNotFound``, ``CallbackRefused`` (see ``code``)."""

    status_code = 422


class RateLimited(ApiError):
    """429: ``QueueFull``; retried by the client when the request is safe to repeat."""

    status_code = 429


class Unavailable(ApiError):
    """503: ``StorageUnavailable``, ``ExecutorUnavailable``, ``ShuttingDown``."""

    status_code = 503


API_ERRORS: dict[int, type[ApiError]] = {
    cls.status_code: cls for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict,
                                     PayloadTooLarge, InvalidInput, RateLimited, Unavailable)
    if cls.status_code is not None
}


class TransportError(JobgateError):
    """The gateway could not be reached, or the connection failed mid-answer."""


class UnexpectedAnswer(JobgateError):
    """A success answer that does not parse as the API's model for it (not a jobgate
    gateway, or one of another API version)."""


class WaitTimeout(JobgateError):
    """The invocation had not ended within the wait; it goes on running on the gateway
    (``invocation_id`` says which: ``wait()`` it again, or ``cancel()`` it)."""

    def __init__(self, invocation_id: str, waited_s: float):
        super().__init__(f"invocation {invocation_id} had not ended after {waited_s:.0f} s")
        self.invocation_id = invocation_id
        self.waited_s = waited_s


class UnsafeArtifactName(JobgateError):
    """An artifact name that is absolute, climbs out (``..``) or is otherwise not a plain
    relative path: refused before anything is written."""


class IntegrityError(JobgateError):
    """A downloaded artifact's size or sha256 differs from the listing's."""


class WebhookVerificationError(JobgateError):
    """A webhook delivery whose headers or signature do not verify."""


def api_error(status: int, body: bytes, retry_after: float | None = None) -> ApiError:
    """The error an answer stands for; a body not in the error shape (a proxy's page, say)
    still gives an ApiError, with its first bytes as the message."""
    code, message, details = f"HTTP{status}", body[:500].decode("utf-8", "replace"), None
    try:
        error = orjson.loads(body)["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    cls = API_ERRORS.get(status, ApiError)
    return cls(code, status, message, details, retry_after)
