"""One tenant floods a gateway with async calls, fast: ``POST /v1/invocations/batch`` of
up to 50 items, the batches sent concurrently. Shared by the fair-share tests and
``python -m bench.fairness``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

BATCH = 50


def sleeper(seconds: float) -> str:
    """Python code that sleeps (a worker's run of known length)."""
    return f"import time; time.sleep({seconds})"


async def flood(url: str, key: str, *, calls: int, profile: str, code: str,
                at_once: int = 20, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Submit ``calls`` async invocations as batches, ``at_once`` batches in flight at a
    time; every item's answer (202 with its invocation, or its error), in order."""
    sizes = [min(BATCH, calls - start) for start in range(0, calls, BATCH)]
    turns = asyncio.Semaphore(at_once)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def send(size: int) -> list[dict[str, Any]]:
            async with turns:
                r = await client.post("/v1/invocations/batch", json={"invocations": [
                    {"profile": profile, "code": code} for _ in range(size)]})
                r.raise_for_status()
                items: list[dict[str, Any]] = r.json()["items"]
                return items

        answers = await asyncio.gather(*(send(size) for size in sizes))
    return [item for items in answers for item in items]


def timed_call(client: httpx.Client, profile: str, code: str) -> tuple[float, dict[str, Any]]:
    """One sync call: its latency (seconds, as the client sees it) and its answer."""
    started = time.perf_counter()
    r = client.post("/v1/invocations", json={"profile": profile, "code": code})
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return elapsed, body
