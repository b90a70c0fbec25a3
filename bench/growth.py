"""How cost grows with the invocations stored (issue 13, "How it grows").

    python -m bench.growth 1000 10000 100000      # local storage
    python -m bench.growth --s3 1000 10000        # S3 storage (starts SeaweedFS)
    python -m bench.growth --calls 100000         # the gateway's memory over 10^5 calls

For each N: N finished invocations seeded through the store (the final record, as a run
leaves it; no workers, so 10^5 take a minute, not an hour), a gateway started on them,
and ``GET /v1/invocations`` timed at 20 a page: the first page, and a page about 90 %
deep (its cursor reached 200 at a time), medians of 15 requests each. Then the janitor:
N invocations created and finished already expired (every object a real one leaves), a
gateway started with a 0.5 s sweep, and the time until the last of them is gone
(invocations deleted per second). ``make bench`` runs the same with its matrix's sizes on
the storage of its run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from gateway.config.settings import Settings
from gateway.ids import new_invocation_id
from gateway.models import InvocationRecord, Status
from gateway.storage import make_store
from gateway.storage.base import ObjectStore
from gateway.storage.local import LocalStore
from gateway.storage.records import InvocationStore
from tests.support import KEY_A, GatewayProcess

BASE_MS = 1_700_000_000_000
TENANT = "tenant-a"
QUIET = {"JOBGATE_LOG_LEVEL": "warning"}


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """The store is built as the gateway builds it: from its JOBGATE_*/AWS_* variables."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _with_store(data: Path, env: Mapping[str, str], work: Any) -> Any:
    with _environment({"JOBGATE_DATA_DIR": str(data), **env}):
        store = make_store(Settings())
        await store.start()
        try:
            return await work(store)
        finally:
            await store.close()


def _record(i: int, expires_at: datetime) -> InvocationRecord:
    return InvocationRecord(
        id=new_invocation_id(BASE_MS + i), tenant=TENANT, profile="python3.11",
        mode="async", status=Status.queued, created_at=datetime.now(UTC),
        expires_at=expires_at)


async def _seed(store: ObjectStore, count: int, *, expired: bool) -> None:
    """Finished invocations. Expired ones are created first (request, pending marker,
    expiry marker: what the janitor deletes); the list's need only their final record."""
    records = InvocationStore(store)
    later = datetime.now(UTC) + (timedelta(minutes=-5) if expired else timedelta(days=1))
    limit = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with limit:
            record = _record(i, later)
            if expired:
                await records.create(record, b"{}")
            record.status, record.stdout, record.stderr = Status.succeeded, "1\n", ""
            await records.finish(record)

    await asyncio.gather(*(one(i) for i in range(count)))
    await records.close()  # the pending markers' deletes, done


async def _left(store: ObjectStore) -> int:
    """Invocations whose record is still there (keys, not 'directories': SeaweedFS lists
    an emptied prefix for a while after its last object is gone)."""
    count, after = 0, None
    while True:
        keys = await store.list_keys(f"{TENANT}/", start_after=after, limit=1000)
        if not keys:
            return count
        count += sum(key.endswith("/record.json") for key in keys)
        after = keys[-1]


def _median_ms(client: httpx.Client, params: dict[str, Any],
               before_each: Callable[[], None] | None = None) -> float:
    samples = []
    for _ in range(15):
        if before_each is not None:
            before_each()
        started = time.perf_counter()
        answer = client.get("/v1/invocations", params=params)
        samples.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return statistics.median(samples)


def _pages(client: httpx.Client, count: int, tenant_dir: Path | None) -> dict[str, Any]:
    first = _median_ms(client, {"limit": 20})
    written: dict[str, Any] = {}
    if tenant_dir is not None:
        # Local storage keeps a listing while the tenant's directory is unchanged: under
        # writes (one entry added and removed before each request) every page lists it.
        def change() -> None:
            entry = tenant_dir / "inv_zzzzzzzzzzzzzzzzzzzz"
            entry.mkdir()
            entry.rmdir()

        written = {"first_page_written_p50_ms": round(
            _median_ms(client, {"limit": 20}, change), 1)}
    cursor, walked = None, 0
    while walked + 200 <= count * 9 // 10:
        page = client.get("/v1/invocations", params={
            "limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        cursor, walked = page.get("next_cursor"), walked + 200
        if not cursor:
            break
    deep = _median_ms(client, {"limit": 20, **({"cursor": cursor} if cursor else {})})
    return {"first_page_p50_ms": round(first, 1), **written,
            "deep_page_p50_ms": round(deep, 1), "deep_after": walked}


def measure(count: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The list's first and a deep page over ``count`` stored invocations; ``env`` the
    storage's variables (none: local storage in a temporary directory)."""
    env = dict(env or {})
    work = Path(tempfile.mkdtemp(prefix="jobgate-growth-"))
    try:
        started = time.monotonic()
        asyncio.run(_with_store(work / "data", env,
                                lambda store: _seed(store, count, expired=False)))
        seeded_s = time.monotonic() - started
        gateway = GatewayProcess(work / "data", env={**QUIET, **env})
        gateway.start(timeout_s=120)
        try:
            with gateway.client(timeout=120) as client:
                local = env.get("JOBGATE_STORAGE", "local") == "local"
                tenant_dir = LocalStore(work / "data").root / TENANT if local else None
                return {"invocations": count, "seeded_s": round(seeded_s, 1),
                        **_pages(client, count, tenant_dir)}
        finally:
            gateway.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_janitor(count: int, env: Mapping[str, str] | None = None,
                    timeout_s: float = 600) -> dict[str, Any]:
    env = dict(env or {})
    work = Path(tempfile.mkdtemp(prefix="jobgate-growth-"))
    data = work / "data"
    try:
        asyncio.run(_with_store(data, env, lambda store: _seed(store, count, expired=True)))
        started = time.monotonic()
        gateway = GatewayProcess(data, env={**QUIET, **env,
                                            "JOBGATE_JANITOR_INTERVAL_S": "0.5"})
        gateway.start(timeout_s=120)
        try:
            left = count
            while time.monotonic() - started < timeout_s:
                left = asyncio.run(_with_store(data, env, _left))
                if not left:
                    break
                time.sleep(0.25)
            elapsed = time.monotonic() - started
        finally:
            gateway.stop()
        return {"expired": count, "left": left, "seconds": round(elapsed, 1),
                "invocations_deleted_per_s": round((count - left) / elapsed, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_memory(calls: int, *, clients: int = 8, samples: int = 10,
                   timeout_s: float = 3600, ttl_s: int | None = None,
                   say: Callable[[str], None] = print) -> dict[str, Any]:
    """``calls`` sync print(1) invocations through a pooled local gateway, each with an
    Idempotency-Key of its own, ``clients`` at a time; the gateway's RSS sampled
    ``samples`` times on the way. Bounded tables (keys, locks, task sets, label sets)
    show as a flat line once warm; a table that keeps something per invocation, as a
    slope. With ``ttl_s`` the invocations expire (the janitor deletes them) so what is
    stored stays bounded too: a slope left then is one that grows with the calls served,
    not with the invocations kept."""
    from bench.footprint import rss_mb
    from bench.services import LOAD_SETTINGS, POOLED, write_profiles

    work = Path(tempfile.mkdtemp(prefix="jobgate-growth-"))
    profiles = write_profiles(work / "profiles.toml", POOLED)
    gateway = GatewayProcess(work / "data", env={**LOAD_SETTINGS,
                                                 "JOBGATE_PROFILES": str(profiles)})
    gateway.start(timeout_s=120)
    assert gateway.proc is not None
    pid, every = gateway.proc.pid, max(1, calls // samples)
    trace: list[dict[str, Any]] = []
    failed = 0

    body: dict[str, Any] = {"profile": "python3.11", "code": "print(1)"}
    if ttl_s is not None:
        body["ttl_s"] = ttl_s

    async def sample(client: httpx.AsyncClient, n: int) -> None:
        """RSS, and the metric series the gateway exports (a label set per series)."""
        text = (await client.get("/metrics")).text
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        trace.append({"after_invocations": n, "rss_mb": rss_mb(pid),
                      "metric_series": series})
        say(f"growth: memory {trace[-1]}")

    async def drive() -> None:
        nonlocal failed
        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Bearer {KEY_A}"}
        taken = 0
        async with httpx.AsyncClient(base_url=gateway.url, headers=headers,
                                     timeout=60) as client:
            await sample(client, 0)

            async def caller() -> None:
                nonlocal taken, failed
                while taken < calls and time.monotonic() < deadline:
                    taken += 1
                    n = taken
                    answer = await client.post(
                        "/v1/invocations", headers={"Idempotency-Key": f"mem-{n}"},
                        json=body)
                    if answer.status_code != 200 or answer.json().get("stdout") != "1\n":
                        failed += 1
                    if n % every == 0:
                        await sample(client, n)

            await asyncio.gather(*(caller() for _ in range(clients)))
            if trace[-1]["after_invocations"] != taken:
                await sample(client, taken)

    started = time.monotonic()
    try:
        asyncio.run(drive())
    finally:
        gateway.stop()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    done = trace[-1]["after_invocations"]
    return {"calls": done, "failed": failed, "seconds": round(elapsed, 1),
            "rate_per_s": round(done / elapsed, 1), "trace": trace}


def measure_all(sizes: list[int], janitor: int,
                env_for: Callable[[str], Mapping[str, str]] | None = None,
                say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every size, then the janitor; ``env_for(name)``: the storage of each measurement,
    one of its own (an S3 prefix per size: nothing counted twice)."""
    def env(name: str) -> Mapping[str, str]:
        return env_for(name) if env_for is not None else {}

    lists = []
    for n in sizes:
        lists.append(measure(n, env(f"list-{n}")))
        say(f"growth: {lists[-1]}")
    result: dict[str, Any] = {"list": lists}
    if janitor:
        result["janitor"] = measure_janitor(janitor, env(f"janitor-{janitor}"))
        say(f"growth: {result['janitor']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--janitor", type=int, default=10000,
                        help="expired invocations for the janitor's rate (0: none)")
    parser.add_argument("--s3", action="store_true", help="S3 storage on SeaweedFS")
    parser.add_argument("--calls", type=int, default=0,
                        help="instead: the gateway's memory over this many invocations")
    parser.add_argument("--ttl-s", type=int, default=None,
                        help="with --calls: each invocation's TTL (what is kept stays bounded)")
    args = parser.parse_args()
    if args.calls:
        print(measure_memory(args.calls, ttl_s=args.ttl_s,
                             say=lambda line: print(line, flush=True)))
        return
    if not args.s3:
        measure_all(args.sizes, args.janitor)
        return
    from tests.servers.seaweedfs import SeaweedFS

    work = Path(tempfile.mkdtemp(prefix="jobgate-growth-weed-"))
    weed = SeaweedFS(work).start(timeout_s=60)
    try:
        measure_all(args.sizes, args.janitor,
                    lambda name: weed.gateway_env("jobgate-growth", name))
    finally:
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
