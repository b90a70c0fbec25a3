"""The pool controller, run by the membership's leader only: it keeps each profile between
its min and max idle workers, sized from the demand the watch shows (arrival rate x start
latency + headroom), creates Jobs at a limited rate, and retires idle workers past their
age, surplus idle workers, workers that will never start and claims of replicas that are
gone. It wakes on every watch event (coalesced), and at least once a second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.config.settings import KubernetesSettings
from gateway.executors.kubernetes.jobs import WorkerJobs
from gateway.executors.kubernetes.pods import Pod, state_patch
from gateway.executors.kubernetes.pools import Pools, ProfilePool
from gateway.executors.kubernetes.spec import WorkerState
from gateway.executors.kubernetes.tracker import PodEvent, PodTracker
from gateway.executors.pool import RateLimiter
from gateway.kube.base import Conflict, KubeApi, Missing
from gateway.kube.names import label_value
from gateway.membership.base import Membership
from gateway.supervise import forever

log = logging.getLogger("jobgate.k8s")
# Claims by a replica that is gone, on a worker that still answers (never got its
# assignment), are released after this long.
ORPHAN_CLAIM_GRACE_S = 15.0
# Surplus idle workers are retired only once they have been idle this long: a burst's
# fresh workers are wanted by callers on other replicas that this one cannot see.
SURPLUS_IDLE_AFTER_S = 30.0


class PoolController:
    def __init__(self, api: KubeApi, tracker: PodTracker, pools: Pools, jobs: WorkerJobs,
                 membership: Membership, settings: KubernetesSettings):
        self.api = api
        self.tracker = tracker
        self.pools = pools
        self.jobs = jobs
        self.membership = membership
        rate = settings.create_rate
        self._limiter = RateLimiter(rate, max(1, int(rate)))
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="k8s:pool-controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def observe(self, event: PodEvent) -> None:
        self._kick.set()

    async def _loop(self) -> None:
        await forever("pool reconcile", self._reconcile_if_leading, self._pause, log)

    async def _reconcile_if_leading(self) -> None:
        if self.membership.leads and self.tracker.synced.is_set():
            await self.reconcile()

    async def _pause(self) -> None:
        """Until a watch event kicks (at most a second), then a moment more: a burst of
        events makes one reconcile."""
        self._kick.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._kick.wait()
        await asyncio.sleep(0.05)

    async def reconcile(self) -> None:
        """One round over every pool, then the orphaned claims."""
        now = time.time()
        for pool in self.pools:
            await self._reconcile_pool(pool, now)
        await self._release_orphaned_claims(now)

    async def _reconcile_pool(self, pool: ProfilePool, now: float) -> None:
        idle = pool.idle_ready()
        starting = pool.starting()
        # Workers that will never start are deleted; their failure is kept for the call
        # that waits on them.
        for pod in pool.idle():
            failure = pool.never_starts(pod)
            if failure is not None and pod.job and not pod.deleting:
                pool.failures[pod.job] = failure
                await self.api.delete_job(pod.job)
                pool.wake()  # the calls waiting on this profile learn why
        for pod in idle:
            if pod.age_s(now) > pool.profile.pool.max_idle_age_s:
                await self._retire(pod)
        target = pool.target_idle()
        surplus = len(idle) - max(target, pool.profile.pool.max)
        settled = [p for p in sorted(idle, key=lambda p: p.created)
                   if p.age_s(now) > SURPLUS_IDLE_AFTER_S]
        for pod in settled[:max(0, surplus)]:
            await self._retire(pod)
        need = target - len(idle) - len(starting) - pool.creating
        if pool.failures:
            need = min(need, 1)  # a profile that fails to start is retried slowly
        for _ in range(max(0, need)):
            if not self._limiter.try_take():
                break
            self.jobs.create_soon(pool)

    async def _retire(self, pod: Pod) -> None:
        """Delete an idle worker, taking it through the same lock as a claim: a pod some
        replica claimed a moment ago (our cache may not show it yet) is left alone."""
        try:
            await self.api.patch_pod(pod.name, state_patch(pod, WorkerState.RETIRING))
        except (Conflict, Missing):
            return
        if pod.job:
            await self.api.delete_job(pod.job)

    async def _release_orphaned_claims(self, now: float) -> None:
        """Claims of replicas that are gone, on workers still ready (the assignment never
        arrived), are deleted. Workers that did get their assignment finish on their own."""
        claimed = [p for p in self.tracker.pods.values()
                   if p.state is WorkerState.CLAIMED and p.ready
                   and p.age_s(now) > ORPHAN_CLAIM_GRACE_S]
        if not claimed:
            return
        live = {label_value(r) for r in await self.membership.live_replicas()}
        for pod in claimed:
            if pod.claimed_by not in live and pod.job:
                log.info("releasing worker %s claimed by a replica that is gone", pod.name)
                await self.api.delete_job(pod.job)
