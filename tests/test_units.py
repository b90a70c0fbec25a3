"""Unit tests of the pure pieces, beside (never instead of) the end-to-end tests."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from gateway.callbacks.delivery import backoff_delay
from gateway.callbacks.signing import sign, verify
from gateway.callbacks.ssrf import CallbackPolicy
from gateway.config.profiles import load_profiles
from gateway.config.settings import Settings
from gateway.dispatch.plan import make_plan
from gateway.errors import CallbackRefused, InvalidInput, PayloadTooLarge, QueueFull
from gateway.executors.base import WorkerHandle
from gateway.executors.pool import WarmPool
from gateway.ids import is_invocation_id, new_invocation_id
from gateway.models import InvocationCreate


def test_ids_sort_newest_first() -> None:
    older = new_invocation_id(1_700_000_000_000)
    newer = new_invocation_id(1_700_000_000_001)
    assert newer < older
    assert is_invocation_id(older) and is_invocation_id(newer)
    assert not is_invocation_id("inv_../../etc/passwd")


def test_signature_round_trip_and_tolerance() -> None:
    header = sign("s3cret", b"{}", timestamp=1000)
    assert header.startswith("t=1000,v1=")
    assert verify("s3cret", b"{}", header, now=1100)
    assert not verify("s3cret", b"{}", header, now=2000)  # replayed too late
    assert not verify("other", b"{}", header, now=1100)
    assert not verify("s3cret", b"{}", "garbage", now=1100)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rnd = random.Random(1)
    delays = [backoff_delay(n, 1.0, 30.0, rnd) for n in range(1, 10)]
    assert 0.5 <= delays[0] <= 1.0
    assert 4.0 <= delays[3] <= 8.0
    assert all(d <= 30.0 for d in delays)


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://10.1.2.3/", "http://[::1]/",
                                 "http://169.254.169.254/", "http://[::ffff:10.0.0.1]/",
                                 "http://100.64.0.1/", "http://224.0.0.1/"])
def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(CallbackRefused):
        asyncio.run(CallbackPolicy([]).resolve(url))


def test_public_and_allow_listed_addresses_pass() -> None:
    assert asyncio.run(CallbackPolicy([]).resolve("https://93.184.216.34/x")).port == 443
    target = asyncio.run(CallbackPolicy(["10.0.0.0/8"]).resolve("http://10.9.9.9:81/x"))
    assert (target.address, target.port) == ("10.9.9.9", 81)


def _plan(**body):  # type: ignore[no-untyped-def]
    catalog = load_profiles(None)
    req = InvocationCreate.model_validate({"profile": "python3.11", **body})
    return make_plan(req, catalog.get(req.profile), Settings())


def test_plan_defaults_and_limits() -> None:
    plan = _plan(code="print(1)")
    assert plan.entrypoint == "main.py" and plan.files == {"main.py": "print(1)"}
    assert plan.argv == ["python3", "main.py"]
    assert _plan(files={"only.py": "x"}).entrypoint == "only.py"
    assert _plan(code="x", resources={"memory": "1Gi", "cpu": "500m"}).memory_mb == 1024
    with pytest.raises(InvalidInput):
        _plan(code="x", timeout_s=10**6)
    with pytest.raises(PayloadTooLarge):
        _plan(code="x", stdin="y" * (2 * 1024 * 1024))


def _worker(n: int) -> WorkerHandle:
    return WorkerHandle(id=f"w{n}", profile="p", address="http://x", token="t",
                        ready_at=time.monotonic(), start_latency_s=0.01)


def test_pool_warm_then_cold_and_bounded_queue() -> None:
    async def main() -> None:
        made = 0

        async def spawn() -> WorkerHandle:
            nonlocal made
            made += 1
            number = made
            await asyncio.sleep(0.01)
            return _worker(number)

        async def discard(w: WorkerHandle) -> None:
            pass

        pool = WarmPool("p", executor="test", spawn=spawn, discard=discard,
                        alive=lambda w: True, min_idle=1, max_idle=2, max_concurrency=2,
                        queue_size=1)
        pool.start()
        for _ in range(100):
            if pool.state().idle:
                break
            await asyncio.sleep(0.01)
        first = await pool.acquire()
        assert first.warm
        second = await pool.acquire()  # started on demand, or idle after the refill
        third = asyncio.create_task(pool.acquire())  # concurrency 2: waits in the queue
        await asyncio.sleep(0.05)
        assert pool.state().queued == 1
        with pytest.raises(QueueFull):
            await pool.acquire()
        pool.release(first)
        got = await asyncio.wait_for(third, 2)
        assert got.id not in (first.id, second.id)
        assert pool.state().busy == 2
        await pool.stop()

    asyncio.run(main())


def test_the_gateway_rechecks_what_a_worker_wants_to_upload() -> None:
    from gateway.dispatch.plan import ArtifactLimitExceeded, check_artifact_listing
    from gateway.models import ArtifactListing

    settings = Settings(artifact_max_count=2, artifact_max_bytes=100,
                        artifact_max_total_bytes=150)

    def listing(*entries: tuple[str, int]) -> ArtifactListing:
        return ArtifactListing.model_validate({"artifacts": [
            {"name": n, "size": s, "sha256": "0" * 64} for n, s in entries]})

    check_artifact_listing(listing(("a", 100), ("b/c", 50)), settings)
    with pytest.raises(ArtifactLimitExceeded, match="at most 2"):
        check_artifact_listing(listing(("a", 1), ("b", 1), ("c", 1)), settings)
    with pytest.raises(ArtifactLimitExceeded, match="at most 100"):
        check_artifact_listing(listing(("a", 101)), settings)
    with pytest.raises(ArtifactLimitExceeded, match="at most 150"):
        check_artifact_listing(listing(("a", 100), ("b", 60)), settings)
    for bad in ("../x", "/etc/passwd", "a//b"):
        with pytest.raises(InvalidInput):
            check_artifact_listing(listing((bad, 1)), settings)


def test_a_keyed_task_is_the_only_one_of_its_key_until_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gateway.supervise import TaskSet

    async def main() -> None:
        tasks = TaskSet("keyed", logging.getLogger("test.supervise"))
        gate = asyncio.Event()

        async def wait_then_fail() -> None:
            await gate.wait()
            raise RuntimeError("boom")

        tasks.spawn(wait_then_fail(), key="a")
        assert "a" in tasks and "b" not in tasks
        second = asyncio.sleep(0)
        with pytest.raises(ValueError, match="runs already"):
            tasks.spawn(second, key="a")
        second.close()
        gate.set()
        await tasks.settle()
        assert "a" not in tasks and len(tasks) == 0
        tasks.spawn(asyncio.sleep(60), key="a")  # free again once the first ended
        await tasks.cancel_all()
        assert "a" not in tasks

    with caplog.at_level(logging.ERROR, logger="test.supervise"):
        asyncio.run(main())
    failures = [r for r in caplog.records if r.name == "test.supervise"]
    assert len(failures) == 1 and failures[0].exc_info is not None
