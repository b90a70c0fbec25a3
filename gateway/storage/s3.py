"""S3 storage: any S3-compatible server (AWS S3, MinIO, SeaweedFS) through aioboto3.

One client per process, opened in ``start()`` and reused: a client per request would
pay a TLS handshake and a credential lookup each time. Credentials come only from the
standard AWS chain (environment, profile, IRSA), never from jobgate's settings.

Every object carries its expiry and sha256 as user metadata (``x-amz-meta-expires-at``,
``x-amz-meta-sha256``); the janitor deletes through the expiry index, and a bucket
lifecycle rule on our prefix is the second line of defence where the server has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, cast
from urllib.parse import quote

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
from gateway.errors import ChecksumMismatch, ObjectNotFound, StorageUnavailable
from gateway.paths import path_problem
from gateway.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger("jobgate.storage.s3")

# S3 limits: DeleteObjects takes at most 1000 keys, a listing page holds at most 1000,
# and SigV4 presigned URLs live at most 7 days.
_BATCH = 1000
_MAX_PRESIGN_S = 7 * 86400
# Parts of one multipart upload in flight at once: memory stays at this many chunks.
_PART_CONCURRENCY = 4
# Concurrent delete batches of one delete_prefix / delete_keys call.
_DELETE_CONCURRENCY = 4
# How long a caller should wait before retrying when the store is unreachable.
_RETRY_AFTER_S = 5
_LIFECYCLE_RULE_PREFIX = "jobgate-expiry"

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


def _metadata(expires_at: datetime, sha256: str) -> dict[str, str]:
    return {"expires-at": expires_at.astimezone(UTC).isoformat(), "sha256": sha256}


def _content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name for clients that read it."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _read_part(f: IO[bytes], size: int, digest: Any) -> bytes:
    """Runs in a thread: one part read and hashed off the event loop."""
    chunk = f.read(size)
    digest.update(chunk)
    return chunk


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class S3Store(ObjectStore):
    name = "s3"
    presigns = True

    def __init__(self, settings: Settings, *, session: aioboto3.Session | None = None):
        self.settings = settings
        self.bucket = settings.s3.bucket
        self._root = settings.s3.prefix.strip("/")
        self._session = session or aioboto3.Session()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        # What start() found for the lifecycle rule (tests and operators read it).
        self.lifecycle: Literal["installed", "unchanged", "refused"] | None = None

    # -- keys -----------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        # The local store's rules, so a key valid on one store is valid on the other.
        problem = path_problem(key)
        if problem:
            raise ValueError(f"storage key {key!r} {problem}")
        return f"{self._root}/{key}" if self._root else key

    def _full_prefix(self, prefix: str) -> str:
        return f"{self._root}/{prefix}" if self._root else prefix

    def _relative(self, full_key: str) -> str:
        return full_key[len(self._root) + 1:] if self._root else full_key

    # -- errors ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Maps boto's exceptions onto jobgate's: missing key -> ObjectNotFound, anything
        that means the store cannot serve -> StorageUnavailable (a 503, never a 500)."""
        try:
            yield
        except ClientError as e:
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if key is not None and code != "NoSuchBucket" and (
                    code in _NOT_FOUND or status == 404):
                raise ObjectNotFound(key) from None
            if code in _UNAVAILABLE or status >= 500 or status in (401, 403, 404):
                raise StorageUnavailable(
                    f"object storage refused the request ({code or status})",
                    retry_after=_RETRY_AFTER_S) from e
            raise
        except _TRANSPORT_ERRORS as e:
            # The endpoint stays out of the message (clients see it in the 503); the
            # chained exception keeps it for the logs.
            raise StorageUnavailable(f"object storage unreachable ({type(e).__name__})",
                                     retry_after=_RETRY_AFTER_S) from e

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StorageUnavailable("S3 storage is not started", retry_after=_RETRY_AFTER_S)
        return self._client

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
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
        self._stack = stack
        try:
            if s.s3.create_bucket:
                await self._create_bucket()
            await self._install_lifecycle()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _create_bucket(self) -> None:
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.settings.s3.region != "us-east-1":
            # us-east-1 is the one region that refuses an explicit location constraint.
            params["CreateBucketConfiguration"] = {
                "LocationConstraint": self.settings.s3.region}
        try:
            with self._errors():
                await self.client.create_bucket(**params)
            log.info("created bucket %s", self.bucket)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code == "BucketAlreadyExists":
                # AWS: someone else's bucket. Some SeaweedFS versions also say it for our
                # own: if we can list our prefix there, it is ours to use.
                await self.check()
            elif code != "BucketAlreadyOwnedByYou":
                raise

    async def _install_lifecycle(self) -> None:
        """Expire our objects ``max_ttl_s`` (in whole days, rounded up) after their last
        write. Objects are rewritten at most until their invocation finishes and expire
        at most max_ttl_s after creation, so the rule never runs ahead of the janitor.
        Other rules in the bucket are kept: we read, merge ours by ID, and write back."""
        days = max(1, math.ceil(self.settings.max_ttl_s / 86400))
        prefix = f"{self._root}/" if self._root else ""
        rule = {"ID": f"{_LIFECYCLE_RULE_PREFIX}-{self._root or 'bucket'}"[:255],
                "Status": "Enabled", "Filter": {"Prefix": prefix},
                "Expiration": {"Days": days}}
        # Transport failures propagate (the store is down: fail the start); a ClientError
        # is the server refusing lifecycle rules (unsupported, AccessDenied, ...).
        with self._errors():
            try:
                rules = await self._lifecycle_rules()
                if rule in rules:
                    self.lifecycle = "unchanged"
                    return
                rules = [r for r in rules if r.get("ID") != rule["ID"]] + [rule]
                await self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})
            except ClientError as e:
                self.lifecycle = "refused"
                log.warning(
                    "bucket %s refused the lifecycle rule (%s): the janitor alone "
                    "enforces TTLs; what it misses (e.g. while no gateway runs) stays "
                    "until deleted", self.bucket, e.response.get("Error", {}).get("Code", e))
                return
        self.lifecycle = "installed"
        log.info("lifecycle rule %s: objects under %r expire after %d day(s)",
                 rule["ID"], prefix, days)

    async def _lifecycle_rules(self) -> list[dict[str, Any]]:
        try:
            current = await self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return []
            raise
        return list(current.get("Rules", []))

    async def check(self) -> None:
        """A one-key listing of our prefix, not HeadBucket: HeadBucket needs
        s3:ListBucket on the whole bucket, which a policy limited to our prefix (see
        docs/storage.md) does not grant. Just as cheap, and it proves what we use."""
        with self._errors():
            await self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._full_prefix(""), MaxKeys=1)

    # -- writes ---------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, *, expires_at: datetime,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        if len(data) > 1024 * 1024:
            sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        else:
            sha256 = hashlib.sha256(data).hexdigest()
        with self._errors():
            await self.client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type,
                Metadata=_metadata(expires_at, sha256))
        return ObjectInfo(key, len(data), sha256)

    async def put_file(self, key: str, path: Path, *, expires_at: datetime,
                       content_type: str = "application/octet-stream",
                       sha256: str | None = None) -> ObjectInfo:
        """The sha256 is metadata, so it must be known before the first byte goes out:
        a given ``sha256`` is used and verified while streaming (a mismatch aborts the
        upload, ChecksumMismatch); without one the file is hashed first, in a thread."""
        size = (await asyncio.to_thread(os.stat, path)).st_size
        if size < self.settings.s3.multipart_threshold_bytes:
            # Below the threshold (16 MiB by default) one PUT is cheapest, and memory
            # holds at most that much.
            def read() -> tuple[bytes, str]:
                data = Path(path).read_bytes()
                return data, hashlib.sha256(data).hexdigest()

            data, actual = await asyncio.to_thread(read)
            if sha256 is not None and sha256 != actual:
                raise ChecksumMismatch(f"{path}: sha256 {actual} does not match the given "
                                       f"{sha256}")
            return await self.put(key, data, expires_at=expires_at,
                                  content_type=content_type)
        expected = sha256 if sha256 is not None else await asyncio.to_thread(_hash_file, path)
        return await self._put_multipart(key, path, expires_at, content_type, expected)

    async def _put_multipart(self, key: str, path: Path, expires_at: datetime,
                             content_type: str, expected: str) -> ObjectInfo:
        full = self._full(key)
        chunk = self.settings.s3.multipart_chunk_bytes
        with self._errors():
            created = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ContentType=content_type,
                Metadata=_metadata(expires_at, expected))
        upload_id = created["UploadId"]
        digest = hashlib.sha256()
        slots = asyncio.Semaphore(_PART_CONCURRENCY)
        parts: list[dict[str, Any]] = []
        size = 0

        async def upload(number: int, body: bytes) -> None:
            try:
                with self._errors():
                    r = await self.client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id,
                        PartNumber=number, Body=body)
                parts.append({"PartNumber": number, "ETag": r["ETag"]})
            finally:
                slots.release()

        try:
            f = await asyncio.to_thread(open, path, "rb")
            try:
                # Reads stay in order (the hash needs it); uploads overlap, at most
                # _PART_CONCURRENCY chunks in memory. The TaskGroup cancels the other
                # parts when one fails.
                async with asyncio.TaskGroup() as tg:
                    number = 0
                    while True:
                        await slots.acquire()
                        body = await asyncio.to_thread(_read_part, f, chunk, digest)
                        if not body:
                            slots.release()
                            break
                        number += 1
                        size += len(body)
                        tg.create_task(upload(number, body))
            finally:
                await asyncio.to_thread(f.close)
            actual = digest.hexdigest()
            if actual != expected:
                raise ChecksumMismatch(f"{path}: sha256 {actual} does not match {expected}")
            parts.sort(key=lambda p: int(p["PartNumber"]))
            with self._errors():
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id,
                    MultipartUpload={"Parts": parts})
        except BaseException as e:
            # An unfinished upload keeps its parts (and costs storage) until aborted.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id))
            if isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
                raise e.exceptions[0] from e  # one failed part: its own error, not a group
            raise
        return ObjectInfo(key, size, actual)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        with self._errors(key):
            r = await self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            body = r["Body"]
            try:
                return cast(bytes, await body.read())
            finally:
                body.close()

    async def head(self, key: str) -> ObjectInfo:
        with self._errors(key):
            r = await self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        return ObjectInfo(key, int(r["ContentLength"]), r.get("Metadata", {}).get("sha256"))

    async def stream(self, key: str, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        with self._errors(key):
            r = await self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        body = r["Body"]
        try:
            while True:
                with self._errors(key):
                    chunk = await body.read(chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            # Stopped early: drop the connection rather than drain the rest of the body.
            body.close()

    async def list_keys(self, prefix: str, *, start_after: str | None = None,
                        limit: int = 1000) -> list[str]:
        keys: list[str] = []
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full_prefix(prefix)}
        if start_after:
            params["StartAfter"] = self._full_prefix(start_after)
        # Bounded: each page brings at least one key or ends the listing.
        while len(keys) < limit:
            with self._errors():
                r = await self.client.list_objects_v2(
                    **params, MaxKeys=min(_BATCH, limit - len(keys)))
            keys.extend(self._relative(o["Key"]) for o in r.get("Contents", []))
            if not r.get("IsTruncated") or not r.get("NextContinuationToken"):
                break
            params["ContinuationToken"] = r["NextContinuationToken"]
        return keys[:limit]

    async def list_children(self, prefix: str, *, start_after: str | None = None,
                            limit: int = 1000) -> list[str]:
        """Names of both sub-'directories' (CommonPrefixes) and objects directly under
        ``prefix/``, like ``os.listdir``. The server's order is used across pages: it is
        name order except where a name is followed by a character below '/' (e.g. 'a'
        and 'a-b' on AWS), which the invocation layout never produces."""
        base = self._full_prefix(prefix.rstrip("/") + "/" if prefix.strip("/") else "")
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base, "Delimiter": "/"}
        if start_after:
            params["StartAfter"] = base + start_after
        names: list[str] = []
        while len(names) < limit:
            with self._errors():
                r = await self.client.list_objects_v2(**params, MaxKeys=_BATCH)
            page = sorted(
                {p["Prefix"][len(base):].rstrip("/") for p in r.get("CommonPrefixes", [])}
                | {o["Key"][len(base):] for o in r.get("Contents", [])})
            for name in page:
                # AWS lists 'x/' again after StartAfter='x' (its keys sort after 'x');
                # a name that is both an object and a prefix shows up once.
                if name and (start_after is None or name > start_after) and \
                        (not names or name != names[-1]):
                    names.append(name)
            if not r.get("IsTruncated") or not r.get("NextContinuationToken"):
                break
            params["ContinuationToken"] = r["NextContinuationToken"]
        return names[:limit]

    # -- deletes --------------------------------------------------------------------------

    async def _delete_batch(self, full_keys: list[str]) -> None:
        with self._errors():
            r = await self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in full_keys], "Quiet": True})
        errors = r.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageUnavailable(
                f"could not delete {len(errors)} object(s), e.g. {first.get('Key')!r}: "
                f"{first.get('Code')}", retry_after=_RETRY_AFTER_S)

    async def delete_keys(self, keys: list[str]) -> None:
        full = [self._full(k) for k in keys]
        batches = [full[i:i + _BATCH] for i in range(0, len(full), _BATCH)]
        slots = asyncio.Semaphore(_DELETE_CONCURRENCY)

        async def one(batch: list[str]) -> None:
            async with slots:
                await self._delete_batch(batch)

        await asyncio.gather(*(one(b) for b in batches))

    async def delete_prefix(self, prefix: str) -> int:
        """List a page, delete it in one DeleteObjects, go on after its last key: every
        round moves forward, so the loop ends even if a deleted key were listed again."""
        deleted = 0
        last: str | None = None
        while True:
            keys = await self.list_keys(prefix, start_after=last, limit=_BATCH)
            if not keys:
                return deleted
            await self._delete_batch([self._full(k) for k in keys])
            deleted += len(keys)
            last = keys[-1]

    # -- presigned URLs -------------------------------------------------------------------

    @staticmethod
    def _ttl(expires_s: int) -> int:
        """The caller's lifetime (a worker's report URL must outlive its run), within
        what SigV4 allows."""
        return max(1, min(expires_s, _MAX_PRESIGN_S))

    async def presign_get(self, key: str, *, expires_s: int, filename: str | None = None
                          ) -> str | None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if filename:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        with self._errors():  # signing may need to fetch credentials (IRSA)
            return cast(str, await self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=self._ttl(expires_s)))

    async def presign_put(self, key: str, *, expires_s: int,
                          content_type: str = "application/octet-stream") -> str | None:
        """The Content-Type is signed: the PUT must send exactly ``content_type``."""
        with self._errors():
            return cast(str, await self.client.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": self._full(key),
                        "ContentType": content_type},
                ExpiresIn=self._ttl(expires_s)))
