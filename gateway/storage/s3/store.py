"""The S3 ObjectStore: the storage seam on one S3 connection, its reads and its presigned
URLs here, its bucket, writes and listings in the modules beside it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aioboto3

from gateway.config.settings import Settings
from gateway.storage.base import ObjectInfo, ObjectStore
from gateway.storage.s3 import bucket, listing, uploads
from gateway.storage.s3.bucket import LifecycleState
from gateway.storage.s3.connection import S3Connection

# SigV4 presigned URLs live at most 7 days.
_MAX_PRESIGN_S = 7 * 86400


def _content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name for clients that read it."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _ttl(expires_s: int) -> int:
    """The caller's lifetime (a worker's report URL must outlive its run), within what
    SigV4 allows."""
    return max(1, min(expires_s, _MAX_PRESIGN_S))


class S3Store(ObjectStore):
    name = "s3"
    presigns = True

    def __init__(self, settings: Settings, *, session: aioboto3.Session | None = None):
        self.settings = settings
        self.bucket = settings.s3.bucket
        self._s3 = S3Connection(settings, session)
        # What start() found for the lifecycle rule (tests and operators read it).
        self.lifecycle: LifecycleState | None = None

    @property
    def client(self) -> Any:
        return self._s3.client

    @property
    def requests(self) -> dict[str, int]:
        return dict(self._s3.requests)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._s3.open()
        try:
            if self.settings.s3.create_bucket:
                await bucket.create(self._s3)
            self.lifecycle = await bucket.install_lifecycle(self._s3)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._s3.close()

    async def check(self) -> None:
        await bucket.check(self._s3)

    # -- writes ---------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, *, expires_at: datetime,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        return await uploads.put(self._s3, key, data, expires_at=expires_at,
                                 content_type=content_type)

    async def put_file(self, key: str, path: Path, *, expires_at: datetime,
                       content_type: str = "application/octet-stream",
                       sha256: str | None = None) -> ObjectInfo:
        return await uploads.put_file(self._s3, key, path, expires_at=expires_at,
                                      content_type=content_type, sha256=sha256)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        s3 = self._s3
        with s3.errors(key):
            r = await s3.client.get_object(Bucket=s3.bucket, Key=s3.full(key))
            body = r["Body"]
            try:
                return cast(bytes, await body.read())
            finally:
                body.close()

    async def head(self, key: str) -> ObjectInfo:
        s3 = self._s3
        with s3.errors(key):
            r = await s3.client.head_object(Bucket=s3.bucket, Key=s3.full(key))
        return ObjectInfo(key, int(r["ContentLength"]), r.get("Metadata", {}).get("sha256"))

    async def stream(self, key: str, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        s3 = self._s3
        with s3.errors(key):
            r = await s3.client.get_object(Bucket=s3.bucket, Key=s3.full(key))
        body = r["Body"]
        try:
            while True:
                with s3.errors(key):
                    chunk = await body.read(chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            # Stopped early: drop the connection rather than drain the rest of the body.
            body.close()

    async def list_keys(self, prefix: str, *, start_after: str | None = None,
                        limit: int = 1000) -> list[str]:
        return await listing.list_keys(self._s3, prefix, start_after=start_after,
                                       limit=limit)

    async def list_objects(self, prefix: str, *, start_after: str | None = None,
                           limit: int = 1000) -> list[ObjectInfo]:
        return await listing.list_objects(self._s3, prefix, start_after=start_after,
                                          limit=limit)

    async def list_children(self, prefix: str, *, start_after: str | None = None,
                            limit: int = 1000) -> list[str]:
        return await listing.list_children(self._s3, prefix, start_after=start_after,
                                           limit=limit)

    # -- deletes --------------------------------------------------------------------------

    async def delete_keys(self, keys: list[str]) -> None:
        await listing.delete_keys(self._s3, keys)

    async def delete_prefix(self, prefix: str) -> int:
        return await listing.delete_prefix(self._s3, prefix)

    # -- presigned URLs -------------------------------------------------------------------

    async def presign_get(self, key: str, *, expires_s: int, filename: str | None = None
                          ) -> str | None:
        s3 = self._s3
        params: dict[str, Any] = {"Bucket": s3.bucket, "Key": s3.full(key)}
        if filename:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        with s3.errors():  # signing may need to fetch credentials (IRSA)
            return cast(str, await s3.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=_ttl(expires_s)))

    async def presign_put(self, key: str, *, expires_s: int,
                          content_type: str = "application/octet-stream",
                          content_length: int | None = None) -> str | None:
        """The Content-Type is signed: the PUT must send exactly ``content_type``; so is a
        given ``content_length`` (the store refuses a body of any other size)."""
        s3 = self._s3
        params: dict[str, Any] = {"Bucket": s3.bucket, "Key": s3.full(key),
                                  "ContentType": content_type}
        if content_length is not None:
            params["ContentLength"] = content_length
        with s3.errors():
            return cast(str, await s3.client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=_ttl(expires_s)))
