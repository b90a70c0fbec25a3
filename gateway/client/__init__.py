"""The Python client of jobgate's HTTP API (docs/client.md).

    from gateway.client import Client

    with Client() as jg:                       # JOBGATE_URL, JOBGATE_API_KEY
        done = jg.invoke("python3.12", "print(6 * 7)")
        print(done.status, done.stdout)

``Client`` blocks, ``AsyncClient`` is the same for asyncio; both answer with the API's own
models (gateway.models) and raise the errors below. Importing this needs httpx and
pydantic, not the gateway's server (Starlette, uvicorn, Prometheus)."""

from __future__ import annotations

from gateway.client.aio import AsyncClient
from gateway.client.downloads import safe_target
from gateway.client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidInput,
    JobgateError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    UnsafeArtifactName,
    WaitTimeout,
    WebhookVerificationError,
)
from gateway.client.logstream import LogChunk, LogEnd
from gateway.client.operations import InvokeOptions
from gateway.client.retries import NO_RETRIES, RetryPolicy
from gateway.client.sync import Client
from gateway.client.webhooks import verify_webhook

__all__ = [
    "NO_RETRIES",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "Forbidden",
    "IntegrityError",
    "InvalidInput",
    "InvokeOptions",
    "JobgateError",
    "LogChunk",
    "LogEnd",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "UnsafeArtifactName",
    "WaitTimeout",
    "WebhookVerificationError",
    "safe_target",
    "verify_webhook",
]
