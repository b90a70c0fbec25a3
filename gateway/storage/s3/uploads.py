"""Writing S3 objects with their expiry and sha256 as metadata: one PUT, or a multipart
upload read in order, hashed while it streams and verified before it completes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from gateway.errors import ChecksumMismatch
from gateway.storage.base import ObjectInfo
from gateway.storage.s3.connection import S3Connection

# Parts of one multipart upload in flight at once: memory stays at this many chunks.
_PART_CONCURRENCY = 4


def _metadata(expires_at: datetime, sha256: str) -> dict[str, str]:
    return {"expires-at": expires_at.astimezone(UTC).isoformat(), "sha256": sha256}


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


async def put(s3: S3Connection, key: str, data: bytes, *, expires_at: datetime,
              content_type: str) -> ObjectInfo:
    if len(data) > 1024 * 1024:
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    else:
        sha256 = hashlib.sha256(data).hexdigest()
    with s3.errors():
        await s3.client.put_object(
            Bucket=s3.bucket, Key=s3.full(key), Body=data, ContentType=content_type,
            Metadata=_metadata(expires_at, sha256))
    return ObjectInfo(key, len(data), sha256)


async def put_file(s3: S3Connection, key: str, path: Path, *, expires_at: datetime,
                   content_type: str, sha256: str | None) -> ObjectInfo:
    """The sha256 is metadata, so it must be known before the first byte goes out:
    a given ``sha256`` is used and verified while streaming (a mismatch aborts the
    upload, ChecksumMismatch); without one the file is hashed first, in a thread."""
    size = (await asyncio.to_thread(os.stat, path)).st_size
    if size < s3.settings.s3.multipart_threshold_bytes:
        # Below the threshold (16 MiB by default) one PUT is cheapest, and memory
        # holds at most that much.
        def read() -> tuple[bytes, str]:
            data = Path(path).read_bytes()
            return data, hashlib.sha256(data).hexdigest()

        data, actual = await asyncio.to_thread(read)
        if sha256 is not None and sha256 != actual:
            raise ChecksumMismatch(f"{path}: sha256 {actual} does not match the given "
                                   f"{sha256}")
        return await put(s3, key, data, expires_at=expires_at, content_type=content_type)
    expected = sha256 if sha256 is not None else await asyncio.to_thread(_hash_file, path)
    return await _put_multipart(s3, key, path, expires_at, content_type, expected)


async def _put_multipart(s3: S3Connection, key: str, path: Path, expires_at: datetime,
                         content_type: str, expected: str) -> ObjectInfo:
    full = s3.full(key)
    chunk = s3.settings.s3.multipart_chunk_bytes
    with s3.errors():
        created = await s3.client.create_multipart_upload(
            Bucket=s3.bucket, Key=full, ContentType=content_type,
            Metadata=_metadata(expires_at, expected))
    upload_id = created["UploadId"]
    digest = hashlib.sha256()
    slots = asyncio.Semaphore(_PART_CONCURRENCY)
    parts: list[dict[str, Any]] = []
    size = 0

    async def upload(number: int, body: bytes) -> None:
        try:
            with s3.errors():
                r = await s3.client.upload_part(
                    Bucket=s3.bucket, Key=full, UploadId=upload_id,
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
        with s3.errors():
            await s3.client.complete_multipart_upload(
                Bucket=s3.bucket, Key=full, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
    except BaseException as e:
        # An unfinished upload keeps its parts (and costs storage) until aborted.
        with contextlib.suppress(Exception):
            await asyncio.shield(s3.client.abort_multipart_upload(
                Bucket=s3.bucket, Key=full, UploadId=upload_id))
        if isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
            raise e.exceptions[0] from e  # one failed part: its own error, not a group
        raise
    return ObjectInfo(key, size, actual)
