"""The ObjectStore contract, proven on both implementations: the local directory store and
the S3 store against a real SeaweedFS (signed requests, one unique prefix per test). The
invocation layout (records.py) runs on both too, since it is what the gateway uses."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ChecksumMismatch, InvocationNotFound, ObjectNotFound
from gateway.ids import new_invocation_id
from gateway.models import InvocationRecord, Status
from gateway.storage.base import ObjectStore
from gateway.storage.local import LocalStore
from gateway.storage.records import InvocationStore
from tests.servers.seaweedfs import SeaweedFS

BUCKET = "jobgate-test"
LATER = datetime.now(UTC) + timedelta(days=1)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    s: ObjectStore
    if request.param == "local":
        s = LocalStore(tmp_path / "store")
    else:
        from gateway.storage.s3 import S3Store

        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        s = S3Store(server.store_settings(BUCKET, f"t-{uuid.uuid4().hex[:12]}"),
                    session=server.session())
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def bounded(aws: list[Awaitable[object]], limit: int = 32) -> None:
    """Many small writes at once, but not thousands of sockets."""
    sem = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[object]) -> None:
        async with sem:
            await aw

    await asyncio.gather(*(one(a) for a in aws))


# -- objects ------------------------------------------------------------------------------


async def test_put_get_head_round_trip(store: ObjectStore) -> None:
    data = os.urandom(3000)
    info = await store.put("a/b/c.bin", data, expires_at=LATER)
    assert (info.key, info.size) == ("a/b/c.bin", 3000)
    assert await store.get("a/b/c.bin") == data
    assert (await store.head("a/b/c.bin")).size == 3000
    # Overwrite replaces; an empty object is an object.
    await store.put("a/b/c.bin", b"", expires_at=LATER)
    assert await store.get("a/b/c.bin") == b""
    assert (await store.head("a/b/c.bin")).size == 0


async def test_missing_key_raises_object_not_found(store: ObjectStore) -> None:
    await store.put("here/x", b"1", expires_at=LATER)
    with pytest.raises(ObjectNotFound):
        await store.get("here/y")
    with pytest.raises(ObjectNotFound):
        await store.head("nowhere/y")
    stream = store.stream("here/y")
    with pytest.raises(ObjectNotFound):
        await anext(stream)


async def test_stream_yields_bounded_chunks(store: ObjectStore) -> None:
    data = os.urandom(1024 * 1024 + 123)
    await store.put("s/big", data, expires_at=LATER)
    chunks = [c async for c in store.stream("s/big", chunk_size=64 * 1024)]
    assert b"".join(chunks) == data
    assert len(chunks) >= 17 and all(0 < len(c) <= 64 * 1024 for c in chunks)


async def test_put_file_returns_sha256(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "artifact.bin"
    data = os.urandom(700_000)
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    info = await store.put_file("f/artifact.bin", src, expires_at=LATER)
    assert (info.size, info.sha256) == (len(data), digest)
    info = await store.put_file("f/again.bin", src, expires_at=LATER, sha256=digest)
    assert info.sha256 == digest
    assert await store.get("f/artifact.bin") == data == await store.get("f/again.bin")


async def test_put_file_refuses_a_sha256_mismatch(store: ObjectStore, tmp_path: Path) -> None:
    """A sha256 given with the file is verified, by every store alike: a mismatch stores
    nothing (not even over an object already there) and raises ChecksumMismatch."""
    src = tmp_path / "artifact.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumMismatch):
        await store.put_file("m/new.bin", src, expires_at=LATER, sha256=wrong)
    with pytest.raises(ObjectNotFound):
        await store.head("m/new.bin")
    await store.put("m/old.bin", b"before", expires_at=LATER)
    with pytest.raises(ChecksumMismatch):
        await store.put_file("m/old.bin", src, expires_at=LATER, sha256=wrong)
    assert await store.get("m/old.bin") == b"before"
    assert await store.list_keys("m/") == ["m/old.bin"]


# -- listing ------------------------------------------------------------------------------

# Names use only characters above '/', where S3 key order, SeaweedFS's tree order and a
# sorted directory walk all agree.
KEYS = ["lst/a/1", "lst/a/2", "lst/ab", "lst/b", "lst/c/x/y", "lst/c/z", "lst/d_e/1"]


async def test_list_keys_order_paging_start_after(store: ObjectStore) -> None:
    shuffled = KEYS[3:] + KEYS[:3]
    await asyncio.gather(*(store.put(k, k.encode(), expires_at=LATER) for k in shuffled))
    await store.put("lst_sibling/x", b"x", expires_at=LATER)  # not under "lst/"
    assert await store.list_keys("lst/") == KEYS
    assert await store.list_keys("lst/a") == ["lst/a/1", "lst/a/2", "lst/ab"]
    assert await store.list_keys("lst/c/") == ["lst/c/x/y", "lst/c/z"]
    assert await store.list_keys("lst/zzz/") == []
    assert await store.list_keys("lst/", start_after="lst/ab") == KEYS[3:]
    assert await store.list_keys("lst/", limit=3) == KEYS[:3]
    # Paging with start_after = the last key seen walks every key exactly once.
    seen: list[str] = []
    for _ in range(len(KEYS) + 1):
        page = await store.list_keys("lst/", start_after=seen[-1] if seen else None, limit=2)
        if not page:
            break
        seen.extend(page)
    assert seen == KEYS


async def test_list_children(store: ObjectStore) -> None:
    keys = ["kids/inv_1/record.json", "kids/inv_1/stdout", "kids/inv_2/record.json",
            "kids/inv_3/artifacts/x", "kids/file", "kidsx/inv_9/record.json"]
    await asyncio.gather(*(store.put(k, b"1", expires_at=LATER) for k in keys))
    assert await store.list_children("kids/") == ["file", "inv_1", "inv_2", "inv_3"]
    assert await store.list_children("kids") == ["file", "inv_1", "inv_2", "inv_3"]
    assert await store.list_children("kids/", start_after="inv_1") == ["inv_2", "inv_3"]
    assert await store.list_children("kids/", limit=2) == ["file", "inv_1"]
    assert await store.list_children("kids/inv_3/") == ["artifacts"]
    assert await store.list_children("nobody/") == []
    seen: list[str] = []
    for _ in range(10):
        page = await store.list_children("kids/", start_after=seen[-1] if seen else None,
                                         limit=1)
        if not page:
            break
        seen.extend(page)
    assert seen == ["file", "inv_1", "inv_2", "inv_3"]


# -- deletes ------------------------------------------------------------------------------


async def test_delete_keys_missing_is_fine(store: ObjectStore) -> None:
    await store.put("d/one", b"1", expires_at=LATER)
    await store.put("d/two", b"2", expires_at=LATER)
    await store.delete_keys(["d/one", "d/never-was", "elsewhere/none"])
    await store.delete_keys([])
    assert await store.list_keys("d/") == ["d/two"]
    with pytest.raises(ObjectNotFound):
        await store.get("d/one")


async def test_delete_prefix_in_batches(store: ObjectStore) -> None:
    """More than one DeleteObjects batch (1000 keys) on S3."""
    keys = [f"many/inv_x/k{i:05d}" for i in range(1100)]
    await bounded([store.put(k, b"", expires_at=LATER) for k in keys])
    await store.put("many/inv_xy/keep", b"k", expires_at=LATER)  # a sibling prefix
    await store.put("many/inv_w", b"k", expires_at=LATER)
    assert await store.delete_prefix("many/inv_x/") == 1100
    assert await store.list_keys("many/") == ["many/inv_w", "many/inv_xy/keep"]
    assert await store.delete_prefix("many/inv_x/") == 0


# -- the invocation layout on top ---------------------------------------------------------


async def until_true(read: Any, done: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done(await read()):
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.05)


def record(tenant: str, *, profile: str = "python3.12", status: Status = Status.queued,
           expires_at: datetime = LATER, created_ms: int | None = None) -> InvocationRecord:
    return InvocationRecord(
        id=new_invocation_id(created_ms), tenant=tenant, profile=profile, mode="async",
        status=status, created_at=datetime.now(UTC), expires_at=expires_at)


async def test_invocation_create_load_list(store: ObjectStore) -> None:
    inv = InvocationStore(store)
    base_ms = 1_700_000_000_000
    # ids sort newest first: r0 is the oldest, so it lists last.
    recs = [
        record("tenant-a", status=Status.succeeded, created_ms=base_ms),
        record("tenant-a", status=Status.failed, profile="node20", created_ms=base_ms + 1),
        record("tenant-a", status=Status.succeeded, created_ms=base_ms + 2),
        record("tenant-b", status=Status.succeeded, created_ms=base_ms + 3),
    ]
    for r in recs:
        await inv.create(r, b'{"profile": "python3.12"}', idempotency=("k" + r.id, "h"))
    loaded = await inv.load("tenant-a", recs[0].id, with_logs=False)
    assert loaded.model_dump() == recs[0].model_dump()
    assert await inv.load_request("tenant-a", recs[0].id) == b'{"profile": "python3.12"}'
    with pytest.raises(InvocationNotFound):
        await inv.load("tenant-b", recs[0].id)  # another tenant's id

    async def ids(status: Status | None = None, profile: str | None = None,
                  cursor: str | None = None, limit: int = 10) -> tuple[list[str], str | None]:
        items, next_cursor = await inv.list_page("tenant-a", status=status, profile=profile,
                                                 cursor=cursor, limit=limit)
        return [r.id for r in items], next_cursor

    assert (await ids())[0] == [recs[2].id, recs[1].id, recs[0].id]
    assert (await ids(status=Status.succeeded))[0] == [recs[2].id, recs[0].id]
    assert (await ids(profile="node20"))[0] == [recs[1].id]
    # The cursor resumes after the last id returned.
    first, cursor = await ids(limit=2)
    assert first == [recs[2].id, recs[1].id] and cursor == recs[1].id
    assert (await ids(cursor=cursor, limit=2))[0] == [recs[0].id]
    assert sorted(await inv.pending()) == sorted((r.tenant, r.id) for r in recs)


async def test_the_record_and_request_are_kept_in_the_pending_marker_and_old_layouts_read(
        store: ObjectStore) -> None:
    inv = InvocationStore(store)
    new, second, first = record("tenant-a"), record("tenant-a"), record("tenant-a")
    await inv.create(new, b'{"profile": "bash"}')
    # One object for the record as accepted and the request; nothing of its own yet.
    assert await store.list_keys(f"tenant-a/{new.id}/") == []
    assert await inv.load_request("tenant-a", new.id) == b'{"profile": "bash"}'
    assert (await inv.load("tenant-a", new.id)).model_dump() == new.model_dump()
    listed, _ = await inv.list_page("tenant-a", status=Status.queued, profile=None,
                                    cursor=None, limit=10)
    assert [r.id for r in listed] == [new.id]
    # What gateways of the earlier layouts left: the request alone in the marker, and
    # before that an empty marker with request.json; both beside a record.json.
    later = datetime.now(UTC) + timedelta(hours=1)
    await store.put(f"_pending/tenant-a/{second.id}", b'{"profile": "node20"}',
                    expires_at=later)
    await store.put(f"_pending/tenant-a/{first.id}", b"", expires_at=later)
    await store.put(f"tenant-a/{first.id}/request.json", b'{"profile": "python3.12"}',
                    expires_at=later)
    for old in (second, first):
        await inv.save(old)
        assert (await inv.load("tenant-a", old.id)).id == old.id
    assert await inv.load_request("tenant-a", second.id) == b'{"profile": "node20"}'
    assert await inv.load_request("tenant-a", first.id) == b'{"profile": "python3.12"}'
    listed, _ = await inv.list_page("tenant-a", status=None, profile=None, cursor=None,
                                    limit=10)
    assert sorted(r.id for r in listed) == sorted([new.id, second.id, first.id])
    new.status = Status.succeeded
    await inv.finish(new)
    await inv.close()  # the marker's delete may wait for others: done by now
    with pytest.raises(ObjectNotFound):
        await inv.load_request("tenant-a", new.id)
    assert (await inv.load("tenant-a", new.id)).status == Status.succeeded


async def test_a_page_merges_stored_and_only_accepted_invocations_in_order(
        store: ObjectStore) -> None:
    """Ids with a record.json and ids only in a pending marker page as one list."""
    inv = InvocationStore(store)
    base_ms = 1_700_000_000_000
    recs = [record("tenant-a", created_ms=base_ms + n) for n in range(7)]
    for n, r in enumerate(recs):
        await inv.create(r, b"{}")
        if n % 2:
            r.status = Status.running
            await inv.save(r)  # claimed a worker: a record.json of its own
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page, cursor = await inv.list_page("tenant-a", status=None, profile=None,
                                           cursor=cursor, limit=3)
        seen += [r.id for r in page]
        if cursor is None:
            break
    assert seen == [r.id for r in reversed(recs)]  # newest first, each once


async def test_finished_invocations_markers_go_together_and_a_lost_delete_is_redone(
        store: ObjectStore) -> None:
    inv = InvocationStore(store)
    recs = [record("tenant-a") for _ in range(3)]
    for r in recs:
        await inv.create(r, b"{}")
        r.status = Status.succeeded
        await inv.finish(r)
    assert len(await inv.pending()) == 3  # not yet: they wait to share one request
    await until_true(lambda: inv.pending(), lambda got: got == [], timeout_s=5)
    # A crash before the flush leaves a finished invocation's marker: finishing it again
    # (what recovery does with a finished record that still has one) drops it.
    crashed = InvocationStore(store, delete_delay_s=3600)  # it dies before its flush
    lost = record("tenant-a")
    await crashed.create(lost, b"{}")
    lost.status = Status.succeeded
    await crashed.finish(lost)
    survivor = InvocationStore(store)  # the next run of the gateway; the first one is gone
    assert [i for _, i in await survivor.pending()] == [lost.id]
    await survivor.finish(await survivor.load("tenant-a", lost.id))
    await survivor.close()
    assert await survivor.pending() == []
    await crashed.close()


async def test_expired_and_delete_expired_remove_exactly_the_expired(
        store: ObjectStore) -> None:
    inv = InvocationStore(store)
    now = datetime.now(UTC)
    old = record("tenant-a", expires_at=now - timedelta(seconds=30))
    older = record("tenant-b", expires_at=now - timedelta(seconds=60))
    young = record("tenant-a", expires_at=now + timedelta(hours=1))
    for r in (old, older, young):
        await inv.create(r, b"{}", idempotency=(inv.hash_idempotency_key(r.id), "body"))
        r.status = Status.succeeded
        await inv.finish(r)
    await store.put(inv.artifact_key("tenant-a", old.id, "out.txt"), b"o", expires_at=now)
    before = set(await store.list_keys(""))

    batches = [batch async for batch in inv.due(now)]
    # One batch a tenant (tenant by tenant, each tenant's oldest first), no more.
    assert [[(e.tenant, e.invocation_id) for e in batch] for batch in batches] == [
        [("tenant-a", old.id)], [("tenant-b", older.id)]]
    deleted = sum([await inv.delete_expired(batch) for batch in batches])
    # each: its record (its small output inside) and its idempotency entry; one artifact
    assert deleted >= 5

    after = set(await store.list_keys(""))
    gone = {f"_idempotency/{r.tenant}/{inv.hash_idempotency_key(r.id)}" for r in (old, older)}
    assert before - after == {k for k in before if old.id in k or older.id in k} | gone
    assert (await inv.load("tenant-a", young.id)).status == Status.succeeded
    assert await inv.idempotency("tenant-a", inv.hash_idempotency_key(young.id)) is not None
    assert await inv.idempotency("tenant-a", inv.hash_idempotency_key(old.id)) is None
    assert [batch async for batch in inv.due(now)] == []
    later = [e.invocation_id for batch in [b async for b in inv.due(now + timedelta(hours=2))]
             for e in batch]
    assert later == [young.id]  # the young one, in time


async def test_a_sweep_pages_through_what_is_due_and_stops_at_the_first_entry_not_due(
        store: ObjectStore) -> None:
    """Each tenant's usage entries are its expiry index, in expiry order: a sweep reads
    pages of what is due and stops at the first entry that is not; an invocation's
    entries (a, r, s) may straddle two pages and are all deleted."""
    from gateway.storage.usage import RESERVED, tenant_prefix

    inv = InvocationStore(store)
    now = datetime.now(UTC)
    due = [record("t", expires_at=now - timedelta(seconds=100 - i)) for i in range(7)]
    kept = [record("t", expires_at=now + timedelta(seconds=60 + i)) for i in range(3)]
    for r in due + kept:
        await inv.create(r, b"{}", stored_bytes=10)
        await inv.usage.record(r.tenant, r.id, RESERVED, r.expires_at, 20)
        r.status = Status.succeeded
        await inv.finish(r, stored_bytes=30)
    await inv.close()
    batches = [batch async for batch in inv.due(now, limit=4)]
    assert all(sum(len(e.markers) for e in batch) <= 4 for batch in batches)
    assert {e.invocation_id for batch in batches for e in batch} == {r.id for r in due}
    for batch in batches:
        await inv.delete_expired(batch)
    left = await store.list_keys(tenant_prefix("t"))
    assert len(left) == 3 * len(kept) and all(r.id not in k for r in due for k in left)
    page, _ = await inv.list_page("t", status=None, profile=None, cursor=None, limit=100)
    assert sorted(r.id for r in page) == sorted(r.id for r in kept)
    assert [batch async for batch in inv.due(now)] == []


async def test_the_earlier_layouts_expiry_markers_and_usage_entries_are_still_swept(
        store: ObjectStore) -> None:
    """Invocations stored before the usage entries became the expiry index: an
    ``_expiry/{minute}/`` marker listing the Idempotency-Key's entry, and usage entries
    named ``{id}~{kind}~{epoch}~{bytes}``. The janitor deletes them at their TTL, and
    their stored bytes count until then."""
    inv = InvocationStore(store)
    now = datetime.now(UTC)
    old = record("t", expires_at=now - timedelta(seconds=30))
    young = record("t", expires_at=now + timedelta(hours=1))
    old_epoch = int(old.expires_at.timestamp())
    for r in (old, young):
        epoch = int(r.expires_at.timestamp())
        idem = f"_idempotency/t/{'0' * 63}{r.id[-1]}"
        minute = r.expires_at.strftime("%Y%m%d%H%M")
        await store.put(f"t/{r.id}/record.json", r.model_dump_json().encode(),
                        expires_at=LATER)
        await store.put(idem, b"{}", expires_at=LATER)
        await store.put(f"_expiry/{minute}/{epoch:010d}~t~{r.id}",
                        f'{{"keys": ["{idem}"]}}'.encode(), expires_at=LATER)
        await store.put(f"_usage/t/{r.id}~a~{epoch}~100", b"", expires_at=LATER)
        await store.put(f"_usage/t/{r.id}~s~{epoch}~300", b"", expires_at=LATER)
    batches = [batch async for batch in inv.due(now)]
    assert [[(e.invocation_id, e.legacy) for e in b] for b in batches] == [[(old.id, True)]]
    assert await inv.delete_expired(batches[0]) == 2  # its record and its idempotency entry
    left = set(await store.list_keys(""))
    assert {k for k in left if old.id in k} == {f"_usage/t/{old.id}~a~{old_epoch}~100",
                                                f"_usage/t/{old.id}~s~{old_epoch}~300"}
    assert f"_idempotency/t/{'0' * 63}{old.id[-1]}" not in left
    assert sum(young.id in k for k in left) == 4 and len(left) == 7
    # The young one counts as its s; the old one's expired entries, and the young one's
    # superseded a, go with the listing that finds them.
    assert await inv.usage.total("t", now) == 300
    left = set(await store.list_keys(""))
    assert not any(old.id in k for k in left)
    assert {k for k in left if k.startswith("_usage/")} == {
        f"_usage/t/{young.id}~s~{int(young.expires_at.timestamp())}~300"}


async def test_local_deletes_keep_the_directories_every_call_would_make_again(
        tmp_path: Path) -> None:
    from gateway.storage.local import LocalStore

    store = LocalStore(tmp_path)
    await store.start()
    later = datetime.now(UTC) + timedelta(hours=1)
    keys = ["_pending/t/inv_a", "_expiry/202612020300/1~t~inv_a", "t/inv_a/record.json"]
    for key in keys:
        await store.put(key, b"x", expires_at=later)
    await store.delete_keys(keys)
    root = tmp_path / "objects"
    # Kept (bounded by the tenants): the index's tenant directory and the tenant's.
    assert (root / "_pending" / "t").is_dir() and (root / "t").is_dir()
    # Gone (one per minute, one per invocation): they would pile up.
    assert not (root / "_expiry" / "202612020300").exists()
    assert not (root / "t" / "inv_a").exists()
    assert await store.list_keys("") == []


async def test_a_delete_added_while_a_flush_is_under_way_is_not_left_waiting(
        tmp_path: Path) -> None:
    """Keys added while a flush awaits its request go with the next round, with no
    further add() to start one (idle afterwards, they would wait until shutdown)."""
    from gateway.storage.deferred import DeferredDeletes

    class HeldStore(LocalStore):
        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.deleted: list[list[str]] = []
            self.release = asyncio.Event()

        async def delete_keys(self, keys: list[str]) -> None:
            self.deleted.append(keys)
            await self.release.wait()

    store = HeldStore(tmp_path)
    deferred = DeferredDeletes(store, every_s=0.05)
    deferred.add("_pending/t/a")
    await until_true(lambda: asyncio.sleep(0, store.deleted), bool, timeout_s=5)
    deferred.add("_pending/t/b")  # the first flush still awaits its request
    store.release.set()
    await until_true(lambda: asyncio.sleep(0, store.deleted),
                     lambda got: got == [["_pending/t/a"], ["_pending/t/b"]], timeout_s=5)
    await deferred.close()
