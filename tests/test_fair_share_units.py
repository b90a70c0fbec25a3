"""The fair share's order of service, by itself (no gateway): quick to diagnose what the
real-gateway tests in test_fair_share.py show end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gateway.dispatch.fair_share import FairShare, Turn
from gateway.errors import QueueFull
from gateway.tenants.limits import LimitsTable, TenantLimits

P = "python3.11"


def share(capacity: int, queue_size: int = 1000, **tenants: TenantLimits) -> FairShare:
    return FairShare(LimitsTable(TenantLimits(), dict(tenants)), capacity, queue_size)


def order_of_service(turns: list[Turn], rounds: int) -> list[str]:
    """Free one slot at a time (the oldest holder's) and note whose turn it became."""
    served: list[str] = []
    for _ in range(rounds):
        before = {id(t) for t in turns if t.holding}
        next(t for t in turns if t.holding).close()
        served += [t.tenant.name for t in turns if t.holding and id(t) not in before]
    return served


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def test_a_single_call_goes_before_a_long_queue() -> None:
    async def main() -> None:
        fair = share(2)
        flood = [fair.enter(P, "a") for _ in range(100)]
        assert [t.holding for t in flood[:3]] == [True, True, False]
        assert (fair.running("a"), fair.queued("a")) == (2, 98)
        single = fair.enter(P, "b")
        assert not single.holding
        flood[0].close()
        assert single.holding, "b's call takes the first slot that frees"
        await single.wait()  # holding: returns at once
    run(main)


def test_weights_share_the_slots() -> None:
    async def main() -> None:
        fair = share(1, a=TenantLimits(weight=2))
        blocker = fair.enter(P, "c")
        turns = [fair.enter(P, name) for _ in range(30) for name in ("a", "b")]
        served = order_of_service([blocker, *turns], 30)
        assert served.count("a") == 20 and served.count("b") == 10, served
    run(main)


def test_max_running_waits_and_lets_others_use_the_free_slots() -> None:
    async def main() -> None:
        fair = share(3, a=TenantLimits(max_running=1))
        a1, a2 = fair.enter(P, "a"), fair.enter("bash", "a")
        assert a1.holding and not a2.holding  # across profiles
        b1 = fair.enter(P, "b")
        assert b1.holding, "a's waiting call does not hold back b"
        assert not fair.would_wait(P, "b") and fair.would_wait(P, "a")
        a1.close()
        assert a2.holding, "a's call in the other profile goes when a is below its max"
    run(main)


def test_a_cancelled_waiter_leaves_its_queue_and_nothing_leaks() -> None:
    async def main() -> None:
        fair = share(1)
        holder = fair.enter(P, "a")
        waiter = fair.enter(P, "a")
        task = asyncio.create_task(waiter.wait())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        waiter.close()
        waiter.close()  # idempotent
        assert (fair.running("a"), fair.queued("a"), fair.waiting(P)) == (1, 0, 0)
        holder.close()
        assert (fair.running("a"), fair.queued("a")) == (0, 0)
        assert fair.enter(P, "b").holding
    run(main)


def test_a_full_profile_queue_is_refused_with_retry_after() -> None:
    async def main() -> None:
        fair = share(1, queue_size=1)
        fair.check_room(P)
        fair.enter(P, "a")
        fair.check_room(P)  # a slot is taken, the queue has room
        fair.enter(P, "a")
        with pytest.raises(QueueFull) as refused:
            fair.check_room(P)
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    run(main)


def test_a_frozen_share_starts_nothing_more() -> None:
    async def main() -> None:
        fair = share(1)
        holder, waiter = fair.enter(P, "a"), fair.enter(P, "b")
        fair.freeze()  # shutdown: what waits stays pending for the next start
        holder.close()
        assert not waiter.holding and not fair.enter(P, "c").holding
    run(main)
