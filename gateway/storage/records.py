"""The invocation layout on an object store. Everything an invocation owns lives under
one prefix per tenant and invocation, so it is deleted in one sweep:

    {tenant}/{id}/record.json        the invocation record (status, result, timings);
                                     once it ended, with its output when that is small
    {tenant}/{id}/stdout, stderr     captured output (capped), when it is not small
    {tenant}/{id}/artifacts/{name}   files the code wrote under artifacts/
    {tenant}/{id}/report.json        the report a worker uploaded itself (S3 storage)

Beside it, small indexes, each an object per entry so any replica can read them:

    _pending/{tenant}/{id}           accepted and not finished: recovered after a crash;
                                     it holds the record as accepted and the request
                                     (what recovery runs): until the code is claimed a
                                     worker, there is no record.json (one object fewer)
    _callbacks/{tenant}/{id}         a callback not yet delivered (its owner, its secret)
    _idempotency/{tenant}/{sha256(key)}      Idempotency-Key -> invocation id
    _usage/{tenant}/{epoch}~{id}~{kind}~{bytes}[~{sha256(key)}]
                                     what it keeps, and when it expires: the stored-bytes
                                     quota's ledger and the janitor's expiry index in one
                                     (gateway.storage.usage; the a entry is the marker)
    _expiry/{minute}/{epoch}~{tenant}~{id}   the expiry index of an earlier layout, still
                                     swept (no longer written: it was an object more)
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from pydantic import ValidationError

from gateway.errors import InvocationNotFound, ObjectNotFound
from gateway.models import InvocationRecord, Status
from gateway.storage.base import ObjectStore
from gateway.storage.deferred import FLUSH_EVERY_S, DeferredDeletes
from gateway.storage.usage import (
    ADMITTED,
    STORED,
    USAGE,
    Entry,
    UsageLedger,
    entry_key,
    parse_entry,
    tenant_prefix,
)

PENDING = "_pending"
EXPIRY = "_expiry"
IDEMPOTENCY = "_idempotency"
CALLBACKS = "_callbacks"
REPORT = "report.json"
_SEP = "~"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"
# Output up to this size (stdout and stderr together, UTF-8) is kept inside the record.
INLINE_OUTPUT_BYTES = 16 * 1024
# A pending marker of this layout: this line, the record as accepted (JSON, one line),
# a newline, then the request's bytes as the client sent them. Earlier layouts: the
# request alone (a JSON object), or nothing (request.json beside the record).
PENDING_V2 = b"jobgate-pending/2\n"


def pending_body(record_json: bytes, request_body: bytes) -> bytes:
    return PENDING_V2 + record_json + b"\n" + request_body


def split_pending(body: bytes) -> tuple[bytes | None, bytes]:
    """(the record as accepted, or None in an earlier layout; the request)."""
    if not body.startswith(PENDING_V2):
        return None, body
    record_json, _, request_body = body[len(PENDING_V2):].partition(b"\n")
    return record_json, request_body


def _bucket(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M")


@dataclass(frozen=True)
class ExpiryEntry:
    """An invocation past its TTL, as the expiry index names it."""

    tenant: str
    invocation_id: str
    expires_epoch: int
    markers: tuple[str, ...]  # its index entries: deleted last, after all it owns
    owned: tuple[str, ...] = ()  # keys it owns outside its prefix (its Idempotency-Key's)
    legacy: bool = False  # an _expiry/ marker of the earlier layout: its body lists them


@dataclass(frozen=True)
class IdempotencyEntry:
    invocation_id: str
    body_sha256: str


@dataclass(frozen=True)
class CallbackMark:
    owner: str
    secret: str | None


class InvocationStore:
    """The only reader and writer of the layout above: nothing else builds a key."""

    def __init__(self, store: ObjectStore, *, list_concurrency: int = 16,
                 delete_delay_s: float = FLUSH_EVERY_S):
        self._store = store
        self._list_concurrency = list_concurrency
        # A finished invocation's pending marker goes with others in one request.
        self._deferred = DeferredDeletes(store, delete_delay_s)
        # The invocations' usage entries, summed per tenant (the stored-bytes quota).
        self.usage = UsageLedger(store)

    async def flush(self) -> None:
        """The deletes waiting to share a request, done now."""
        await self._deferred.flush()

    async def close(self) -> None:
        """The deletes still waiting, done (before the store closes)."""
        await self._deferred.close()

    # -- keys ---------------------------------------------------------------------------

    @staticmethod
    def prefix(tenant: str, invocation_id: str) -> str:
        return f"{tenant}/{invocation_id}/"

    def key(self, tenant: str, invocation_id: str, name: str) -> str:
        return self.prefix(tenant, invocation_id) + name

    def artifact_key(self, tenant: str, invocation_id: str, name: str) -> str:
        return self.key(tenant, invocation_id, f"artifacts/{name}")

    @staticmethod
    def _entry(index: str, tenant: str, name: str) -> str:
        """The key of a tenant's entry in one of the indexes: ``{index}/{tenant}/{name}``,
        the name an invocation id (or, for Idempotency-Keys, the key's hash)."""
        return f"{index}/{tenant}/{name}"

    @property
    def presigns(self) -> bool:
        """Whether workers can upload to this store themselves (presigned PUT URLs)."""
        return self._store.presigns

    # -- lifecycle ----------------------------------------------------------------------

    async def create(self, record: InvocationRecord, request_body: bytes,
                     idempotency: tuple[str, str] | None = None, *,
                     stored_bytes: int = 0) -> None:
        """Persist a new invocation: after this returns it survives a gateway crash.
        ``stored_bytes``: what admission charged it, in its usage entry."""
        t, i = record.tenant, record.id
        # The record as accepted and the request ride in the pending marker: one object
        # for both, written at once (a crash cannot keep one without the other), and no
        # record.json until there is more to say (the worker claimed: 'running').
        # Readers of a record fall back to the marker (load); the list merges markers in.
        _, record_json, _ = self._record_item(record)
        items = [(self._entry(PENDING, t, i), pending_body(record_json, request_body),
                  BINARY)]
        key_hash = None
        if idempotency is not None:
            key_hash, body_hash = idempotency
            items.append((self._entry(IDEMPOTENCY, t, key_hash),
                          orjson.dumps({"id": i, "body_sha256": body_hash}), JSON))
        # The usage entry is the expiry marker too (it names the Idempotency-Key's entry
        # for the janitor): one object where there were two.
        items.append((entry_key(t, i, ADMITTED, record.expires_at, stored_bytes, key_hash),
                      b"", BINARY))
        await self._store.put_many(items, expires_at=record.expires_at)

    def _record_item(self, record: InvocationRecord, *, with_logs: bool = False
                     ) -> tuple[str, bytes, str]:
        if with_logs:
            body = record.model_dump_json().encode()
        else:
            body = record.model_dump_json(exclude={"stdout", "stderr"}).encode()
        return self.key(record.tenant, record.id, "record.json"), body, JSON

    async def save(self, record: InvocationRecord) -> None:
        key, body, ctype = self._record_item(record)
        await self._store.put(key, body, expires_at=record.expires_at, content_type=ctype)

    def _final_items(self, record: InvocationRecord) -> list[tuple[str, bytes, str]]:
        """The objects ``finish`` writes. Small output goes inside the record (one object
        to write and to read, not three); larger output in objects of its own, which the
        record then leaves out."""
        t, i = record.tenant, record.id
        out, err = (record.stdout or "").encode(), (record.stderr or "").encode()
        if len(out) + len(err) <= INLINE_OUTPUT_BYTES:
            return [self._record_item(record.model_copy(
                update={"stdout": record.stdout or "", "stderr": record.stderr or ""}),
                with_logs=True)]
        return [(self.key(t, i, "stdout"), out, TEXT),
                (self.key(t, i, "stderr"), err, TEXT), self._record_item(record)]

    def final_sizes(self, record: InvocationRecord) -> dict[str, int]:
        """What ``finish`` would write now: name (under the invocation's prefix) -> bytes."""
        start = len(self.prefix(record.tenant, record.id))
        return {key[start:]: len(data) for key, data, _ in self._final_items(record)}

    async def finish(self, record: InvocationRecord, *, stored_bytes: int | None = None
                     ) -> None:
        """Store the outputs and the final record, then drop the pending marker.
        ``stored_bytes``: everything the invocation keeps, its final usage entry."""
        t, i = record.tenant, record.id
        items = self._final_items(record)
        if stored_bytes is not None:
            items.append((entry_key(t, i, STORED, record.expires_at, stored_bytes), b"",
                          BINARY))
        await self._store.put_many(items, expires_at=record.expires_at)
        # The marker may wait for others (one DeleteObjects for many on S3): if a crash
        # keeps it, recovery finds the invocation finished and drops it then.
        self._deferred.add(self._entry(PENDING, t, i))

    async def kept(self, record: InvocationRecord) -> dict[str, int]:
        """What the invocation keeps in storage now: name (under its prefix) -> bytes."""
        prefix = self.prefix(record.tenant, record.id)
        objects = await self._store.list_objects(prefix, limit=100_000)
        return {o.key[len(prefix):]: o.size for o in objects}

    async def drop_artifacts(self, record: InvocationRecord, names: list[str]) -> None:
        await self._store.delete_keys([self.artifact_key(record.tenant, record.id, name)
                                       for name in names])

    # -- reads --------------------------------------------------------------------------

    async def load(self, tenant: str, invocation_id: str, *, with_logs: bool = True
                   ) -> InvocationRecord:
        try:
            raw = await self._store.get(self.key(tenant, invocation_id, "record.json"))
        except (ObjectNotFound, ValueError):
            raw = await self._accepted_record(tenant, invocation_id)
        record = InvocationRecord.model_validate_json(raw)
        if not with_logs:
            record.stdout = record.stderr = None
        elif record.status.terminal and record.stdout is None:  # not inline: its objects
            record.stdout, record.stderr = await self._logs(tenant, invocation_id)
        return record

    async def _accepted_record(self, tenant: str, invocation_id: str) -> bytes:
        """The record as accepted, from the pending marker of an invocation not yet
        claimed a worker (InvocationNotFound: none)."""
        try:
            record_json, _ = split_pending(await self._store.get(
                self._entry(PENDING, tenant, invocation_id)))
        except (ObjectNotFound, ValueError):
            record_json = None
        if record_json is None:
            raise InvocationNotFound(f"no invocation {invocation_id!r}")
        return record_json

    async def _logs(self, tenant: str, invocation_id: str) -> tuple[str, str]:
        async def one(name: str) -> str:
            try:
                data = await self._store.get(self.key(tenant, invocation_id, name))
            except ObjectNotFound:
                return ""
            return data.decode("utf-8", errors="replace")

        out, err = await asyncio.gather(one("stdout"), one("stderr"))
        return out, err

    async def load_request(self, tenant: str, invocation_id: str) -> bytes:
        """The accepted request of an unfinished invocation (ObjectNotFound: none)."""
        _, body = split_pending(await self._store.get(
            self._entry(PENDING, tenant, invocation_id)))
        if not body:  # the first layout: an empty marker, request.json beside the record
            body = await self._store.get(self.key(tenant, invocation_id, "request.json"))
        return body

    async def list_page(self, tenant: str, *, status: Status | None, profile: str | None,
                        cursor: str | None, limit: int
                        ) -> tuple[list[InvocationRecord], str | None]:
        """Newest first (ids sort that way). Scans at most 10 pages' worth of ids per call;
        the cursor resumes after the last id scanned, matched or not."""
        found: list[InvocationRecord] = []
        scanned_last: str | None = cursor
        budget = max(limit * 10, 100)
        sem = asyncio.Semaphore(self._list_concurrency)

        async def load(i: str) -> InvocationRecord | None:
            async with sem:
                try:
                    return await self.load(tenant, i, with_logs=False)
                except (InvocationNotFound, ValidationError):
                    return None  # created but not yet recorded, or being deleted

        filtered = status is not None or profile is not None
        while len(found) < limit and budget > 0:
            # Unfiltered, every record read is one returned: read no more than the page
            # needs (reading 200 for a page of 20 made the first page cost 10x).
            wanted = min(budget, 200) if filtered else min(budget, limit - len(found))
            ids = await self._ids_after(tenant, scanned_last, wanted)
            if not ids:
                return found, None
            records = await asyncio.gather(*(load(i) for i in ids))
            for inv_id, rec in zip(ids, records, strict=True):
                scanned_last = inv_id
                budget -= 1
                if rec is None:
                    continue
                if status is not None and rec.status != status:
                    continue
                if profile is not None and rec.profile != profile:
                    continue
                found.append(rec)
                if len(found) == limit:
                    return found, scanned_last
        return found, scanned_last

    async def _ids_after(self, tenant: str, after: str | None, limit: int) -> list[str]:
        """The tenant's next ``limit`` invocation ids after ``after``, in order: those with
        objects of their own and those only accepted (a pending marker, no record.json
        yet). Both lists are in the same order, so their merge's first ``limit`` are."""
        index = f"{PENDING}/{tenant}/"
        stored, accepted = await asyncio.gather(
            self._store.list_children(f"{tenant}/", start_after=after, limit=limit),
            self._store.list_keys(index, start_after=index + after if after else None,
                                  limit=limit))
        names = {*stored, *(key[len(index):] for key in accepted)}
        return sorted(i for i in names if i.startswith("inv_"))[:limit]

    # -- indexes ------------------------------------------------------------------------

    async def _index(self, index: str) -> list[tuple[str, str]]:
        """(tenant, invocation id) of every entry in a per-invocation index."""
        keys = await self._store.list_keys(f"{index}/", limit=100_000)
        return [(tenant, inv) for _, tenant, inv in (key.split("/", 2) for key in keys)]

    async def pending(self) -> list[tuple[str, str]]:
        """(tenant, invocation id) of every invocation accepted and not finished."""
        return await self._index(PENDING)

    @staticmethod
    def hash_idempotency_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    async def idempotency(self, tenant: str, key_hash: str) -> IdempotencyEntry | None:
        try:
            raw = orjson.loads(await self._store.get(
                self._entry(IDEMPOTENCY, tenant, key_hash)))
        except ObjectNotFound:
            return None
        return IdempotencyEntry(raw["id"], raw["body_sha256"])

    async def due(self, now: datetime, *, limit: int = 500
                  ) -> AsyncIterator[list[ExpiryEntry]]:
        """The invocations past their TTL at ``now``, in batches of at most ``limit``
        index entries: the earlier layout's index first, then each tenant's entries, the
        oldest first. Each tenant's listing stops at its first entry not yet due, so a
        sweep costs a listing per tenant that keeps anything, plus one per page of what
        is due. The caller deletes a batch before it asks for the next."""
        async for batch in self._legacy_due(now, limit):
            yield batch
        epoch_now, after = now.timestamp(), None
        while tenants := await self._store.list_children(f"{USAGE}/", start_after=after):
            for tenant in tenants:
                async for batch in self._tenant_due(tenant, epoch_now, limit):
                    yield batch
            after = tenants[-1]

    async def _tenant_due(self, tenant: str, epoch_now: float, limit: int
                          ) -> AsyncIterator[list[ExpiryEntry]]:
        prefix, after = tenant_prefix(tenant), None
        while True:
            keys = await self._store.list_keys(prefix, start_after=after, limit=limit)
            found: dict[str, list[Entry]] = {}
            done = len(keys) < limit
            for key in keys:
                entry = parse_entry(key)
                if entry is None:
                    continue
                if entry.legacy or entry.expires_epoch > epoch_now:
                    done = True  # the rest is later (or the earlier layout's: not here)
                    break
                found.setdefault(entry.invocation_id, []).append(entry)
            if found:
                yield [ExpiryEntry(
                    tenant, inv, entries[0].expires_epoch, tuple(e.key for e in entries),
                    tuple(self._entry(IDEMPOTENCY, tenant, e.idempotency_hash)
                          for e in entries if e.idempotency_hash is not None))
                    for inv, entries in found.items()]
            if done:
                return
            after = keys[-1]

    async def _legacy_due(self, now: datetime, limit: int
                          ) -> AsyncIterator[list[ExpiryEntry]]:
        """The ``_expiry/{minute}/`` index of the earlier layout (empty once its last
        invocation expired)."""
        current, epoch_now = _bucket(now), now.timestamp()
        for bucket in await self._store.list_children(f"{EXPIRY}/"):
            if bucket > current:
                return
            after = None
            while keys := await self._store.list_keys(f"{EXPIRY}/{bucket}/",
                                                      start_after=after, limit=limit):
                batch = []
                for key in keys:
                    epoch_s, tenant, inv = key.rsplit("/", 1)[1].split(_SEP, 2)
                    if int(epoch_s) <= epoch_now:
                        batch.append(ExpiryEntry(tenant, inv, int(epoch_s), (key,),
                                                 legacy=True))
                if batch:
                    yield batch
                after = keys[-1]

    async def delete_expired(self, entries: list[ExpiryEntry], *, concurrency: int = 16
                             ) -> int:
        """Delete expired invocations with everything they own; returns the objects
        deleted. Markers go last, in one batch after all else (so a crash halfway leaves
        them, and the next sweep finishes the job). The index entries of all of them are
        deleted together: on S3 one DeleteObjects per 1,000 keys, not three requests an
        invocation, and the invocations' own objects ``concurrency`` at a time
        (``python -m bench.janitor_ab`` measures it against one by one)."""
        slots = asyncio.Semaphore(concurrency)

        async def own(entry: ExpiryEntry) -> tuple[int, list[str]]:
            async with slots:
                owned = list(entry.owned)
                if entry.legacy:
                    try:
                        owned = orjson.loads(await self._store.get(entry.markers[0])
                                             ).get("keys", [])
                    except (ObjectNotFound, orjson.JSONDecodeError):
                        owned = []
                count = await self._store.delete_prefix(
                    self.prefix(entry.tenant, entry.invocation_id))
            return count + len(owned), [
                *owned, self._entry(PENDING, entry.tenant, entry.invocation_id)]

        owned = await asyncio.gather(*(own(entry) for entry in entries))
        await self._store.delete_keys([key for _, keys in owned for key in keys])
        await self._store.delete_keys([m for entry in entries for m in entry.markers])
        return sum(count for count, _ in owned)

    # -- outputs ------------------------------------------------------------------------

    async def put_artifact_file(self, record: InvocationRecord, name: str, path: Path,
                                sha256: str) -> None:
        await self._store.put_file(self.artifact_key(record.tenant, record.id, name), path,
                                   expires_at=record.expires_at, sha256=sha256)

    async def presign_artifact_put(self, tenant: str, invocation_id: str, name: str, *,
                                   expires_s: int, size: int) -> str | None:
        """A URL for exactly ``size`` bytes (what the quota and the limits let through)."""
        return await self._store.presign_put(self.artifact_key(tenant, invocation_id, name),
                                             expires_s=expires_s, content_length=size)

    async def presign_report_put(self, record: InvocationRecord, *, expires_s: int
                                 ) -> str | None:
        return await self._store.presign_put(self.key(record.tenant, record.id, REPORT),
                                             expires_s=expires_s, content_type=JSON)

    async def worker_report(self, record: InvocationRecord) -> bytes | None:
        """The report a worker uploaded itself, None if there is none."""
        try:
            return await self._store.get(self.key(record.tenant, record.id, REPORT))
        except ObjectNotFound:
            return None

    async def drop_worker_report(self, record: InvocationRecord) -> None:
        await self._store.delete_keys([self.key(record.tenant, record.id, REPORT)])

    async def artifact_url(self, tenant: str, invocation_id: str, name: str, *,
                           expires_s: int) -> str | None:
        """A URL a client can GET the artifact from, or None: then it is streamed."""
        return await self._store.presign_get(self.artifact_key(tenant, invocation_id, name),
                                             expires_s=expires_s,
                                             filename=name.rsplit("/", 1)[-1])

    def artifact_stream(self, tenant: str, invocation_id: str, name: str
                        ) -> AsyncIterator[bytes]:
        return self._store.stream(self.artifact_key(tenant, invocation_id, name))

    # -- callback marks -----------------------------------------------------------------

    async def mark_callback(self, record: InvocationRecord, secret: str | None) -> None:
        await self._store.put(self._entry(CALLBACKS, record.tenant, record.id),
                              orjson.dumps({"secret": secret, "owner": record.replica}),
                              expires_at=record.expires_at)

    async def callback_marks(self) -> list[tuple[str, str]]:
        """(tenant, invocation id) of every callback not yet delivered."""
        return await self._index(CALLBACKS)

    async def callback_mark(self, tenant: str, invocation_id: str) -> CallbackMark | None:
        try:
            raw = orjson.loads(await self._store.get(
                self._entry(CALLBACKS, tenant, invocation_id)))
        except (ObjectNotFound, orjson.JSONDecodeError):
            return None
        return CallbackMark(str(raw.get("owner") or ""), raw.get("secret"))

    async def unmark_callback(self, tenant: str, invocation_id: str) -> None:
        await self._store.delete_keys([self._entry(CALLBACKS, tenant, invocation_id)])
