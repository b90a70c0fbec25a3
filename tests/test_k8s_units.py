"""The Kubernetes executor's parts over a fake KubeApi (tests/fakes.py): the claim race and
the pool controller's decisions, the Lease membership, in about a second. The real cluster
is tests/test_kubernetes.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config.profiles import Profile, ProfileCatalog, load_profiles
from gateway.config.settings import KubernetesSettings, Settings
from gateway.errors import ExecutorUnavailable
from gateway.executors.kubernetes import KubernetesExecutor
from gateway.executors.kubernetes.controller import SURPLUS_IDLE_AFTER_S, PoolController
from gateway.executors.kubernetes.jobs import WorkerJobs
from gateway.executors.kubernetes.pools import Pools
from gateway.executors.kubernetes.spec import (
    INVOCATION,
    PROFILE,
    WORKERS_SELECTOR,
    worker_job,
)
from gateway.executors.kubernetes.tracker import PodTracker
from gateway.ids import new_invocation_id, new_token
from gateway.kube.base import Conflict, Gone, Missing, Refused
from gateway.kube.names import label_value
from gateway.membership.leases import LeaseMembership
from tests.fakes import FakeKubeApi, FakeMembership

PROFILES = """
[profiles.py]
image = "jobgate/runtime-python3.11:0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
pool = { min = 0, max = 1 }

[profiles.warm]
image = "jobgate/runtime-python3.11:0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
pool = { min = 2, max = 4 }
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    catalogue = tmp_path / "profiles.toml"
    catalogue.write_text(PROFILES)
    return Settings(data_dir=tmp_path / "data", profiles=catalogue, executor="kubernetes",
                    kubernetes=KubernetesSettings(namespace="fake", lease_duration_s=3))


@pytest.fixture
def profiles(settings: Settings) -> ProfileCatalog:
    return load_profiles(settings.profiles, check_installed=False)


def add_worker(api: FakeKubeApi, profile: Profile, settings: Settings, *, ready: bool = True,
               age_s: float = 0.0) -> str:
    """A worker of ``profile`` already in the pool (its pod's name)."""
    name = f"jg-{profile.name}-{new_token(5)}"
    manifest = worker_job(profile, settings.kubernetes, name=name, token=new_token(),
                          created_by="someone")
    return api.add_job(manifest, ready=ready, age_s=age_s)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def labels(api: FakeKubeApi, pod: str) -> dict[str, str]:
    return dict(api.pods[pod]["metadata"]["labels"])


# -- claiming: the resourceVersion precondition is the lock ------------------------------


@contextlib.asynccontextmanager
async def executor(api: FakeKubeApi, settings: Settings, profiles: ProfileCatalog
                   ) -> AsyncIterator[KubernetesExecutor]:
    """The executor over ``api``, started; not the leader, so no pool controller acts."""
    ex = KubernetesExecutor(settings, profiles, FakeMembership("replica-a"), api=api)
    await ex.start()
    try:
        yield ex
    finally:
        await ex.stop()


async def test_two_acquirers_one_worker_one_wins_the_other_starts_cold(
        settings: Settings, profiles: ProfileCatalog) -> None:
    api = FakeKubeApi()
    py = profiles.get("py")
    pod = add_worker(api, py, settings)
    async with executor(api, settings, profiles) as ex:
        first, second = new_invocation_id(), new_invocation_id()
        a, b = await asyncio.gather(ex.acquire(py, first), ex.acquire(py, second))
        # Both patched the one pod with the resourceVersion they had seen; one got a 409.
        assert api.conflicts == 1
        warm, cold = (a, b) if a.warm else (b, a)
        assert warm.warm and not cold.warm
        assert warm.id == pod and cold.id != pod
        won = first if warm is a else second
        assert labels(api, pod)["jobgate.io/state"] == "claimed"
        assert labels(api, pod)["jobgate.io/invocation"] == label_value(won)
        assert labels(api, pod)["jobgate.io/claimed-by"] == "replica-a"
        assert labels(api, cold.id)["jobgate.io/state"] == "claimed"
        assert len(api.jobs) == 2  # the loser's cold start: one Job, for it
        assert api.calls["patch pods"] == 3
        assert warm.meta["job"] in api.jobs and cold.meta["job"] in api.jobs
        assert warm.token and warm.address.startswith("http://10.0.0.")
        [state] = [s for s in ex.pools() if s.profile == "py"]
        assert (state.warm_starts, state.cold_starts, state.busy) == (1, 1, 2)


async def test_two_acquirers_two_workers_the_loser_takes_the_next(
        settings: Settings, profiles: ProfileCatalog) -> None:
    api = FakeKubeApi()
    py = profiles.get("py")
    pods = {add_worker(api, py, settings), add_worker(api, py, settings)}
    async with executor(api, settings, profiles) as ex:
        for _ in range(3):  # whichever pod each tries first (the order is random)
            a, b = await asyncio.gather(ex.acquire(py, new_invocation_id()),
                                        ex.acquire(py, new_invocation_id()))
            assert a.warm and b.warm
            assert {a.id, b.id} == pods
            assert len(api.jobs) == 2  # no cold start
            for name in pods:  # back to the pool, for the next round
                api.pods[name]["metadata"]["labels"]["jobgate.io/state"] = "idle"
                api.make_ready(name)
            await until(lambda: len(ex.tracker.pods) == 2 and all(
                p.state == "idle" for p in ex.tracker.pods.values()))


async def test_a_claim_seen_late_is_never_taken_twice(
        settings: Settings, profiles: ProfileCatalog) -> None:
    """Another replica claimed the pod, and this one's watch has not shown it yet: the
    stale resourceVersion makes the claim fail, and the call starts a worker instead."""
    api = FakeKubeApi()
    py = profiles.get("py")
    pod = add_worker(api, py, settings)
    async with executor(api, settings, profiles) as ex:
        await until(lambda: pod in ex.tracker.pods)
        seen = ex.tracker.pods[pod]
        version = api.pods[pod]["metadata"]["resourceVersion"]
        await api.patch_pod(pod, {"metadata": {"resourceVersion": version, "labels": {
            "jobgate.io/state": "claimed", "jobgate.io/claimed-by": "replica-b"}}})
        ex.tracker.saw(seen)  # as if the watch were behind
        worker = await ex.acquire(py, new_invocation_id())
        assert not worker.warm and worker.id != pod
        assert labels(api, pod)["jobgate.io/claimed-by"] == "replica-b"


async def test_the_tracker_indexes_pods_by_profile_and_invocation_as_labels_change(
        settings: Settings, profiles: ProfileCatalog) -> None:
    api = FakeKubeApi()
    py, warm = profiles.get("py"), profiles.get("warm")
    first = add_worker(api, py, settings)
    tracker = PodTracker(WORKERS_SELECTOR)
    tracker.start(api)  # the first from the list, the rest from the watch
    try:
        await asyncio.wait_for(tracker.synced.wait(), 5)
        second, other = add_worker(api, py, settings), add_worker(api, warm, settings)

        def names(key: str, value: str) -> set[str]:
            return {p.name for p in tracker.labelled(key, value)}

        await until(lambda: len(tracker.pods) == 3)
        assert names(PROFILE, label_value("py")) == {first, second}
        assert names(PROFILE, label_value("warm")) == {other}
        # A claim labels the pod with its invocation: found by it, still in its pool.
        invocation = label_value(new_invocation_id())
        claimed = await api.patch_pod(second, {"metadata": {"labels": {
            INVOCATION: invocation}}})
        await until(lambda: bool(names(INVOCATION, invocation)))
        assert names(INVOCATION, invocation) == {second}
        assert tracker.labelled(INVOCATION, invocation)[0].resource_version == \
            claimed["metadata"]["resourceVersion"]
        await api.delete_job(tracker.pods[second].job or "")
        await until(lambda: second not in tracker.pods)
        assert names(INVOCATION, invocation) == set()
        assert names(PROFILE, label_value("py")) == {first}
        assert not tracker.labelled(PROFILE, "nothing")
    finally:
        await tracker.stop()


# -- the pool controller's decisions --------------------------------------------------------


@dataclass
class Controlled:
    api: FakeKubeApi
    tracker: PodTracker
    controller: PoolController
    jobs: WorkerJobs

    async def reconcile(self) -> None:
        """One round, once the watch has shown everything, and its creations done."""
        await until(lambda: set(self.tracker.pods) == set(self.api.pods) and all(
            self.tracker.pods[n].resource_version == p["metadata"]["resourceVersion"]
            for n, p in self.api.pods.items()))
        await self.controller.reconcile()
        await self.jobs.settle()


@contextlib.asynccontextmanager
async def controlled(api: FakeKubeApi, settings: Settings, profiles: ProfileCatalog, *,
                     live: set[str] | None = None) -> AsyncIterator[Controlled]:
    """The controller's parts over ``api``; its loop is not started: the test reconciles."""
    tracker = PodTracker(WORKERS_SELECTOR)
    pools = Pools(profiles, settings, tracker)
    tracker.listen(pools.observe)
    jobs = WorkerJobs(api, settings.kubernetes, "replica-a")
    membership = FakeMembership("replica-a", leads=True, live=live)
    tracker.start(api)
    await asyncio.wait_for(tracker.synced.wait(), 5)
    try:
        yield Controlled(api, tracker,
                         PoolController(api, tracker, pools, jobs, membership,
                                        settings.kubernetes), jobs)
    finally:
        await jobs.stop()
        await tracker.stop()


def idle_of(api: FakeKubeApi, profile: str) -> list[str]:
    return [n for n, p in api.pods.items()
            if p["metadata"]["labels"].get("jobgate.io/profile") == profile
            and p["metadata"]["labels"].get("jobgate.io/state") == "idle"]


async def test_reconcile_scales_up_to_min_idle_and_no_further(
        settings: Settings, profiles: ProfileCatalog) -> None:
    api = FakeKubeApi(start_pods=False)
    async with controlled(api, settings, profiles) as c:
        await c.reconcile()
        # 'warm': its min, 2. 'py' (min 0): nothing without demand.
        assert (len(idle_of(api, "warm")), len(idle_of(api, "py"))) == (2, 0)
        await c.reconcile()  # still starting: they count
        assert len(api.jobs) == 2
        for name in list(api.pods):
            api.make_ready(name)
        await c.reconcile()
        assert len(api.jobs) == 2
        # One is claimed: the pool makes up for it.
        claimed = idle_of(api, "warm")[0]
        await api.patch_pod(claimed, {"metadata": {"labels": {
            "jobgate.io/state": "claimed", "jobgate.io/claimed-by": "replica-a"}}})
        await c.reconcile()
        assert len(idle_of(api, "warm")) == 2 and len(api.jobs) == 3


async def test_surplus_idle_workers_are_retired_only_after_the_idle_grace(
        settings: Settings, profiles: ProfileCatalog) -> None:
    api = FakeKubeApi()
    py = profiles.get("py")  # max 1 idle
    ages = [SURPLUS_IDLE_AFTER_S - 10, SURPLUS_IDLE_AFTER_S - 5, 0.0]
    pods = [add_worker(api, py, settings, age_s=age) for age in ages]
    async with controlled(api, settings, profiles) as c:
        await c.reconcile()
        assert sorted(idle_of(api, "py")) == sorted(pods)  # a burst's fresh workers stay
        assert "patch pods" not in api.calls
        api.set_age(pods[0], SURPLUS_IDLE_AFTER_S + 20)
        api.set_age(pods[1], SURPLUS_IDLE_AFTER_S + 10)
        api.set_age(pods[2], SURPLUS_IDLE_AFTER_S + 5)
        await c.reconcile()
        # Two over max: the oldest two are retired (through the claim lock), the
        # youngest stays.
        assert idle_of(api, "py") == [pods[2]]
        assert set(api.pods) & set(pods) == {pods[2]}
        assert api.calls["patch pods"] == 2 and api.calls["delete jobs"] == 2


async def test_idle_workers_past_their_age_are_replaced(
        settings: Settings, profiles: ProfileCatalog) -> None:
    api = FakeKubeApi()
    warm = profiles.get("warm")  # min 2, max_idle_age_s 1800
    old, young = (add_worker(api, warm, settings, age_s=age) for age in (1801, 1700))
    async with controlled(api, settings, profiles) as c:
        await c.reconcile()
        assert old not in api.pods and young in api.pods
        await c.reconcile()
        idle = idle_of(api, "warm")
        assert len(idle) == 2 and young in idle  # the old one made anew


async def test_claims_of_gone_replicas_are_released(
        settings: Settings, profiles: ProfileCatalog) -> None:
    api = FakeKubeApi()
    py = profiles.get("py")
    orphan, alive, fresh = (add_worker(api, py, settings, age_s=age) for age in (60, 60, 1))
    for pod, by in ((orphan, "replica-gone"), (alive, "replica-b"), (fresh, "replica-gone")):
        await api.patch_pod(pod, {"metadata": {"labels": {
            "jobgate.io/state": "claimed", "jobgate.io/claimed-by": by}}})
    async with controlled(api, settings, profiles, live={"replica-b"}) as c:
        await c.reconcile()
        assert orphan not in api.pods  # its assignment never came: deleted
        assert alive in api.pods and fresh in api.pods  # live, or within the grace


# -- the Lease membership over the same seam ----------------------------------------------


async def test_one_of_two_replicas_leads_and_the_other_takes_over(settings: Settings) -> None:
    api = FakeKubeApi()
    a = LeaseMembership(settings.model_copy(update={"replica_id": "a"}), api=api)
    b = LeaseMembership(settings.model_copy(update={"replica_id": "b"}), api=api)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.leads or b.leads)
        await asyncio.sleep(0.1)
        assert a.leads != b.leads
        assert await a.live_replicas() == {"a", "b"} == await b.live_replicas()
        leader, other = (a, b) if a.leads else (b, a)
        await leader.stop()
        await until(lambda: other.leads, timeout_s=3)
        assert await other.live_replicas() == {other.identity}
    finally:
        await a.stop()
        await b.stop()


async def test_a_replica_whose_token_is_refused_still_stops(settings: Settings) -> None:
    """Seen on a Helm rollout: a terminating gateway pod's ServiceAccount token is refused
    (401), so deleting its own Lease fails; its stop must finish all the same (the Lease
    expires by itself)."""
    api = FakeKubeApi()
    replica = LeaseMembership(settings.model_copy(update={"replica_id": "a"}), api=api)
    await replica.start()
    await until(lambda: replica.leads)

    async def refused(name: str) -> None:
        # What the real client raises on a 401 (gateway/kube/api.py).
        raise ExecutorUnavailable("delete leases: the Kubernetes API answered 401: "
                                  "Unauthorized", retry_after=5)
    api.delete_lease = refused  # type: ignore[method-assign]
    await replica.stop()
    assert not replica.leads


@pytest.mark.parametrize(("status", "kind"), [
    (404, Missing), (409, Conflict), (410, Gone), (401, ExecutorUnavailable),
    (403, ExecutorUnavailable), (429, ExecutorUnavailable), (503, ExecutorUnavailable),
    (422, Refused), (400, Refused)])
def test_an_api_refusal_is_a_type_with_its_status_and_message(status: int,
                                                              kind: type) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    from gateway.kube.api import _translate
    error = _translate("create jobs", ApiException(status=status, reason="the server's word"))
    assert isinstance(error, kind)
    if kind in (ExecutorUnavailable, Refused):
        assert str(status) in str(error) and "the server's word" in str(error)
        assert "create jobs" in str(error)
