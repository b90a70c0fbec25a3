"""The stored-bytes quota per tenant (max_stored_bytes), over real HTTP on local storage
and on S3 (SeaweedFS): a tenant's stored bytes stop at its quota with the error (at
admission, 413 StorageQuotaExceeded; for outputs that would not fit, reason
StorageQuota and nothing of them stored), another tenant is unaffected, the bytes come
back at the TTL; two replicas sharing one bucket hold one quota; a replica killed
mid-way leaves the count right. What is stored is measured in the store itself."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import start_configured
from tests.servers.seaweedfs import SeaweedFS
from tests.support import KEY_A, KEY_B, GatewayProcess, invoke, wait_until

QUOTA = 64 * 1024
ARTIFACT = 16_000
REFRESH_S = 0.5
LIMITS = json.dumps({"tenants": {"tenant-a": {"max_stored_bytes": QUOTA}}})
ENV = {"JOBGATE_TENANT_LIMITS": LIMITS, "JOBGATE_USAGE_REFRESH_S": str(REFRESH_S),
       "JOBGATE_JANITOR_INTERVAL_S": "1"}


def writes_artifact(size: int = ARTIFACT) -> str:
    return f"open('artifacts/blob.bin', 'wb').write(b'x' * {size})\n"


class Deployment:
    """Gateways of one configuration, and what their store holds, read from the store."""

    def __init__(self, config: str, tmp: Path, seaweedfs: SeaweedFS | None,
                 request: pytest.FixtureRequest | None = None):
        self.config, self.tmp, self.seaweedfs = config, tmp, seaweedfs
        self.request = request  # for a Kubernetes gateway: the cluster's fixtures
        self.bucket = f"quota-{uuid.uuid4().hex[:10]}"
        self.gateways: list[GatewayProcess] = []

    def env(self) -> dict[str, str]:
        env = dict(ENV)
        if self.seaweedfs is not None:
            env.update(self.seaweedfs.gateway_env(bucket=self.bucket, prefix="jobgate"))
        return env

    def start(self, name: str = "r1") -> GatewayProcess:
        if self.config == "kubernetes":
            assert self.request is not None
            work = self.tmp / name
            work.mkdir()
            gw = start_configured(self.request, "kubernetes", work, dict(ENV),
                                  bucket=self.bucket)
        else:
            gw = GatewayProcess(self.tmp / name, env=self.env()).start(timeout_s=90)
        self.gateways.append(gw)
        return gw

    def stored_bytes(self, tenant: str) -> int:
        """Every byte under the tenant's prefix, as the store itself lists it."""
        if self.seaweedfs is None:
            root = self.gateways[0].data_dir / "objects" / tenant
            return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        sw = self.seaweedfs
        s3 = boto3.client("s3", endpoint_url=sw.endpoint, region_name=sw.region,
                          aws_access_key_id=sw.access_key, aws_secret_access_key=sw.secret_key)
        total = 0
        for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"jobgate/{tenant}/"):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def stop(self) -> None:
        for gw in self.gateways:
            gw.stop()


@pytest.fixture(params=["local", "s3"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    seaweedfs = request.getfixturevalue("seaweedfs") if request.param == "s3" else None
    d = Deployment(request.param, tmp_path, seaweedfs)
    yield d
    d.stop()


@pytest.fixture(params=["local", "s3",
                        pytest.param("kubernetes", marks=pytest.mark.cluster)])
def any_deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """Local, S3, or the Kubernetes executor (workers upload to S3 themselves)."""
    seaweedfs = request.getfixturevalue("seaweedfs") if request.param != "local" else None
    d = Deployment(request.param, tmp_path, seaweedfs, request)
    yield d
    d.stop()


@pytest.fixture
def s3_deployment(seaweedfs: SeaweedFS, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment("s3", tmp_path, seaweedfs)
    yield d
    d.stop()


def gauge(gw: GatewayProcess, tenant: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    found = re.search(rf'^jobgate_tenant_stored_bytes{{tenant="{tenant}"}} (\S+)$', text,
                      re.MULTILINE)
    assert found, "no stored-bytes gauge for " + tenant
    return float(found.group(1))


def fill(gw: GatewayProcess, key: str = KEY_A, ttl_s: int = 600, max_calls: int = 40
         ) -> list[httpx.Response]:
    """Invocations that each keep one artifact, until admission refuses one."""
    answers = []
    with gw.client(key) as c:
        for _ in range(max_calls):
            answers.append(invoke(c, profile="python3.11", code=writes_artifact(),
                                  ttl_s=ttl_s))
            if answers[-1].status_code != 200:
                break
    return answers


def assert_quota_error(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 413, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == "StorageQuotaExceeded", error
    assert error["details"]["limit_bytes"] == QUOTA
    assert error["details"]["used_bytes"] + error["details"]["requested_bytes"] > QUOTA
    return error


def held_back(answer: httpx.Response) -> bool:
    """A's invocation refused by the quota: at admission (413), or admitted with room
    for its request but not for its artifact (failed, StorageQuota, nothing kept)."""
    if answer.status_code != 200:
        assert_quota_error(answer)
        return True
    body = answer.json()
    if body["status"] == "succeeded":
        return False
    assert (body["status"], body["reason"], body["artifacts"]) == \
        ("failed", "StorageQuota", []), body
    return True


def test_stored_bytes_stop_at_the_quota_and_come_back_at_the_ttl(
        any_deployment: Deployment) -> None:
    deployment = any_deployment
    gw = deployment.start()
    ttl_s = 12
    answers = fill(gw, ttl_s=ttl_s)
    bodies = [a.json() for a in answers[:-1]]
    assert_quota_error(answers[-1])
    kept = [b for b in bodies if b["status"] == "succeeded"]
    refused = [b for b in bodies if b["status"] != "succeeded"]
    # Three artifacts of 16,000 bytes fit in 64 KiB with their records; the fourth not.
    assert len(kept) == 3 and all(b["artifacts"][0]["size"] == ARTIFACT for b in kept)
    assert refused and all((b["status"], b["reason"]) == ("failed", "StorageQuota")
                           for b in refused), refused
    assert all(b["artifacts"] == [] for b in refused)
    assert "not fit" in refused[0]["message"]
    # Nothing half-stored: the store holds no byte past the quota (one replica: exact).
    stored = deployment.stored_bytes("tenant-a")
    assert 3 * ARTIFACT < stored <= QUOTA
    # The gauge never counts less than the store holds.
    assert wait_until(lambda: gauge(gw, "tenant-a") >= stored, 10, message="gauge")

    # Tenant B is not held back by A's quota.
    with gw.client(KEY_B) as b:
        other = invoke(b, profile="python3.11", code=writes_artifact()).json()
    assert other["status"] == "succeeded" and other["artifacts"][0]["size"] == ARTIFACT

    # At the TTL the bytes come back (the janitor deletes them), and A stores again.
    wait_until(lambda: deployment.stored_bytes("tenant-a") == 0, ttl_s + 30, 0.5,
               message="A's expired invocations deleted")
    with gw.client(KEY_A) as c:
        again = wait_until(lambda: (r := invoke(c, profile="python3.11",
                                                code=writes_artifact())).status_code == 200
                           and r, 10, 0.5, message="A admitted again").json()
    assert again["status"] == "succeeded" and again["artifacts"][0]["size"] == ARTIFACT
    assert gauge(gw, "tenant-a") < QUOTA / 2


def test_two_replicas_on_one_bucket_hold_one_quota(s3_deployment: Deployment) -> None:
    r1, r2 = s3_deployment.start("r1"), s3_deployment.start("r2")
    with r2.client(KEY_A) as c:  # r2 knows tenant A (listed it) before r1 fills it
        assert invoke(c, profile="python3.11", code="print(1)", ttl_s=15).status_code == 200
    answers = fill(r1, ttl_s=15)
    assert_quota_error(answers[-1])
    # What r1 stored counts against what r2 allows, once r2 listed again (within two
    # refresh intervals, the stated exactness).
    time.sleep(2 * REFRESH_S + 0.5)
    with r2.client(KEY_A) as c:
        assert held_back(invoke(c, profile="python3.11", code=writes_artifact(), ttl_s=15))
    with r2.client(KEY_B) as b:
        assert invoke(b, profile="python3.11", code=writes_artifact()).json()["status"] \
            == "succeeded"
    assert s3_deployment.stored_bytes("tenant-a") <= QUOTA

    # After the TTL, A fills its quota again through both replicas in turn, each call
    # further apart than two refresh intervals: then the quota is exact across replicas.
    wait_until(lambda: s3_deployment.stored_bytes("tenant-a") == 0, 60, 0.5,
               message="A's expired invocations deleted")
    time.sleep(2 * REFRESH_S + 0.5)
    refused = set()
    with r1.client(KEY_A) as c1, r2.client(KEY_A) as c2:
        for turn in range(30):
            name, client = ("r1", c1) if turn % 2 == 0 else ("r2", c2)
            answer = invoke(client, profile="python3.11", code=writes_artifact(), ttl_s=600)
            if held_back(answer):
                refused.add(name)
                if refused == {"r1", "r2"}:
                    break
            time.sleep(2 * REFRESH_S + 0.2)
    assert refused == {"r1", "r2"}
    assert 3 * ARTIFACT < s3_deployment.stored_bytes("tenant-a") <= QUOTA


def test_a_replica_killed_mid_way_leaves_the_count_right(deployment: Deployment) -> None:
    gw = deployment.start()
    code = "import time\ntime.sleep(1.5)\n" + writes_artifact(8000)
    with gw.client(KEY_A) as c:
        ids = [invoke(c, profile="python3.11", code=code, mode="async").json()["id"]
               for _ in range(4)]
        time.sleep(0.8)
    gw.kill()  # kill -9: no shutdown, no flush of anything
    gw.start(timeout_s=90)  # the same replica (its data dir), as after a crash

    def all_ended() -> bool:
        with gw.client(KEY_A) as c:
            return all(c.get(f"/v1/invocations/{i}").json()["status"] not in
                       ("queued", "running") for i in ids)

    wait_until(all_ended, 90, 0.5, message="the invocations recovered and ended")
    stored = deployment.stored_bytes("tenant-a")
    assert stored > 0
    # The count is the ledger in the store: never less than what is stored, and more only
    # by the allowance of records charged at admission and not yet measured (none here).
    wait_until(lambda: stored <= gauge(gw, "tenant-a") <= stored + 4 * 4096, 15, 0.5,
               message=f"the gauge matches the {stored} bytes stored")


# -- the ledger's arithmetic, without a gateway (for diagnosis) ----------------------------


def test_an_invocation_counts_as_its_final_entry_else_admission_plus_largest_reservation(
        ) -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.storage.usage import entry_key, tally

    now = datetime.now(UTC)
    later, past = now + timedelta(hours=1), now - timedelta(seconds=1)
    keys = [
        entry_key("t", "inv_1", "a", later, 100, "ab" * 32),  # finished: its s entry alone
        entry_key("t", "inv_1", "r", later, 5000),
        entry_key("t", "inv_1", "s", later, 3000),
        entry_key("t", "inv_2", "a", later, 200),  # running: a + the largest r
        entry_key("t", "inv_2", "r", later, 700),
        entry_key("t", "inv_2", "r", later, 900),
        entry_key("t", "inv_3", "s", past, 10**9),  # expired: counts nothing
        "_usage/t/not-an-entry",
        "_usage/t/0000000001~inv_4~x~5",
        entry_key("t", "inv_10", "a", later, 50),
        # The earlier layout ({id}~{kind}~{epoch}~{bytes}), still counted:
        f"_usage/t/inv_5~a~{int(later.timestamp())}~70",
        f"_usage/t/inv_5~s~{int(later.timestamp())}~40",
        f"_usage/t/inv_6~s~{int(past.timestamp())}~10000",  # expired
    ]
    found = tally(sorted(keys), now.timestamp())  # in listing order, as stores list
    assert found.total == 3000 + 200 + 900 + 50 + 40
    assert found.invocations == 4
    # Superseded: inv_1's r (its a stays: the janitor's marker); the earlier layout's a
    # beside its s, and its expired entry. An expired entry of this layout is the
    # janitor's to delete, after its invocation.
    assert sorted(found.garbage) == sorted([keys[1], keys[10], keys[12]])


async def test_a_tenant_is_listed_for_its_limit_only_and_less_often_when_listing_costs(
        tmp_path: Path) -> None:
    """A tenant with no stored-bytes limit (``max_stored_bytes: null``; the default is
    10 GiB) is not listed on its calls (its total is listed when asked), and a tenant
    whose listing is slow is listed less often than every refresh: at most a tenth of the
    time goes to listing."""
    import asyncio
    from collections import Counter
    from datetime import UTC, datetime, timedelta

    from prometheus_client import CollectorRegistry, Gauge

    from gateway.storage.local import LocalStore
    from gateway.storage.usage import ADMITTED, UsageLedger
    from gateway.tenants.directory import TenantDirectory
    from gateway.tenants.limits import LimitsTable, TenantLimits
    from gateway.tenants.quota import StorageQuota

    class CountingLedger(UsageLedger):
        listed: Counter[str] = Counter()
        cost_s = 0.0

        async def total(self, tenant: str, now: datetime) -> int:
            self.listed[tenant] += 1
            await asyncio.sleep(self.cost_s)
            return await super().total(tenant, now)

    store = LocalStore(tmp_path)
    await store.start()
    ledger = CountingLedger(store)
    limits = LimitsTable(tenants={"tenant-a": TenantLimits(max_stored_bytes=10**9),
                                  "tenant-b": TenantLimits(max_stored_bytes=None)})
    gauge = Gauge("stored", "stored", ["tenant"], registry=CollectorRegistry())
    quota = StorageQuota(ledger, limits, gauge, refresh_s=0.01,
                         tenants=TenantDirectory(["tenant-a", "tenant-b"]))
    for _ in range(10):
        await quota.reserve("tenant-a", 10)
        await quota.reserve("tenant-b", 10)
        await asyncio.sleep(0.03)  # each time past the refresh
    assert ledger.listed["tenant-b"] == 0
    assert ledger.listed["tenant-a"] >= 3  # its limit is checked against fresh listings
    await ledger.record("tenant-b", "inv_1", ADMITTED, datetime.now(UTC) + timedelta(hours=1),
                        500)
    assert await quota.used("tenant-b") == 500  # asked: listed then

    ledger.cost_s = 0.05  # a listing now takes 50 ms: listed at most every 0.5 s
    await asyncio.sleep(0.03)
    await quota.reserve("tenant-a", 10)
    ledger.listed.clear()
    for _ in range(10):
        await quota.reserve("tenant-a", 10)
        await asyncio.sleep(0.03)
    assert ledger.listed["tenant-a"] <= 1, ledger.listed
