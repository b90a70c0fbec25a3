"""Membership and the retry of lost attempts, in-process over fakes: a fake executor (its
workers' fates scripted), a fake membership, the real service and local storage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.auth.upload_tokens import UploadTokens
from gateway.callbacks.delivery import CallbackDeliverer
from gateway.callbacks.ssrf import CallbackPolicy
from gateway.config.profiles import Profile, load_profiles
from gateway.config.settings import Settings
from gateway.dispatch.invoke import Dispatcher, InvocationRequest, build_dispatcher
from gateway.dispatch.parts import Parts
from gateway.dispatch.plan import make_plan
from gateway.errors import ConfigError, InvalidInput, WorkerLost
from gateway.executors.base import Executor, WorkerHandle
from gateway.executors.kubernetes.reasons import no_fault_of_the_code
from gateway.executors.live_output import LiveOutput
from gateway.ids import new_invocation_id
from gateway.membership.base import Membership
from gateway.membership.standalone import StandaloneMembership
from gateway.metrics.registry import Metrics
from gateway.models import (
    Assignment,
    InvocationCreate,
    InvocationRecord,
    Status,
    WorkerReport,
)
from gateway.storage.local import LocalStore
from gateway.storage.records import InvocationStore
from gateway.tenants.directory import TenantDirectory
from gateway.tenants.limits import LimitsTable
from gateway.tenants.quota import StorageQuota
from tests.fakes import FakeExecutor, FakeMembership

TENANT = "tenant-a"
DONE = WorkerReport(protocol=1, reason=None, exit_code=0, workspace_base=None,
                    stdout="done\n", stdout_bytes=5)




class ScriptedExecutor(FakeExecutor):
    """Each run takes the next scripted outcome: a report, or a WorkerLost to raise; what
    it was asked is kept in ``events``, in order."""

    def __init__(self, outcomes: list[WorkerReport | WorkerLost], *,
                 can_end_attempts: bool = True):
        super().__init__()
        self.outcomes = outcomes
        self.can_end_attempts = can_end_attempts
        self.events: list[tuple[str, Any]] = []

    async def acquire(self, profile: Profile, invocation_id: str) -> WorkerHandle:
        n = len([e for e in self.events if e[0] == "acquire"]) + 1
        self.events.append(("acquire", n))
        return WorkerHandle(id=f"w{n}", profile=profile.name, address="http://w", token="t",
                            ready_at=0.0, start_latency_s=0.0)

    async def run(self, worker: WorkerHandle, assignment: Assignment,
                  output: LiveOutput | None = None) -> WorkerReport:
        self.events.append(("run", assignment.attempt))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, WorkerLost):
            raise outcome
        return outcome

    async def release(self, worker: WorkerHandle, report: WorkerReport | None) -> None:
        self.events.append(("release", worker.id))

    async def end_attempt(self, invocation_id: str) -> bool:
        self.events.append(("end_attempt", invocation_id))
        return self.can_end_attempts


Run = Callable[[Callable[[InvocationStore], Coroutine[Any, Any, None]]], None]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def run(store_dir: Path) -> Run:
    """Runs ``main(records)`` on a fresh event loop, over one local store."""
    def runner(main: Callable[[InvocationStore], Coroutine[Any, Any, None]]) -> None:
        async def wrapped() -> None:
            store = LocalStore(store_dir)
            await store.start()
            records = InvocationStore(store)
            try:
                await main(records)
            finally:
                await records.close()
                await store.close()
        asyncio.run(wrapped())
    return runner


def make_service(records: InvocationStore, executor: Executor, membership: Membership,
                 **settings: Any) -> Dispatcher:
    config = Settings(**settings)
    metrics = Metrics()
    policy = CallbackPolicy([])
    deliverer = CallbackDeliverer(config, records, metrics, policy, ["s" * 32])
    limits, tenants = LimitsTable(), TenantDirectory([TENANT])
    quota = StorageQuota(records.usage, limits, metrics.tenant_stored_bytes,
                         refresh_s=config.usage_refresh_s, tenants=tenants)
    parts = Parts(config, load_profiles(None), executor, records, metrics, membership,
                  limits, quota, tenants)
    return build_dispatcher(parts, deliverer, policy, UploadTokens("s" * 32))


async def stored(records: InvocationStore, owner: str, status: Status,
                 **body: Any) -> InvocationRecord:
    """An invocation as a gateway ``owner`` left it when it died."""
    request = {"profile": "bash", "code": "echo done", "mode": "async", **body}
    now = datetime.now(UTC)
    record = InvocationRecord(id=new_invocation_id(), tenant=TENANT, profile="bash",
                              mode="async", status=status, created_at=now,
                              expires_at=now + timedelta(hours=1), replica=owner,
                              max_attempts=3, attempts=1 if status == Status.running else 0)
    await records.create(record, orjson.dumps(request))
    return record


async def finished(service: Dispatcher, records: InvocationStore,
                   record: InvocationRecord) -> InvocationRecord:
    for _ in range(200):
        current = await records.load(TENANT, record.id)
        if current.status.terminal and record.id not in service.live:
            return current
        await asyncio.sleep(0.01)
    raise AssertionError(f"{record.id} did not finish")


def test_a_standalone_identity_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = StandaloneMembership(Settings(data_dir=tmp_path))
    again = StandaloneMembership(Settings(data_dir=tmp_path))
    assert first.identity == again.identity
    assert first.identity != StandaloneMembership(Settings(data_dir=tmp_path / "x")).identity
    assert StandaloneMembership(Settings(data_dir=tmp_path, replica_id="gw-7")).identity == \
        "gw-7"

    async def main() -> None:
        assert not first.leads and await first.gone({"other"}) == set()
        await first.start()
        with pytest.raises(ConfigError, match="another gateway is running"):
            await again.start()
        await first.stop()
        await again.start()  # free again once the first one stops
        await again.stop()

    asyncio.run(main())


def test_a_gateway_recovers_its_own_work_and_no_live_peer_s(run: Run) -> None:
    async def main(records: InvocationStore) -> None:
        mine = await stored(records, "b", Status.running)
        mine_queued = await stored(records, "b", Status.queued)
        peers = await stored(records, "a", Status.running)
        peers_queued = await stored(records, "a", Status.queued)
        executor = ScriptedExecutor([DONE, DONE])
        service = make_service(records, executor, FakeMembership("b"))
        assert await service.recover(at_start=True) == 2
        assert await service.recover() == 0  # the sweep: nothing for a standalone gateway
        rerun = await finished(service, records, mine)
        assert (rerun.status, rerun.attempts, rerun.stdout) == (Status.succeeded, 2, "done\n")
        assert [a.reason.value for a in rerun.attempt_history] == ["WorkerLost"]
        assert ("end_attempt", mine.id) in executor.events
        queued = await finished(service, records, mine_queued)
        assert (queued.status, queued.attempts, queued.attempt_history) == \
            (Status.succeeded, 1, [])
        for left in (peers, peers_queued):  # a's: not b's to take, a may be alive
            assert (await records.load(TENANT, left.id)).status == left.status
        await records.flush()  # finished markers' deletes, waiting to share a request
        assert {i for _, i in await records.pending()} == {peers.id, peers_queued.id}

        # The leader, once its membership knows a is gone, takes over a's work.
        leader = make_service(records, ScriptedExecutor([DONE, DONE]),
                              FakeMembership("c", leads=True, gone=frozenset({"a"})))
        assert await leader.recover() == 2
        for taken in (peers, peers_queued):
            assert (await finished(leader, records, taken)).status == Status.succeeded

    run(main)


def _request(**body: Any) -> InvocationCreate:
    return InvocationCreate.model_validate({"profile": "bash", "code": "echo done", **body})


def test_a_worker_lost_through_no_fault_of_the_code_runs_again(run: Run) -> None:
    async def main(records: InvocationStore) -> None:
        executor = ScriptedExecutor([
            WorkerLost("the worker pod was deleted", no_fault_of_the_code=True),
            WorkerLost("the pod was evicted", reason="Evicted", no_fault_of_the_code=True),
            DONE])
        service = make_service(records, executor, FakeMembership("a"))
        record, live = await service.admission.admit(
            InvocationRequest(TENANT, _request(mode="async"), b"{}"))
        assert live is not None
        done = await asyncio.wait_for(live.done, 5)
        assert (done.status, done.attempts, done.max_attempts) == (Status.succeeded, 3, 3)
        assert [(a.attempt, a.reason.value, a.worker) for a in done.attempt_history] == \
            [(1, "WorkerLost", "w1"), (2, "Evicted", "w2")]
        # Each earlier worker released and made sure gone before the next one is taken.
        assert executor.events == [
            ("acquire", 1), ("run", 1), ("release", "w1"), ("end_attempt", record.id),
            ("acquire", 2), ("run", 2), ("release", "w2"), ("end_attempt", record.id),
            ("acquire", 3), ("run", 3), ("release", "w3")]

    run(main)


@pytest.mark.parametrize("case", ["the code's doing", "sync", "attempts used up",
                                  "earlier worker not sure gone"])
def test_when_a_lost_worker_is_not_run_again(run: Run, case: str) -> None:
    lost = WorkerLost("the worker pod was deleted", no_fault_of_the_code=case != "the code's doing")
    body: dict[str, Any] = {"mode": "sync" if case == "sync" else "async"}
    if case == "attempts used up":
        body["max_attempts"] = 2

    async def main(records: InvocationStore) -> None:
        outcomes: list[WorkerReport | WorkerLost] = [lost, lost, DONE]
        executor = ScriptedExecutor(outcomes,
                                can_end_attempts=case != "earlier worker not sure gone")
        service = make_service(records, executor, FakeMembership("a"))
        _, live = await service.admission.admit(InvocationRequest(TENANT, _request(**body), b"{}"))
        assert live is not None
        done = await asyncio.wait_for(live.done, 5)
        assert (done.status, done.reason) == (Status.error, "WorkerLost")
        assert done.attempts == (2 if case == "attempts used up" else 1)

    run(main)


def test_max_attempts_defaults_and_cap() -> None:
    catalog = load_profiles(None)

    def plan(settings: Settings, **body: Any) -> int:
        req = _request(**body)
        return make_plan(req, catalog.get(req.profile), settings).max_attempts

    assert plan(Settings(), mode="async") == 3
    assert plan(Settings()) == 1
    assert plan(Settings(), max_attempts=2) == 2
    assert plan(Settings(max_attempts=2), mode="async") == 2
    with pytest.raises(InvalidInput):
        plan(Settings(max_attempts=2), mode="async", max_attempts=3)


@pytest.mark.parametrize(("status", "deleted", "expected"), [
    ({"phase": "Running"}, True, True),  # deleted: an operator, a drain, its node lost
    ({"phase": "Failed", "reason": "Evicted",
      "message": "The node was low on resource: memory."}, False, True),
    ({"phase": "Failed", "reason": "Evicted",
      "message": 'Usage of EmptyDir volume "workspace" exceeds the limit "64Mi". '}, False,
     False),
    ({"phase": "Failed", "reason": "Evicted",
      "message": "Container runner exceeded its local ephemeral storage limit \"1Gi\". "},
     False, False),
    ({"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"reason": "OOMKilled"}}}]}, False, False),
    ({"phase": "Failed"}, False, False),
    ({"phase": "Succeeded"}, True, False),
])
def test_which_pod_endings_are_no_fault_of_the_code(status: dict[str, Any], deleted: bool,
                                                      expected: bool) -> None:
    meta = {"deletionTimestamp": "2025-01-01T00:00:00Z"} if deleted else {}
    assert no_fault_of_the_code({"metadata": meta, "status": status}) is expected


def test_callback_deliveries_are_resumed_only_for_the_owners_chosen(run: Run) -> None:
    async def main(records: InvocationStore) -> None:
        expires = datetime.now(UTC) + timedelta(hours=1)
        for owner in ("a", "b", None):
            await records.mark_callback(
                InvocationRecord(id=f"inv_{owner}", tenant=TENANT, profile="bash",
                                 mode="async", created_at=expires, expires_at=expires,
                                 replica=owner), None)
        deliverer = CallbackDeliverer(Settings(), records, Metrics(), CallbackPolicy([]),
                                      ["s" * 32])
        started: list[str] = []
        deliverer._start = lambda tenant, inv, secret: started.append(inv)  # type: ignore[method-assign]
        asked: list[set[str]] = []

        async def choose(owners: set[str]) -> set[str]:
            asked.append(owners)
            return {"b"}

        assert await deliverer.resume_pending(choose) == 1
        assert asked == [{"a", "b", ""}] and started == ["inv_b"]
        await deliverer.close()

    run(main)
