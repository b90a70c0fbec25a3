"""What only the S3 store does, against a real SeaweedFS that checks every signature:
presigned URLs, multipart uploads, object metadata, the lifecycle rule, outages."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway.config.settings import S3Settings, Settings
from gateway.errors import StorageUnavailable
from gateway.storage import make_store
from gateway.storage.s3 import S3Store
from tests.servers.seaweedfs import SeaweedFS

pytestmark = pytest.mark.s3

BUCKET = "jobgate-test"
MiB = 1024 * 1024
LATER = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)


def unique_prefix() -> str:
    return f"s3-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(seaweedfs: SeaweedFS) -> AsyncIterator[S3Store]:
    s = S3Store(seaweedfs.store_settings(BUCKET, unique_prefix()), session=seaweedfs.session())
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def test_make_store_selects_s3() -> None:
    store = make_store(Settings(storage="s3", s3=S3Settings(bucket="any")))
    assert isinstance(store, S3Store) and store.name == "s3"


# -- the server really checks signatures --------------------------------------------------


def test_unsigned_and_wrong_secret_requests_are_refused(seaweedfs: SeaweedFS) -> None:
    assert seaweedfs.request("GET", "/").status_code == 200  # signed: ListBuckets
    assert seaweedfs.request("GET", "/", sign=False).status_code == 403
    assert seaweedfs.request("GET", "/", secret_key="wrong" * 8).status_code == 403
    path = f"/{BUCKET}/{unique_prefix()}/intruder"
    assert seaweedfs.request("PUT", path, body=b"x", sign=False).status_code == 403
    assert seaweedfs.request("PUT", path, body=b"x", secret_key="wrong" * 8).status_code == 403
    assert seaweedfs.request("GET", path).status_code == 404  # nothing was written


# -- layout and metadata ------------------------------------------------------------------


async def test_keys_live_under_the_prefix(store: S3Store) -> None:
    await store.put("t/inv_1/record.json", b"{}", expires_at=LATER)
    root = store.settings.s3.prefix
    raw = await store.client.list_objects_v2(Bucket=BUCKET, Prefix=root + "/")
    assert [o["Key"] for o in raw["Contents"]] == [f"{root}/t/inv_1/record.json"]
    assert await store.list_keys("") == ["t/inv_1/record.json"]


async def test_empty_prefix_uses_the_bucket_root(seaweedfs: SeaweedFS) -> None:
    s = S3Store(seaweedfs.store_settings("jobgate-root", ""), session=seaweedfs.session())
    await s.start()
    try:
        name = unique_prefix()
        await s.put(f"{name}/x", b"1", expires_at=LATER)
        raw = await s.client.head_object(Bucket="jobgate-root", Key=f"{name}/x")
        assert raw["ContentLength"] == 1
        assert await s.list_keys(f"{name}/") == [f"{name}/x"]
        assert name in await s.list_children("")
        assert await s.delete_prefix(f"{name}/") == 1
    finally:
        await s.close()


async def test_objects_carry_expiry_and_sha256(store: S3Store, tmp_path: Path) -> None:
    data = b"record body"
    await store.put("m/record.json", data, expires_at=LATER, content_type="application/json")
    src = tmp_path / "a.txt"
    src.write_bytes(b"artifact")
    await store.put_file("m/a.txt", src, expires_at=LATER, content_type="text/plain")
    for key, body, ctype in (("m/record.json", data, "application/json"),
                             ("m/a.txt", b"artifact", "text/plain")):
        raw = await store.client.head_object(Bucket=BUCKET, Key=f"{store.settings.s3.prefix}/{key}")
        meta = raw["Metadata"]
        assert datetime.fromisoformat(meta["expires-at"]) == LATER
        assert meta["sha256"] == hashlib.sha256(body).hexdigest()
        assert raw["ContentType"] == ctype
        assert (await store.head(key)).sha256 == meta["sha256"]


# -- multipart ----------------------------------------------------------------------------


async def test_large_file_goes_multipart_and_back_intact(
        seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    settings = seaweedfs.store_settings(BUCKET, unique_prefix(),
                                        s3={"multipart_threshold_bytes": 16 * MiB,
                                            "multipart_chunk_bytes": 8 * MiB})
    store = S3Store(settings, session=seaweedfs.session())
    await store.start()
    try:
        src = tmp_path / "big.bin"
        digest = hashlib.sha256()
        with src.open("wb") as f:
            for _ in range(50):
                chunk = os.urandom(MiB)
                digest.update(chunk)
                f.write(chunk)
        info = await store.put_file("big/big.bin", src, expires_at=LATER)
        assert (info.size, info.sha256) == (50 * MiB, digest.hexdigest())

        key = f"{settings.s3.prefix}/big/big.bin"
        raw = await store.client.head_object(Bucket=BUCKET, Key=key)
        # A multipart object's ETag is md5-of-part-md5s plus "-<parts>": 50 MiB / 8 MiB = 7.
        assert raw["ETag"].strip('"').endswith("-7"), raw["ETag"]
        assert raw["Metadata"]["sha256"] == digest.hexdigest()

        back = hashlib.sha256()
        async for chunk in store.stream("big/big.bin", chunk_size=MiB):
            back.update(chunk)
        assert back.hexdigest() == digest.hexdigest()
        uploads = await store.client.list_multipart_uploads(Bucket=BUCKET,
                                                            Prefix=store.settings.s3.prefix + "/")
        assert not uploads.get("Uploads")
    finally:
        await store.close()


async def test_failed_multipart_upload_is_aborted(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    settings = seaweedfs.store_settings(BUCKET, unique_prefix(),
                                        s3={"multipart_threshold_bytes": 5 * MiB,
                                            "multipart_chunk_bytes": 5 * MiB})
    store = S3Store(settings, session=seaweedfs.session())
    await store.start()
    try:
        src = tmp_path / "six.bin"
        src.write_bytes(os.urandom(6 * MiB))
        # A sha256 that does not match what is streamed: nothing may be completed.
        with pytest.raises(ValueError, match="sha256"):
            await store.put_file("bad/six.bin", src, expires_at=LATER, sha256="0" * 64)
        assert await store.list_keys("bad/") == []
        uploads = await store.client.list_multipart_uploads(Bucket=BUCKET,
                                                            Prefix=store.settings.s3.prefix + "/")
        assert not uploads.get("Uploads")
    finally:
        await store.close()


# -- presigned URLs -----------------------------------------------------------------------


def _tamper(url: str, param: str) -> str:
    value = parse_qs(urlsplit(url).query)[param][0]
    flipped = ("0" if value[-1] != "0" else "1")
    return url.replace(f"{param}={value}", f"{param}={value[:-1]}{flipped}")


async def test_presigned_get_works_and_tampering_is_refused(store: S3Store) -> None:
    await store.put("p/report.txt", b"hello", expires_at=LATER)
    await store.put("p/other.txt", b"secret", expires_at=LATER)
    url = await store.presign_get("p/report.txt", expires_s=60, filename="résumé report.txt")
    assert url is not None and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    async with httpx.AsyncClient() as http:  # no credentials at all
        r = await http.get(url)
        assert r.status_code == 200 and r.content == b"hello"
        assert r.headers["content-disposition"].startswith("attachment;")
        assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20report.txt" in r.headers[
            "content-disposition"]
        assert (await http.get(_tamper(url, "X-Amz-Signature"))).status_code == 403
        other = url.replace("/p/report.txt?", "/p/other.txt?")
        assert other != url and (await http.get(other)).status_code == 403
        longer = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
        assert longer != url and (await http.get(longer)).status_code == 403


async def test_presigned_url_expires(store: S3Store) -> None:
    await store.put("p/short", b"x", expires_at=LATER)
    short = await store.presign_get("p/short", expires_s=1)
    # Signed at the same moment, only the lifetime differs: a 403 after the wait can only
    # be the expiry. (X-Amz-Date has whole seconds, so a 1 s URL may be dead at once.)
    control = await store.presign_get("p/short", expires_s=60)
    assert short is not None and control is not None
    await asyncio.sleep(2.1)
    async with httpx.AsyncClient() as http:
        assert (await http.get(short)).status_code == 403
        assert (await http.get(control)).status_code == 200


async def test_presigned_lifetime_is_the_callers_within_sigv4(store: S3Store) -> None:
    def lifetime(url: str | None) -> int:
        assert url is not None
        return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])

    # A worker's report URL outlives its run: longer than s3.presign_ttl_s is kept.
    assert lifetime(await store.presign_put("x", expires_s=3600)) == 3600
    assert lifetime(await store.presign_get("x", expires_s=30 * 86400)) == 7 * 86400


async def test_presigned_put_works_without_credentials(store: S3Store) -> None:
    url = await store.presign_put("w/inv_1/stdout", expires_s=60, content_type="text/plain")
    assert url is not None
    async with httpx.AsyncClient() as http:
        r = await http.put(url, content=b"worker output", headers={"Content-Type": "text/plain"})
        assert r.status_code == 200, r.text
        # The URL is for that key and that content type only.
        other = url.replace("/w/inv_1/stdout?", "/w/inv_1/stderr?")
        r = await http.put(other, content=b"x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 403
        r = await http.put(url, content=b"x", headers={"Content-Type": "text/html"})
        assert r.status_code == 403
    assert await store.get("w/inv_1/stdout") == b"worker output"
    assert await store.list_keys("w/") == ["w/inv_1/stdout"]


# -- deletes ------------------------------------------------------------------------------


async def test_delete_keys_sends_batches_of_at_most_1000(store: S3Store) -> None:
    sizes: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params["Delete"]["Objects"]))

    store.client.meta.events.register("before-parameter-build.s3.DeleteObjects", record)
    await store.put("b/kept", b"1", expires_at=LATER)
    await store.put("b/gone", b"1", expires_at=LATER)
    # Missing keys are fine, so a big batch costs no uploads.
    await store.delete_keys(["b/gone"] + [f"b/missing/{i}" for i in range(2000)])
    assert sorted(sizes) == [1, 1000, 1000]
    assert await store.list_keys("b/") == ["b/kept"]


# -- lifecycle ----------------------------------------------------------------------------


async def test_lifecycle_rule_installed_and_other_rules_kept(seaweedfs: SeaweedFS) -> None:
    """SeaweedFS 4.x accepts lifecycle rules; we merge ours into what the bucket has."""
    bucket = "jobgate-lifecycle"
    settings = seaweedfs.store_settings(bucket, "jg", max_ttl_s=3 * 86400 + 1)
    admin = S3Store(settings, session=seaweedfs.session())
    await admin.start()
    try:
        foreign = {"ID": "someone-elses", "Status": "Enabled",
                   "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
        await admin.client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [foreign]})
        await admin.close()
        await admin.start()
        assert admin.lifecycle == "installed"
        rules = (await admin.client.get_bucket_lifecycle_configuration(Bucket=bucket))["Rules"]
        ours = next(r for r in rules if r["ID"] == "jobgate-expiry-jg")
        assert ours["Filter"] == {"Prefix": "jg/"} and ours["Status"] == "Enabled"
        assert ours["Expiration"]["Days"] == math.ceil((3 * 86400 + 1) / 86400) == 4
        assert any(r["ID"] == "someone-elses" for r in rules)
        await admin.close()
        await admin.start()  # a second replica, or a restart: nothing to change
        assert admin.lifecycle == "unchanged"
    finally:
        await admin.close()


async def test_refused_lifecycle_rule_is_a_warning(
        seaweedfs: SeaweedFS, caplog: pytest.LogCaptureFixture) -> None:
    """A role without bucket-configuration rights (SeaweedFS: no Write action) still
    serves: start() logs that the janitor alone enforces TTLs, and goes on."""
    prefix = unique_prefix()
    admin = S3Store(seaweedfs.store_settings(BUCKET, prefix), session=seaweedfs.session())
    await admin.start()
    await admin.put("r/x", b"readable", expires_at=LATER)
    await admin.close()
    # A different max TTL: the rule the admin installed must change, and cannot.
    settings = seaweedfs.store_settings(BUCKET, prefix, s3={"create_bucket": False},
                                        max_ttl_s=2 * 86400)
    reader = S3Store(settings, session=seaweedfs.session(reader=True))
    with caplog.at_level(logging.WARNING, logger="jobgate.storage.s3"):
        await reader.start()
    try:
        assert reader.lifecycle == "refused"
        assert any("janitor alone enforces TTLs" in r.getMessage() and "AccessDenied"
                   in r.getMessage() for r in caplog.records)
        await reader.check()
        assert await reader.get("r/x") == b"readable"
    finally:
        await reader.close()


# -- outages ------------------------------------------------------------------------------


async def test_check_fails_fast_when_the_server_is_down_and_recovers(
        store: S3Store, seaweedfs: SeaweedFS) -> None:
    await store.put("o/x", b"1", expires_at=LATER)
    await store.check()
    await asyncio.to_thread(seaweedfs.stop)
    try:
        began = time.monotonic()
        with pytest.raises(StorageUnavailable) as err:
            await store.check()
        assert time.monotonic() - began < 5  # one quick retry, not botocore's default
        assert err.value.retry_after and err.value.retry_after > 0

        async def first_chunk() -> bytes:
            return await anext(store.stream("o/x"))

        # Every method, at once (each spends its one retry's backoff).
        results = await asyncio.gather(
            store.get("o/x"), store.head("o/x"), store.list_keys("o/"),
            store.list_children("o/"), store.put("o/y", b"1", expires_at=LATER),
            store.delete_keys(["o/x"]), store.delete_prefix("o/"), first_chunk(),
            return_exceptions=True)
        assert all(isinstance(r, StorageUnavailable) for r in results), results
    finally:
        await asyncio.to_thread(seaweedfs.start)
    await store.check()  # the same client, reconnected
    assert await store.get("o/x") == b"1"


def test_every_request_to_s3_is_counted_by_operation(seaweedfs: SeaweedFS,
                                                     tmp_path: Path) -> None:
    from bench.footprint import storage_requests
    from tests.support import invoke, running_gateway

    env = seaweedfs.gateway_env(bucket=f"counted-{uuid.uuid4().hex[:6]}", prefix="jg")
    with running_gateway(tmp_path, **env) as gw, gw.client() as c:
        invoke(c, profile="bash", code="echo warm")  # the bucket and lifecycle set-up done
        before = storage_requests(c.get("/metrics").text)
        calls = 5
        for i in range(calls):
            body = invoke(c, profile="bash", code=f"echo {i}").json()
            assert body["status"] == "succeeded", body
        after = storage_requests(c.get("/metrics").text)
    per_call = {op: (after[op] - before.get(op, 0)) / calls for op in after
                if after[op] != before.get(op, 0)}
    print("S3 requests per invocation (bash echo, sync, no artifacts):", per_call,
          "total", sum(per_call.values()))
    # Each invocation stores its request, its record and its outputs: PUTs, counted.
    assert per_call.get("PutObject", 0) >= 3, per_call
    # 4 writes a call: the pending marker (the record as accepted and the request), the
    # usage entry (the stored-bytes charge and the expiry marker in one), the record as
    # running and as ended.
    # The finished calls' pending markers are deleted together (at most one DeleteObjects
    # a call: more share one when calls end within the flush interval), and a small
    # call's usage is settled without a listing: a listing here is the quota's background
    # refresh (one an interval, not one a call). Nothing is read back.
    assert per_call["PutObject"] <= 4, per_call
    assert per_call.get("DeleteObjects", 0) <= 1, per_call
    assert set(per_call) <= {"PutObject", "DeleteObjects", "ListObjectsV2"}, per_call
    assert "HeadBucket" not in per_call  # readiness is not asked here
