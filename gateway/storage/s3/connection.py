"""The S3 connection: one aioboto3 client per process, our keys under the prefix, and
boto's errors mapped onto jobgate's at this one boundary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import aioboto3
import aiohttp
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)

from gateway.config.settings import Settings
from gateway.errors import ObjectNotFound, StorageUnavailable
from gateway.paths import path_problem

# How long a caller should wait before retrying when the store is unreachable.
RETRY_AFTER_S = 5

_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
# Errors that mean "the store cannot serve us right now", not "this request is wrong":
# the gateway answers 503 + Retry-After for them instead of a 500.
_UNAVAILABLE = frozenset({
    "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "RequestTimeTooSkewed", "SlowDown", "Throttling",
    "RequestTimeout", "ServiceUnavailable", "InternalError",
})
# Transport failures (aiobotocore maps most aiohttp errors onto botocore's, but not all).
_TRANSPORT_ERRORS = (
    ConnectionError, HTTPClientError, IncompleteReadError, NoCredentialsError,
    PartialCredentialsError, CredentialRetrievalError, aiohttp.ClientError, TimeoutError,
)


def error_code(e: ClientError) -> Any:
    """The S3 error code of a refusal (``NoSuchBucket``, ``AccessDenied``, ...)."""
    return e.response.get("Error", {}).get("Code")


class S3Connection:
    """The client every S3 operation goes through, the bucket, and our prefix in it."""

    def __init__(self, settings: Settings, session: aioboto3.Session | None = None):
        self.settings = settings
        self.bucket = settings.s3.bucket
        self.root = settings.s3.prefix.strip("/")
        self._session = session or aioboto3.Session()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        # Every HTTP request sent, retries included, by S3 operation (PutObject, ...).
        self.requests: dict[str, int] = {}

    # -- the client -----------------------------------------------------------------------

    async def open(self) -> None:
        s = self.settings
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": s.s3.addressing},
            # Few retries and short timeouts: a dead server must show up in readiness
            # within seconds, not after botocore's default minutes of retrying.
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=3,
            read_timeout=30,
            max_pool_connections=64,
            # botocore >= 1.36 adds CRC checksums (aws-chunked bodies) to every upload by
            # default; several S3-compatible servers reject them. Only where S3 needs one.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(self._session.client(
            "s3", endpoint_url=s.s3.endpoint or None, region_name=s.s3.region, config=config))
        self._client.meta.events.register("before-send.s3", self._count)
        self._stack = stack

    def _count(self, event_name: str = "", **_: Any) -> None:
        # botocore names the event before-send.s3.<Operation>; presigning sends nothing.
        operation = event_name.rpartition(".")[2] or "unknown"
        self.requests[operation] = self.requests.get(operation, 0) + 1

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StorageUnavailable("S3 storage is not started", retry_after=RETRY_AFTER_S)
        return self._client

    # -- keys -----------------------------------------------------------------------------

    def full(self, key: str) -> str:
        # The local store's rules, so a key valid on one store is valid on the other.
        problem = path_problem(key)
        if problem:
            raise ValueError(f"storage key {key!r} {problem}")
        return f"{self.root}/{key}" if self.root else key

    def full_prefix(self, prefix: str) -> str:
        return f"{self.root}/{prefix}" if self.root else prefix

    def relative(self, full_key: str) -> str:
        return full_key[len(self.root) + 1:] if self.root else full_key

    # -- errors ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self, key: str | None = None) -> Iterator[None]:
        """Maps boto's exceptions onto jobgate's: missing key -> ObjectNotFound, anything
        that means the store cannot serve -> StorageUnavailable (a 503, never a 500)."""
        try:
            yield
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if key is not None and code != "NoSuchBucket" and (
                    code in _NOT_FOUND or status == 404):
                raise ObjectNotFound(key) from None
            if code in _UNAVAILABLE or status >= 500 or status in (401, 403, 404):
                raise StorageUnavailable(
                    f"object storage refused the request ({code or status})",
                    retry_after=RETRY_AFTER_S) from e
            raise
        except _TRANSPORT_ERRORS as e:
            # The endpoint stays out of the message (clients see it in the 503); the
            # chained exception keeps it for the logs.
            raise StorageUnavailable(f"object storage unreachable ({type(e).__name__})",
                                     retry_after=RETRY_AFTER_S) from e
