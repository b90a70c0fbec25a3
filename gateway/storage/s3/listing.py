"""Listing and deleting S3 objects under a prefix: keys page by page, the names directly
under a prefix (CommonPrefixes and objects), and DeleteObjects in batches."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import StorageUnavailable
from gateway.storage.base import ObjectInfo
from gateway.storage.s3.connection import RETRY_AFTER_S, S3Connection

# S3 limits: DeleteObjects takes at most 1000 keys, a listing page holds at most 1000.
BATCH = 1000
# Concurrent delete batches of one delete_prefix / delete_keys call.
_DELETE_CONCURRENCY = 4


def _next_page(params: dict[str, Any], page: dict[str, Any]) -> bool:
    """Point ``params`` at the page after ``page``; False when that was the last."""
    if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
        return False
    params["ContinuationToken"] = page["NextContinuationToken"]
    return True


async def list_objects(s3: S3Connection, prefix: str, *, start_after: str | None,
                       limit: int) -> list[ObjectInfo]:
    """Keys and sizes under ``prefix``, page by page (a listing names each size)."""
    found: list[ObjectInfo] = []
    params: dict[str, Any] = {"Bucket": s3.bucket, "Prefix": s3.full_prefix(prefix)}
    if start_after:
        params["StartAfter"] = s3.full_prefix(start_after)
    # Bounded: each page brings at least one key or ends the listing.
    while len(found) < limit:
        with s3.errors():
            r = await s3.client.list_objects_v2(
                **params, MaxKeys=min(BATCH, limit - len(found)))
        found.extend(ObjectInfo(s3.relative(o["Key"]), int(o.get("Size", 0)))
                     for o in r.get("Contents", []))
        if not _next_page(params, r):
            break
    return found[:limit]


async def list_keys(s3: S3Connection, prefix: str, *, start_after: str | None,
                    limit: int) -> list[str]:
    return [o.key for o in await list_objects(s3, prefix, start_after=start_after,
                                              limit=limit)]


async def list_children(s3: S3Connection, prefix: str, *, start_after: str | None,
                        limit: int) -> list[str]:
    """Names of both sub-'directories' (CommonPrefixes) and objects directly under
    ``prefix/``, like ``os.listdir``. The server's order is used across pages: it is
    name order except where a name is followed by a character below '/' (e.g. 'a'
    and 'a-b' on AWS), which the invocation layout never produces."""
    base = s3.full_prefix(prefix.rstrip("/") + "/" if prefix.strip("/") else "")
    params: dict[str, Any] = {"Bucket": s3.bucket, "Prefix": base, "Delimiter": "/"}
    if start_after:
        params["StartAfter"] = base + start_after
    names: list[str] = []
    while len(names) < limit:
        with s3.errors():
            r = await s3.client.list_objects_v2(**params, MaxKeys=BATCH)
        page = sorted(
            {p["Prefix"][len(base):].rstrip("/") for p in r.get("CommonPrefixes", [])}
            | {o["Key"][len(base):] for o in r.get("Contents", [])})
        for name in page:
            # AWS lists 'x/' again after StartAfter='x' (its keys sort after 'x');
            # a name that is both an object and a prefix shows up once.
            if name and (start_after is None or name > start_after) and \
                    (not names or name != names[-1]):
                names.append(name)
        if not _next_page(params, r):
            break
    return names[:limit]


async def _delete_batch(s3: S3Connection, full_keys: list[str]) -> None:
    with s3.errors():
        r = await s3.client.delete_objects(
            Bucket=s3.bucket,
            Delete={"Objects": [{"Key": k} for k in full_keys], "Quiet": True})
    errors = r.get("Errors") or []
    if errors:
        first = errors[0]
        raise StorageUnavailable(
            f"could not delete {len(errors)} object(s), e.g. {first.get('Key')!r}: "
            f"{first.get('Code')}", retry_after=RETRY_AFTER_S)


async def delete_keys(s3: S3Connection, keys: list[str]) -> None:
    full = [s3.full(k) for k in keys]
    batches = [full[i:i + BATCH] for i in range(0, len(full), BATCH)]
    slots = asyncio.Semaphore(_DELETE_CONCURRENCY)

    async def one(batch: list[str]) -> None:
        async with slots:
            await _delete_batch(s3, batch)

    await asyncio.gather(*(one(b) for b in batches))


async def delete_prefix(s3: S3Connection, prefix: str) -> int:
    """List a page, delete it in one DeleteObjects, go on after its last key: every
    round moves forward, so the loop ends even if a deleted key were listed again."""
    deleted = 0
    last: str | None = None
    while True:
        keys = await list_keys(s3, prefix, start_after=last, limit=BATCH)
        if not keys:
            return deleted
        await _delete_batch(s3, [s3.full(k) for k in keys])
        deleted += len(keys)
        last = keys[-1]
