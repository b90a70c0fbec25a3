"""The dispatch layer in this process, over a fake executor: what the invocation path
decides, seen without real workers (their suites are test_invocations and test_failures)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.dispatch.keyed_locks import KeyedLocks
from gateway.errors import WorkerLost, WorkerStartFailed
from gateway.executors.base import WorkerHandle
from gateway.executors.kubernetes.reasons import PodFailure, start_failure, terminal_failure
from gateway.executors.live_output import LiveOutput
from gateway.models import REASON_STATUS, Assignment, Reason, Status, WorkerReport
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
        assert len(gw.gateway.service.admission.idem_locks) == 0


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
        assert len(gw.gateway.service.admission.idem_locks) == 0


# -- reasons ----------------------------------------------------------------------------


class BrokenExecutor(FakeExecutor):
    """A bug at the executor seam: run() raises what no executor means to raise."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    async def run(self, worker: WorkerHandle, assignment: Assignment,
                  output: LiveOutput | None = None) -> WorkerReport:
        if not self.broken:
            return await super().run(worker, assignment)
        self.runs.append(assignment)
        raise RuntimeError("boom: a bug, not a lost worker")


async def test_a_gateway_bug_ends_the_invocation_as_internal_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    executor = BrokenExecutor()
    async with inprocess_gateway(tmp_path, executor) as gw:
        with caplog.at_level(logging.ERROR, logger="jobgate.dispatch"):
            r = await gw.client.post("/v1/invocations", json={"profile": "fake", "code": "1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["status"], body["reason"]) == ("error", "InternalError")
        assert "RuntimeError" in body["message"] and "Traceback" not in body["message"]
        assert "boom" not in body["message"]
        # Recorded so, and told so in the log: once, with the traceback.
        stored = (await gw.client.get(f"/v1/invocations/{body['id']}")).json()
        assert stored["reason"] == "InternalError"
        logged = [rec for rec in caplog.records if body["id"] in rec.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None
        # The worker it claimed was released, as lost (no report).
        assert [report for _, report in executor.released] == [None]
        # The gateway goes on serving.
        executor.broken = False
        again = await gw.client.post("/v1/invocations", json={"profile": "fake", "code": "1"})
        assert again.json()["status"] == "succeeded"


def test_reasons_travel_as_enum_values() -> None:
    assert REASON_STATUS[Reason.InternalError] == Status.error
    assert WorkerLost("x").reason is Reason.WorkerLost
    assert WorkerStartFailed("x").reason is Reason.StartFailed
    assert WorkerLost("x", reason=Reason.Evicted).reason is Reason.Evicted
    evicted = {"metadata": {}, "status": {"phase": "Failed", "reason": "Evicted"}}
    assert terminal_failure(evicted) == PodFailure(Reason.Evicted, "the worker pod was evicted")
    deleted = {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {}}
    failure = start_failure(deleted, pull_grace_s=1, unschedulable_after_s=1)
    assert failure is not None and failure.reason is Reason.WorkerLost
