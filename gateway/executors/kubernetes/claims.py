"""Claiming a worker for one call: admission (room in the profile's queue), a warm claim,
or a cold start, which is the same claim of whichever worker becomes ready first.

The API server is the lock: an idle, ready worker pod is patched to ``claimed`` with its
``metadata.resourceVersion`` as a precondition; a 409 means another replica won, and the
next candidate is tried. No database, no leader on the claim path."""

from __future__ import annotations

import math
import time

from gateway.config.profiles import Profile
from gateway.config.settings import KubernetesSettings
from gateway.errors import QueueFull, WorkerStartFailed
from gateway.executors.base import WorkerHandle
from gateway.executors.kubernetes.jobs import WorkerJobs
from gateway.executors.kubernetes.pods import Pod, claim_patch
from gateway.executors.kubernetes.pools import Pools, ProfilePool
from gateway.executors.kubernetes.reasons import PodFailure
from gateway.executors.kubernetes.tracker import PodTracker
from gateway.kube.base import Conflict, KubeApi, Missing
from gateway.kube.names import label_value


class Claims:
    def __init__(self, api: KubeApi, tracker: PodTracker, pools: Pools, jobs: WorkerJobs,
                 settings: KubernetesSettings, *, identity: str):
        self.api = api
        self.tracker = tracker
        self.pools = pools
        self.jobs = jobs
        self.settings = settings
        self.replica_label = label_value(identity)

    def check_room(self, profile: Profile) -> None:
        pool = self.pools[profile.name]
        if pool.waiting >= pool.queue_size and not pool.idle_ready():
            raise QueueFull(f"the queue of profile {profile.name!r} is full",
                            {"profile": profile.name, "queue_size": pool.queue_size},
                            retry_after=max(1, math.ceil(pool.sizer.start_latency.value)))

    async def acquire(self, profile: Profile, invocation_id: str) -> WorkerHandle:
        pool = self.pools[profile.name]
        hint = label_value(invocation_id)
        worker = await self._try_claim(pool, hint)
        if worker is not None:
            worker.warm = True
            pool.warm_starts += 1
            return worker
        self.check_room(profile)
        pool.waiting += 1
        try:
            worker = await self._wait_cold(pool, hint)
        finally:
            pool.waiting -= 1
        worker.warm = False
        pool.cold_starts += 1
        return worker

    async def _try_claim(self, pool: ProfilePool, invocation_label: str) -> WorkerHandle | None:
        for pod in pool.idle_ready():
            try:
                raw = await self.api.patch_pod(
                    pod.name, claim_patch(pod, self.replica_label, invocation_label))
            except (Conflict, Missing):
                continue  # another replica won this one, or it just went away
            claimed = Pod(raw)
            self.tracker.saw(claimed)
            return WorkerHandle(id=claimed.name, profile=pool.profile.name,
                                address=f"http://{claimed.ip}:{self.settings.runner_port}",
                                token=claimed.token or "", ready_at=time.monotonic(),
                                start_latency_s=pool.sizer.start_latency.value,
                                meta={"job": claimed.job or ""})
        return None

    async def _wait_cold(self, pool: ProfilePool, invocation_label: str) -> WorkerHandle:
        """Start a worker for this call (capped) and claim the first that becomes ready."""
        job: str | None = None
        if pool.cold_inflight < self.settings.cold_start_concurrency \
                and len(pool.starting()) < pool.waiting:
            pool.cold_inflight += 1
            try:
                job = await self.jobs.create(pool)
            finally:
                pool.cold_inflight -= 1
        while True:
            await pool.wait_ready(1.0)
            worker = await self._try_claim(pool, invocation_label)
            if worker is not None:
                return worker
            if job is not None:
                # The pool controller's verdict first: it deletes the Job of a worker that
                # will never start, and the pod, deleted, would then read as WorkerLost.
                failure = pool.failures.pop(job, None) or self._start_failure_of(pool, job)
                if failure is not None:
                    self.jobs.delete_soon(job)
                    raise WorkerStartFailed(failure.message, reason=failure.reason)
            elif pool.failures:
                # No worker of this call's own, and the profile's workers fail to start
                # (its image is missing, it crashes): say why instead of waiting it out.
                failure = list(pool.failures.values())[-1]
                raise WorkerStartFailed(failure.message, reason=failure.reason)

    def _start_failure_of(self, pool: ProfilePool, job: str) -> PodFailure | None:
        """Why the worker this call started will never start. Only while it is unclaimed:
        any waiting call may take any ready worker, so once another call claimed it, what
        happens to it is that call's business."""
        for pod in pool.idle():
            if pod.job == job:
                return pool.never_starts(pod)
        return None
