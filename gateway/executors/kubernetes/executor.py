"""The Kubernetes executor: every invocation runs in a single-use worker Job, taken warm
from a pool shared by all gateway replicas. This class only puts the parts together, each
one job in its own module:

- ``tracker``: the worker pods, by list+watch (never polled), seen as ``pods.Pod``;
- ``pools``: each profile's workers, waiters and demand, as this replica sees them;
- ``claims`` and ``runs``: what one call does (admit, claim warm or cold, run, cancel,
  release), with ``endings`` telling a run that its pod ended;
- ``controller``: the pool controller, which only the membership's leader runs;
- ``recovery``: adopting a gone replica's worker, ending an earlier attempt's;
- ``jobs``: the worker Jobs created and deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from gateway.config.profiles import Profile, ProfileCatalog
from gateway.config.settings import Settings
from gateway.errors import ExecutorUnavailable
from gateway.executors.base import Executor, WorkerHandle
from gateway.executors.kubernetes.claims import Claims
from gateway.executors.kubernetes.controller import PoolController
from gateway.executors.kubernetes.endings import PodEndings
from gateway.executors.kubernetes.jobs import WorkerJobs, owner_reference
from gateway.executors.kubernetes.pools import Pools
from gateway.executors.kubernetes.recovery import Recovery
from gateway.executors.kubernetes.runs import Runs
from gateway.executors.kubernetes.spec import WORKERS_SELECTOR, network_policies
from gateway.executors.kubernetes.tracker import PodTracker
from gateway.executors.live_output import LiveOutput
from gateway.executors.runner_client import RunnerClient
from gateway.kube.api import connect
from gateway.kube.base import KubeApi
from gateway.membership.base import Membership
from gateway.models import Assignment, PoolState, WorkerReport

log = logging.getLogger("jobgate.k8s")
SYNC_TIMEOUT_S = 30


@dataclass(frozen=True)
class _Parts:
    """What needs the API: made at start."""

    api: KubeApi
    jobs: WorkerJobs
    claims: Claims
    runs: Runs
    controller: PoolController
    recovery: Recovery


class KubernetesExecutor(Executor):
    name = "kubernetes"
    reads_workspace = False

    def __init__(self, settings: Settings, profiles: ProfileCatalog, membership: Membership,
                 *, api: KubeApi | None = None):
        """``api``: the Kubernetes API to use (a fake, in tests); by default a client
        configured from the settings at start, and closed at stop."""
        self.settings = settings
        self.membership = membership
        self._given_api = api
        self.tracker = PodTracker(WORKERS_SELECTOR)
        self._pools = Pools(profiles, settings, self.tracker)
        self._endings = PodEndings()
        self._client = RunnerClient()
        self._parts: _Parts | None = None

    @property
    def _started(self) -> _Parts:
        if self._parts is None:
            raise ExecutorUnavailable("the Kubernetes executor has not started",
                                      retry_after=5)
        return self._parts

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        settings, identity = self.settings.kubernetes, self.membership.identity
        api = self._given_api or await connect(settings.kubeconfig, settings.namespace)
        owner = (await owner_reference(api, settings.owner_configmap)
                 if settings.owner_configmap else None)
        if settings.manage_network_policy:
            for policy in network_policies(settings):
                if owner is not None:
                    policy["metadata"]["ownerReferences"] = [owner]
                await api.apply_network_policy(policy)
        jobs = WorkerJobs(api, settings, identity, owner)
        parts = _Parts(
            api=api, jobs=jobs,
            claims=Claims(api, self.tracker, self._pools, jobs, settings, identity=identity),
            runs=Runs(self._client, self._endings, jobs),
            controller=PoolController(api, self.tracker, self._pools, jobs, self.membership,
                                      settings),
            recovery=Recovery(self.tracker, self._endings, jobs))
        self._parts = parts
        for listener in (self._pools.observe, self._endings.observe,
                         parts.controller.observe):
            self.tracker.listen(listener)
        self.tracker.start(api)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SYNC_TIMEOUT_S):
                await self.tracker.synced.wait()
        parts.controller.start()
        log.info("kubernetes executor: namespace %s, replica %s", api.namespace, identity)

    async def stop(self) -> None:
        parts = self._parts
        if parts is not None:
            await parts.controller.stop()
            await parts.jobs.stop()
        await self.tracker.stop()
        # Leave the pool to the others (the membership hands the lead over): delete nothing.
        await self._client.close()
        if parts is not None and self._given_api is None:
            await parts.api.close()

    # -- one call -----------------------------------------------------------------------

    def check_room(self, profile: Profile) -> None:
        self._started.claims.check_room(profile)

    async def acquire(self, profile: Profile, invocation_id: str) -> WorkerHandle:
        return await self._started.claims.acquire(profile, invocation_id)

    async def run(self, worker: WorkerHandle, assignment: Assignment,
                  output: LiveOutput | None = None) -> WorkerReport:
        """Send the assignment; meanwhile watch the pod, so a pod that dies, is evicted or
        OOM-killed ends the wait at once with the reason its status gives."""
        return await self._started.runs.run(worker, assignment, output)

    async def cancel(self, worker: WorkerHandle) -> None:
        await self._started.runs.cancel(worker)

    async def release(self, worker: WorkerHandle, report: WorkerReport | None) -> None:
        await self._started.runs.release(worker, report)

    # -- recovery -----------------------------------------------------------------------

    async def adopt(self, invocation_id: str, timeout_s: float) -> bool | None:
        return await self._started.recovery.adopt(invocation_id, timeout_s)

    async def end_attempt(self, invocation_id: str) -> bool:
        return await self._started.recovery.end_attempt(invocation_id)

    # -- observability ------------------------------------------------------------------

    def pools(self) -> list[PoolState]:
        return [pool.state(self.name) for pool in self._pools]

    async def check(self) -> None:
        if not self.tracker.synced.is_set() or not self.tracker.healthy:
            raise ExecutorUnavailable("the Kubernetes API is not reachable (pod watch down)",
                                      retry_after=5)

    @property
    def api_calls(self) -> dict[str, int]:
        return dict(self._parts.api.calls) if self._parts else {}
