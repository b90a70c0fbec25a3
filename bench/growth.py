"""How the list's cost grows with the invocations stored (issue 13, "How it grows").

    python -m bench.growth 1000 10000

seeds N finished invocations on local storage (through the store: no workers), starts a
gateway on them and times ``GET /v1/invocations`` at 20 a page: the first page, and a page
about 90 % deep (its cursor reached 200 at a time), medians of 15 requests each. Then the
janitor: N invocations seeded already expired, a gateway started with a 0.5 s sweep, and
the time until the last of them is gone (invocations deleted per second)."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
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
from tests.support import KEY_A, free_port, key_entry

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


def _gateway(data: Path, port: int, **settings: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOBGATE_PORT": str(port), "JOBGATE_DATA_DIR": str(data),
           "JOBGATE_LOG_LEVEL": "warning", "JOBGATE_API_KEYS": key_entry("tenant-a", KEY_A),
           **settings}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli.main", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(count: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="jobgate-growth-"))
    try:
        started = time.monotonic()
        asyncio.run(seed(data, count))
        seeded_s = time.monotonic() - started
        port = free_port()
        gateway = _gateway(data, port)
        try:
            return {"invocations": count, "seeded_s": round(seeded_s, 1),
                    **_pages(f"http://127.0.0.1:{port}", count)}
        finally:
            gateway.terminate()
            gateway.wait(30)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def measure_janitor(count: int, timeout_s: float = 600) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="jobgate-growth-"))
    tenant = data / "objects" / "tenant-a"
    try:
        asyncio.run(seed(data, count, expired=True))
        started = time.monotonic()
        gateway = _gateway(data, free_port(), JOBGATE_JANITOR_INTERVAL_S="0.5")
        try:
            while time.monotonic() - started < timeout_s:
                if not any(tenant.iterdir()):
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            left = sum(1 for _ in tenant.iterdir())
        finally:
            gateway.terminate()
            gateway.wait(30)
        return {"expired": count, "left": left, "seconds": round(elapsed, 1),
                "invocations_deleted_per_s": round((count - left) / elapsed, 1)}
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _pages(url: str, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    with httpx.Client(base_url=url, timeout=120,
                      headers={"Authorization": f"Bearer {KEY_A}"}) as client:
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
