"""Local filesystem storage: the embedded default. Objects are files under
``{data_dir}/objects``; writes go to a temporary file and are renamed into place, so a
crash never leaves half an object. File I/O runs in a thread: never on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

from gateway.errors import ChecksumMismatch, ObjectNotFound, StorageUnavailable
from gateway.paths import path_problem
from gateway.storage.base import ObjectInfo, ObjectStore
from gateway.storage.listings import DirectoryListings
from gateway.storage.records import CALLBACKS, IDEMPOTENCY, PENDING
from gateway.storage.usage import USAGE

# Index roots whose children are tenants (gateway.storage.records' layout).
PER_TENANT_INDEXES = frozenset({PENDING, CALLBACKS, IDEMPOTENCY, USAGE})


class LocalStore(ObjectStore):
    name = "local"

    def __init__(self, root: Path):
        self.root = Path(root).resolve() / "objects"
        self._tmp = Path(root).resolve() / "tmp"
        # A tenant's directory holds one entry per stored invocation: its sorted listing
        # is kept while the directory is unchanged, so paging does not list it again.
        self._listings = DirectoryListings()

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        for d in (self.root, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    def _path(self, key: str) -> Path:
        problem = path_problem(key)
        if problem:
            raise ValueError(f"storage key {key!r} {problem}")
        return self.root.joinpath(*key.split("/"))

    async def check(self) -> None:
        ok = await asyncio.to_thread(os.access, self.root, os.W_OK)
        if not ok:
            raise StorageUnavailable(f"local storage {self.root} is not writable",
                                     retry_after=5)

    # -- writes -------------------------------------------------------------------------

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._tmp / f"{os.getpid()}-{os.urandom(8).hex()}"
        with open(tmp, "wb") as f:
            f.write(data)
        self._place(tmp, path)

    @staticmethod
    def _place(tmp: Path, path: Path) -> None:
        """Rename into place. A concurrent delete may remove the (empty) parent directory
        between our mkdir and our rename: make it again and retry."""
        for _ in range(10):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, path)
                return
            except FileNotFoundError:
                if not tmp.exists():
                    raise
        raise OSError(f"could not place {path}: its directory keeps disappearing")

    async def put(self, key: str, data: bytes, *, expires_at: datetime,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        await asyncio.to_thread(self._write, key, data)
        return ObjectInfo(key, len(data))

    async def put_many(self, items: list[tuple[str, bytes, str]], *, expires_at: datetime
                       ) -> None:
        """One thread hop for all of them: the records of one invocation are small."""

        def write_all() -> None:
            for key, data, _ in items:
                self._write(key, data)

        await asyncio.to_thread(write_all)

    def _copy(self, key: str, src: Path, sha256: str | None) -> ObjectInfo:
        path = self._path(key)
        tmp = self._tmp / f"{os.getpid()}-{os.urandom(8).hex()}"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(1024 * 1024):
                    digest.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
            actual = digest.hexdigest()
            if sha256 is not None and sha256 != actual:
                raise ChecksumMismatch(f"{src}: sha256 {actual} does not match the given "
                                       f"{sha256}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._place(tmp, path)
        return ObjectInfo(key, size, actual)

    async def put_file(self, key: str, path: Path, *, expires_at: datetime,
                       content_type: str = "application/octet-stream",
                       sha256: str | None = None) -> ObjectInfo:
        return await asyncio.to_thread(self._copy, key, path, sha256)

    # -- reads --------------------------------------------------------------------------

    def _read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._read, key)

    async def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        return ObjectInfo(key, st.st_size)

    async def stream(self, key: str, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        try:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk
        finally:
            f.close()

    def _walk(self, prefix: str) -> list[str]:
        base = self.root
        parts = [p for p in prefix.split("/") if p]
        start = base.joinpath(*parts) if parts else base
        if prefix and not prefix.endswith("/") and parts:
            # A partial last segment: walk its parent and filter.
            start = start.parent
        keys: list[str] = []
        if not start.exists():
            return keys
        for dirpath, _dirs, files in os.walk(start):
            rel = os.path.relpath(dirpath, base)
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return keys

    async def list_keys(self, prefix: str, *, start_after: str | None = None,
                        limit: int = 1000) -> list[str]:
        keys = sorted(await asyncio.to_thread(self._walk, prefix))
        if start_after:
            keys = [k for k in keys if k > start_after]
        return keys[:limit]

    def _sizes(self, keys: list[str]) -> list[ObjectInfo]:
        found = []
        for key in keys:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                found.append(ObjectInfo(key, self._path(key).stat().st_size))
        return found

    async def list_objects(self, prefix: str, *, start_after: str | None = None,
                           limit: int = 1000) -> list[ObjectInfo]:
        keys = await self.list_keys(prefix, start_after=start_after, limit=limit)
        return await asyncio.to_thread(self._sizes, keys)

    async def list_children(self, prefix: str, *, start_after: str | None = None,
                            limit: int = 1000) -> list[str]:
        parts = [p for p in prefix.split("/") if p]
        path = str(self.root.joinpath(*parts))
        return await asyncio.to_thread(self._listings.children, path,
                                       start_after=start_after, limit=limit)

    # -- deletes ------------------------------------------------------------------------

    def _delete(self, keys: list[str]) -> None:
        parents: set[Path] = set()
        for key in keys:
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                path.unlink()
            parents.add(path.parent)
        # Remove directories left empty, up to the root, but for the few that every
        # invocation would make again at once: the root's own children (tenants, the
        # index roots) and an index's per-tenant directory (_pending/<tenant>: one marker
        # per invocation in flight, often the only one). Their number is bounded by the
        # tenants; the expiry index's per-minute directories are not, and still go.
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            p = parent
            while p != self.root and self.root in p.parents:
                depth = len(p.parts) - len(self.root.parts)
                if depth == 1 or (depth == 2 and p.parent.name in PER_TENANT_INDEXES):
                    break
                try:
                    p.rmdir()
                except OSError:
                    break
                p = p.parent

    async def delete_keys(self, keys: list[str]) -> None:
        if keys:
            await asyncio.to_thread(self._delete, keys)

    async def delete_prefix(self, prefix: str) -> int:
        """A whole invocation directory goes in one rmtree."""
        if prefix.endswith("/"):
            path = self._path(prefix.rstrip("/"))
            count = len(await asyncio.to_thread(self._walk, prefix))
            await asyncio.to_thread(shutil.rmtree, path, True)
            await asyncio.to_thread(self._delete, [])
            return count
        return await super().delete_prefix(prefix)
