"""How the list's cost grows with the invocations stored (issue 13, "How it grows").

    python -m bench.growth 1000 10000

seeds N finished invocations on local storage (through the store: no workers), starts a
gateway on them and times ``GET /v1/invocations`` at 20 a page: the first page, and a page
about 90 % deep (its cursor reached 200 at a time), medians of 15 requests each. Then the
janitor: N invocations seeded already expired, a gateway started with a 0.5 s sweep, and
the time until the last of them is gone (invocations deleted per second)."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from gateway.ids import new_invocation_id
from gateway.models import InvocationRecord, Status
from gateway.storage.local import LocalStore
from gateway.storage.records import InvocationStore
from tests.support import GatewayProcess

BASE_MS = 1_700_000_000_000


async def seed(data: Path, count: int, *, expired: bool = False) -> None:
    store = LocalStore(data)
    await store.start()
    records = InvocationStore(store)
    later = datetime.now(UTC) + (timedelta(minutes=-5) if expired else timedelta(days=1))
    limit = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with limit:
            record = InvocationRecord(
                id=new_invocation_id(BASE_MS + i), tenant="tenant-a", profile="python3.11",
                mode="async", status=Status.queued, created_at=datetime.now(UTC),
                expires_at=later)
            await records.create(record, b"{}")
            record.status, record.stdout = Status.succeeded, "1\n"
            await records.finish(record)

    await asyncio.gather(*(one(i) for i in range(count)))


def _median_ms(client: httpx.Client, params: dict[str, Any]) -> float:
    samples = []
    for _ in range(15):
        started = time.perf_counter()
        answer = client.get("/v1/invocations", params=params)
        samples.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return statistics.median(samples)


def measure(count: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="jobgate-growth-"))
    try:
        started = time.monotonic()
        asyncio.run(seed(work / "data", count))
        seeded_s = time.monotonic() - started
        gateway = GatewayProcess(work / "data", env={"JOBGATE_LOG_LEVEL": "warning"})
        gateway.start(timeout_s=120)
        try:
            with gateway.client(timeout=120) as client:
                return {"invocations": count, "seeded_s": round(seeded_s, 1),
                        **_pages(client, count)}
        finally:
            gateway.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_janitor(count: int, timeout_s: float = 600) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="jobgate-growth-"))
    tenant = work / "data" / "objects" / "tenant-a"
    try:
        asyncio.run(seed(work / "data", count, expired=True))
        started = time.monotonic()
        gateway = GatewayProcess(work / "data", env={"JOBGATE_LOG_LEVEL": "warning",
                                                     "JOBGATE_JANITOR_INTERVAL_S": "0.5"})
        gateway.start(timeout_s=120)
        try:
            while time.monotonic() - started < timeout_s:
                if not any(tenant.iterdir()):
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            left = sum(1 for _ in tenant.iterdir())
        finally:
            gateway.stop()
        return {"expired": count, "left": left, "seconds": round(elapsed, 1),
                "invocations_deleted_per_s": round((count - left) / elapsed, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pages(client: httpx.Client, count: int) -> dict[str, Any]:
    first = _median_ms(client, {"limit": 20})
    cursor, walked = None, 0
    while walked + 200 <= count * 9 // 10:
        page = client.get("/v1/invocations", params={
            "limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        cursor, walked = page.get("next_cursor"), walked + 200
        if not cursor:
            break
    deep = _median_ms(client, {"limit": 20, **({"cursor": cursor} if cursor else {})})
    return {"first_page_p50_ms": round(first, 1), "deep_page_p50_ms": round(deep, 1),
            "deep_after": walked}


if __name__ == "__main__":
    for n in [int(arg) for arg in sys.argv[1:]] or [1000, 10000]:
        print(measure(n), flush=True)
        print(measure_janitor(n), flush=True)
