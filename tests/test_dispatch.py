"""The dispatch layer in this process, over a fake executor: what the invocation path
decides, seen without real workers (their suites are test_invocations and test_failures)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.dispatch.keyed_locks import KeyedLocks
from tests.fakes import FakeExecutor, inprocess_gateway

# -- Idempotency-Key --------------------------------------------------------------------


async def test_keyed_locks_serialise_a_key_and_forget_it_after_the_last_user() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlap = 0
    release = asyncio.Event()

    async def user(key: str, name: str) -> None:
        nonlocal overlap
        async with locks.hold(key):
            if any(other.startswith(key) for other in inside):
                overlap += 1
            inside.append(f"{key}:{name}")
            await release.wait()
            inside.remove(f"{key}:{name}")

    users = [asyncio.create_task(user("k", str(i))) for i in range(3)]
    other = asyncio.create_task(user("j", "0"))
    await asyncio.sleep(0.01)
    assert sorted(inside) == ["j:0", "k:0"]  # the other key is not held up
    assert len(locks) == 2
    # A waiter that gives up does not take the lock away from those still waiting.
    users[1].cancel()
    await asyncio.sleep(0.01)
    late = asyncio.create_task(user("k", "late"))  # arrives while the first still holds
    release.set()
    await asyncio.gather(users[0], users[2], other, late)
    assert users[1].cancelled()
    assert overlap == 0
    assert len(locks) == 0


async def test_idempotency_locks_do_not_outlive_their_requests(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with inprocess_gateway(tmp_path, executor) as gw:

        async def post(i: int) -> None:
            r = await gw.client.post("/v1/invocations", headers={"Idempotency-Key": f"k-{i}"},
                                     json={"profile": "fake", "code": f"print({i})"})
            assert r.status_code == 200, r.text

        for batch in range(4):
            await asyncio.gather(*(post(batch * 50 + i) for i in range(50)))
        assert len(executor.runs) == 200
        assert len(gw.gateway.service._idem_locks) == 0


async def test_concurrent_posts_with_one_idempotency_key_make_one_invocation(
        tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with inprocess_gateway(tmp_path, executor) as gw:
        body = {"profile": "fake", "code": "print('once')"}
        first, second = await asyncio.gather(*(
            gw.client.post("/v1/invocations", headers={"Idempotency-Key": "same"}, json=body)
            for _ in range(2)))
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert first.json()["id"] == second.json()["id"]
        assert first.json()["status"] == "succeeded"
        assert len(executor.runs) == 1
        assert len(gw.gateway.service._idem_locks) == 0
