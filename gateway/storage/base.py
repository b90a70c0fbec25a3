"""The storage seam: a small object-store interface with two implementations, ``local``
(a directory) and ``s3`` (any S3-compatible server). Keys are '/'-separated; the
invocation layout on top of it lives in ``gateway.storage.records``."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.errors import ObjectNotFound


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None


class ObjectStore(ABC):
    """Async object storage. Every write names the object's expiry; the store keeps it
    where it can (S3 object metadata) and the janitor enforces it through the expiry index."""

    name: str
    # True when presign_put() gives URLs: workers then upload their outputs themselves.
    presigns: bool = False

    @property
    def requests(self) -> dict[str, int]:
        """Requests made to a remote store since start, by operation (none: local)."""
        return {}

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients, create the bucket, install lifecycle rules."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""

    @abstractmethod
    async def check(self) -> None:
        """Raise StorageUnavailable when the store cannot serve (readiness)."""

    @abstractmethod
    async def put(self, key: str, data: bytes, *, expires_at: datetime,
                  content_type: str = "application/octet-stream") -> ObjectInfo: ...

    async def put_many(self, items: list[tuple[str, bytes, str]], *, expires_at: datetime
                       ) -> None:
        """Store several small objects ``(key, data, content_type)`` at once."""
        await asyncio.gather(*(self.put(key, data, expires_at=expires_at, content_type=ctype)
                               for key, data, ctype in items))

    @abstractmethod
    async def put_file(self, key: str, path: Path, *, expires_at: datetime,
                       content_type: str = "application/octet-stream",
                       sha256: str | None = None) -> ObjectInfo:
        """Store a file without reading it whole into memory. A given ``sha256`` is
        verified against the bytes stored: on a mismatch nothing is stored and
        ChecksumMismatch is raised (every store alike)."""

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The object's bytes, or ObjectNotFound."""

    @abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """The object's size, or ObjectNotFound."""

    @abstractmethod
    def stream(self, key: str, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The object's bytes in chunks (ObjectNotFound raised on first iteration)."""

    @abstractmethod
    async def list_keys(self, prefix: str, *, start_after: str | None = None,
                        limit: int = 1000) -> list[str]:
        """Keys under ``prefix`` in lexicographic order, after ``start_after``."""

    async def list_objects(self, prefix: str, *, start_after: str | None = None,
                           limit: int = 1000) -> list[ObjectInfo]:
        """Keys under ``prefix`` with their sizes, in key order (what a store lists at once;
        this default asks for each size)."""
        keys = await self.list_keys(prefix, start_after=start_after, limit=limit)
        found = []
        for key in keys:
            try:
                found.append(await self.head(key))
            except ObjectNotFound:
                continue  # deleted since the listing
        return found

    @abstractmethod
    async def list_children(self, prefix: str, *, start_after: str | None = None,
                            limit: int = 1000) -> list[str]:
        """Immediate child names under ``prefix/`` (like S3 CommonPrefixes), in order."""

    @abstractmethod
    async def delete_keys(self, keys: list[str]) -> None:
        """Delete keys; missing keys are not an error."""

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``, in batches; returns how many."""
        deleted = 0
        while True:
            keys = await self.list_keys(prefix, limit=1000)
            if not keys:
                return deleted
            await self.delete_keys(keys)
            deleted += len(keys)

    async def presign_get(self, key: str, *, expires_s: int, filename: str | None = None
                          ) -> str | None:
        """A URL a client can GET the object from, or None: then the gateway streams it."""
        return None

    async def presign_put(self, key: str, *, expires_s: int,
                          content_type: str = "application/octet-stream",
                          content_length: int | None = None) -> str | None:
        """A URL a worker can PUT the object to without credentials, or None when the
        store has no such URLs (local storage: the gateway stores outputs itself). With
        ``content_length``, the URL takes a body of exactly that many bytes."""
        return None
