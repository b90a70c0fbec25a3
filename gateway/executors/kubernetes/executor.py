"""The Kubernetes executor: every invocation runs in a single-use worker Job, taken warm
from a pool shared by all gateway replicas.

Claiming uses the API server as the lock: an idle, ready worker pod is patched to
``jobgate.io/state=claimed`` with its ``metadata.resourceVersion`` as a precondition; a 409
means another replica won, and the next candidate is tried. No database, no leader on the
claim path. A cold start is the same path: a worker Job is created on demand, and the
waiting call claims whichever worker becomes ready first.

One replica, the membership's leader (``gateway.membership.leases``), maintains the
pools: it keeps each profile between its min and max idle workers, sized from the claims
it sees in the watch (arrival rate x start latency + headroom), creates Jobs at a limited
rate, and retires idle workers past their age and orphaned claims. Pods are tracked by
list+watch, never polled. After a replica dies, the executor only adopts its workers
(waits for the one still running an invocation) and ends an earlier attempt's worker
before the invocation runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from typing import Any

from gateway.config.profiles import Profile, ProfileCatalog
from gateway.config.settings import Settings
from gateway.errors import ExecutorUnavailable, QueueFull, WorkerLost, WorkerStartFailed
from gateway.executors.base import Executor, Worker
from gateway.executors.kubernetes.reasons import (
    PodFailure,
    is_ready,
    no_fault_of_the_code,
    start_failure,
    terminal_failure,
)
from gateway.executors.kubernetes.spec import (
    CLAIMED_BY,
    INVOCATION,
    PROFILE,
    STATE,
    TOKEN_ENV,
    WORKERS_SELECTOR,
    network_policies,
    worker_job,
)
from gateway.executors.pool import DemandSizer, RateLimiter
from gateway.executors.runner_client import RunnerClient
from gateway.ids import new_token
from gateway.kube.api import connect
from gateway.kube.base import Conflict, KubeApi, Missing
from gateway.kube.names import dns_name, label_value
from gateway.kube.objects import Obj, created_at
from gateway.membership.base import Membership
from gateway.models import Assignment, PoolState, Reason, WorkerReport

log = logging.getLogger("jobgate.k8s")
# How a watched worker ended without a report: reason, message, and whether it was no
# fault of the code (a retry may follow).
Failure = tuple[Reason, str, bool]
# Claims by a replica that is gone, on a worker that still answers (never got its
# assignment), are released after this long.
ORPHAN_CLAIM_GRACE_S = 15.0
# Surplus idle workers are retired only once they have been idle this long: a burst's
# fresh workers are wanted by callers on other replicas that this one cannot see.
SURPLUS_IDLE_AFTER_S = 30.0
LOST_POD_SETTLE_S = 5.0
# How long an earlier attempt's worker pod may take to be gone once its Job is deleted.
END_ATTEMPT_TIMEOUT_S = 120.0


def _name(pod: Obj) -> str:
    return str(pod["metadata"]["name"])


def _labels(pod: Obj) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def _job_of(pod: Obj) -> str | None:
    return _labels(pod).get("job-name") or _labels(pod).get("batch.kubernetes.io/job-name")


def _created(pod: Obj) -> float:
    created = created_at(pod)
    return time.time() if created is None else created


def _token(pod: Obj) -> str | None:
    for env in pod["spec"]["containers"][0].get("env") or []:
        if env.get("name") == TOKEN_ENV:
            return str(env.get("value"))
    return None


class ProfilePool:
    """One profile's view: local waiters, demand seen cluster-wide, and start latency."""

    def __init__(self, profile: Profile, queue_size: int):
        self.profile = profile
        self.label = label_value(profile.name)
        self.queue_size = queue_size
        self.waiting = 0
        self.ready = asyncio.Condition()
        # Demand as the watch shows it: claims by every replica, creation-to-ready times.
        self.sizer = DemandSizer(profile.pool.min, profile.pool.max, initial_start_s=3.0)
        self.cold_inflight = 0
        self.creating = 0
        self.warm_starts = 0
        self.cold_starts = 0
        self.failures: dict[str, PodFailure] = {}  # by job

    def target_idle(self) -> int:
        return self.sizer.target()


class KubernetesExecutor(Executor):
    name = "kubernetes"
    reads_workspace = False

    def __init__(self, settings: Settings, profiles: ProfileCatalog, membership: Membership):
        self.settings = settings
        self.profiles = profiles
        self.membership = membership
        self.identity = membership.identity
        self.api: KubeApi | None = None
        self._pools = {p.name: ProfilePool(p, settings.queue_size) for p in profiles.all()}
        self._by_label = {pool.label: pool for pool in self._pools.values()}
        self._client = RunnerClient()
        self._limiter = RateLimiter(settings.k8s_create_rate, max(1, int(settings.k8s_create_rate)))
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._watchers: dict[str, asyncio.Future[Failure]] = {}
        self._cancelled: set[str] = set()  # workers this replica stopped (a cancel)
        self._kick = asyncio.Event()
        self.tracker: Any = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        from gateway.executors.kubernetes.tracker import PodTracker

        self.api = await connect(self.settings.k8s_kubeconfig, self.settings.k8s_namespace)
        if self.settings.k8s_manage_network_policy:
            for policy in network_policies(self.settings):
                await self.api.apply_network_policy(policy)
        self.tracker = PodTracker(self.api, WORKERS_SELECTOR, self._on_pod)
        self.tracker.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.tracker.synced.wait(), 30)
        self._tasks.append(asyncio.create_task(self._control(), name="k8s:pool-controller"))
        log.info("kubernetes executor: namespace %s, replica %s", self.api.namespace,
                 self.identity)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.tracker is not None:
            await self.tracker.stop()
        # Leave the pool to the others (the membership hands the lead over): delete nothing.
        await self._client.close()
        if self.api is not None:
            await self.api.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the watch ----------------------------------------------------------------------

    def _on_pod(self, kind: str, pod: Obj, previous: Obj | None) -> None:
        labels = _labels(pod)
        pool = self._by_label.get(labels.get(PROFILE, ""))
        name = _name(pod)
        if pool is not None and kind != "DELETED":
            if labels.get(STATE) == "idle" and is_ready(pod):
                if previous is None or not is_ready(previous):
                    pool.sizer.started(max(0.0, time.time() - _created(pod)))
                self._spawn(self._notify(pool))
            if labels.get(STATE) == "claimed" and previous is not None \
                    and _labels(previous).get(STATE) == "idle":
                pool.sizer.arrival()
        watcher = self._watchers.get(name)
        if watcher is not None and not watcher.done():
            if kind == "DELETED":
                watcher.set_result((Reason.WorkerLost, "the worker pod was deleted", True))
            elif (ended := terminal_failure(pod)) is not None:
                watcher.set_result((ended.reason, ended.message, no_fault_of_the_code(pod)))
        self._kick.set()

    async def _notify(self, pool: ProfilePool) -> None:
        async with pool.ready:
            pool.ready.notify_all()

    # -- claiming -----------------------------------------------------------------------

    def _idle_ready(self, pool: ProfilePool) -> list[Obj]:
        pods = [p for p in self.tracker.pods.values()
                if _labels(p).get(PROFILE) == pool.label and _labels(p).get(STATE) == "idle"
                and not p["metadata"].get("deletionTimestamp") and is_ready(p)]
        random.shuffle(pods)  # replicas that race for the same pods spread out
        return pods

    def _starting(self, pool: ProfilePool) -> list[Obj]:
        return [p for p in self.tracker.pods.values()
                if _labels(p).get(PROFILE) == pool.label and _labels(p).get(STATE) == "idle"
                and not is_ready(p) and terminal_failure(p) is None]

    async def _try_claim(self, pool: ProfilePool, invocation_hint: str) -> Worker | None:
        assert self.api is not None
        for pod in self._idle_ready(pool):
            name = _name(pod)
            patch = {"metadata": {
                "resourceVersion": pod["metadata"]["resourceVersion"],
                "labels": {STATE: "claimed", CLAIMED_BY: label_value(self.identity),
                           INVOCATION: invocation_hint}}}
            try:
                claimed = await self.api.patch_pod(name, patch)
            except (Conflict, Missing):
                continue  # another replica won this one, or it just went away
            self.tracker.pods[name] = claimed
            token = _token(claimed) or ""
            ip = claimed["status"]["podIP"]
            return Worker(id=name, profile=pool.profile.name,
                          address=f"http://{ip}:{self.settings.k8s_runner_port}", token=token,
                          ready_at=time.monotonic(),
                          start_latency_s=pool.sizer.start_latency.value,
                          meta={"job": _job_of(claimed) or ""})
        return None

    def check_room(self, profile: Profile) -> None:
        pool = self._pools[profile.name]
        if pool.waiting >= pool.queue_size and not self._idle_ready(pool):
            raise QueueFull(f"the queue of profile {profile.name!r} is full",
                            {"profile": profile.name, "queue_size": pool.queue_size},
                            retry_after=max(1, math.ceil(pool.sizer.start_latency.value)))

    async def acquire(self, profile: Profile, invocation_id: str) -> Worker:
        pool = self._pools[profile.name]
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

    async def _wait_cold(self, pool: ProfilePool, hint: str) -> Worker:
        """Start a worker for this call (capped) and claim the first that becomes ready."""
        job: str | None = None
        if pool.cold_inflight < self.settings.k8s_cold_start_concurrency \
                and len(self._starting(pool)) < pool.waiting:
            pool.cold_inflight += 1
            try:
                job = await self._create_worker(pool)
            finally:
                pool.cold_inflight -= 1
        while True:
            async with pool.ready:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pool.ready.wait(), 1.0)
            worker = await self._try_claim(pool, hint)
            if worker is not None:
                return worker
            if job is not None:
                failure = self._start_failure_of(job) or pool.failures.pop(job, None)
                if failure is not None:
                    self._spawn(self._delete_job(job))
                    raise WorkerStartFailed(failure.message, reason=failure.reason)

    def _start_failure_of(self, job: str) -> PodFailure | None:
        """Why the worker this call started will never start. Only while it is unclaimed:
        any waiting call may take any ready worker, so once another call claimed it, what
        happens to it is that call's business."""
        for pod in self.tracker.pods.values():
            if _job_of(pod) == job and _labels(pod).get(STATE) == "idle":
                return start_failure(
                    pod, pull_grace_s=self.settings.k8s_image_pull_grace_s,
                    unschedulable_after_s=self.settings.k8s_unschedulable_after_s)
        return None

    async def _create_worker(self, pool: ProfilePool) -> str | None:
        assert self.api is not None
        name = f"jg-{dns_name(pool.profile.name)}-{new_token(5)}"
        manifest = worker_job(pool.profile, self.settings, name=name, token=new_token(),
                              created_by=self.identity)
        pool.creating += 1
        try:
            await self.api.create_job(manifest)
        except Exception as e:  # noqa: BLE001 - the controller tries again; a waiter waits on
            log.warning("creating worker %s failed: %r", name, e)
            return None
        finally:
            pool.creating -= 1
        return name

    async def _delete_job(self, job: str) -> None:
        assert self.api is not None
        await self.api.delete_job(job)

    # -- running ------------------------------------------------------------------------

    async def run(self, worker: Worker, assignment: Assignment) -> WorkerReport:
        """Send the assignment; meanwhile watch the pod, so a pod that dies, is evicted or
        OOM-killed ends the wait at once with the reason its status gives."""
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[Failure] = loop.create_future()
        self._watchers[worker.id] = gone
        call = asyncio.create_task(self._client.run(worker, assignment))
        try:
            report = await self._report(call, gone)
            if report.reason == Reason.Cancelled and worker.id not in self._cancelled:
                # Stopped (SIGTERM) without a cancel of ours: its pod is being deleted by
                # a drain, an eviction, an operator or its node's loss, not by its code.
                with contextlib.suppress(TimeoutError):
                    reason, message, no_fault = await asyncio.wait_for(
                        asyncio.shield(gone), LOST_POD_SETTLE_S)
                    if no_fault:
                        raise WorkerLost(message, reason=reason, no_fault_of_the_code=True)
            return report
        finally:
            self._watchers.pop(worker.id, None)
            if not call.done():
                call.cancel()

    async def _report(self, call: asyncio.Task[WorkerReport],
                      gone: asyncio.Future[Failure]) -> WorkerReport:
        waiting: set[asyncio.Future[Any]] = {call, gone}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if call in done:
            try:
                return call.result()
            except WorkerLost as e:
                # The connection broke: the pod's status says why, once it is seen.
                with contextlib.suppress(TimeoutError):
                    reason, message, no_fault = await asyncio.wait_for(
                        asyncio.shield(gone), LOST_POD_SETTLE_S)
                    raise WorkerLost(message, reason=reason,
                                     no_fault_of_the_code=no_fault) from e
                raise
        # The pod ended first. A worker that reports exits right after: its answer may
        # still be on the way, so give it a moment before calling the worker lost.
        with contextlib.suppress(TimeoutError, WorkerLost):
            return await asyncio.wait_for(asyncio.shield(call), LOST_POD_SETTLE_S)
        call.cancel()
        reason, message, no_fault = gone.result()
        raise WorkerLost(message, reason=reason, no_fault_of_the_code=no_fault)

    async def cancel(self, worker: Worker) -> None:
        job = worker.meta.get("job")
        if job:
            self._cancelled.add(worker.id)
            await self._delete_job(job)

    async def release(self, worker: Worker, report: WorkerReport | None) -> None:
        """A worker that reported exits by itself and its Job is removed by its TTL: no API
        write. A lost one is deleted, so nothing of it lingers."""
        self._cancelled.discard(worker.id)
        job = worker.meta.get("job")
        if report is None and job:
            self._spawn(self._delete_job(job))

    # -- the pool controller (leader only) ------------------------------------------------

    async def _control(self) -> None:
        while True:
            try:
                if self.membership.leads and self.tracker.synced.is_set():
                    await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:  # the controller outlives any one failure
                log.exception("pool reconcile failed")
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), 1.0)
            await asyncio.sleep(0.05)  # coalesce bursts of watch events

    async def _reconcile(self) -> None:
        assert self.api is not None
        now = time.time()
        for pool in self._pools.values():
            idle = self._idle_ready(pool)
            starting = self._starting(pool)
            # Workers that will never start are deleted; their failure is kept for the
            # call that waits on them.
            for pod in [p for p in self.tracker.pods.values()
                        if _labels(p).get(PROFILE) == pool.label
                        and _labels(p).get(STATE) == "idle"]:
                failure = start_failure(
                    pod, pull_grace_s=self.settings.k8s_image_pull_grace_s,
                    unschedulable_after_s=self.settings.k8s_unschedulable_after_s)
                job = _job_of(pod)
                if failure is not None and job and not pod["metadata"].get("deletionTimestamp"):
                    pool.failures[job] = failure
                    await self.api.delete_job(job)
            max_age = pool.profile.pool.max_idle_age_s
            for pod in idle:
                if now - _created(pod) > max_age:
                    await self._retire(pod)
            target = pool.target_idle()
            surplus = len(idle) - max(target, pool.profile.pool.max)
            settled = [p for p in sorted(idle, key=_created)
                       if now - _created(p) > SURPLUS_IDLE_AFTER_S]
            for pod in settled[:max(0, surplus)]:
                await self._retire(pod)
            need = target - len(idle) - len(starting) - pool.creating
            if pool.failures:
                need = min(need, 1)  # a profile that fails to start is retried slowly
            for _ in range(max(0, need)):
                if not self._limiter.try_take():
                    break
                self._spawn(self._create_worker(pool))
        await self._release_orphaned_claims(now)

    async def _retire(self, pod: Obj) -> None:
        """Delete an idle worker, taking it through the same lock as a claim: a pod some
        replica claimed a moment ago (our cache may not show it yet) is left alone."""
        assert self.api is not None
        patch = {"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"],
                              "labels": {STATE: "retiring"}}}
        try:
            await self.api.patch_pod(_name(pod), patch)
        except (Conflict, Missing):
            return
        if job := _job_of(pod):
            await self.api.delete_job(job)

    async def _release_orphaned_claims(self, now: float) -> None:
        """Claims of replicas that are gone, on workers still ready (the assignment never
        arrived), are deleted. Workers that did get their assignment finish on their own."""
        assert self.api is not None
        claimed = [p for p in self.tracker.pods.values()
                   if _labels(p).get(STATE) == "claimed" and is_ready(p)
                   and now - _created(p) > ORPHAN_CLAIM_GRACE_S]
        if not claimed:
            return
        live = {label_value(r) for r in await self.membership.live_replicas()}
        for pod in claimed:
            if _labels(pod).get(CLAIMED_BY) not in live and (job := _job_of(pod)):
                log.info("releasing worker %s claimed by a replica that is gone", _name(pod))
                await self.api.delete_job(job)

    # -- recovery: adopting the workers of a replica that is gone ------------------------

    async def adopt(self, invocation_id: str, timeout_s: float) -> bool | None:
        label = label_value(invocation_id)
        pods = [p for p in self.tracker.pods.values()
                if _labels(p).get(INVOCATION) == label and terminal_failure(p) is None]
        if not pods:
            return None
        name = _name(pods[0])
        gone: asyncio.Future[Failure] = asyncio.get_running_loop().create_future()
        self._watchers[name] = gone
        try:
            reason, message, no_fault = await asyncio.wait_for(gone, timeout_s)
        except TimeoutError:
            if job := _job_of(pods[0]):
                await self._delete_job(job)
            raise WorkerLost(f"the worker ran {timeout_s:g}s without a report, and was "
                             "ended", reason=Reason.Timeout) from None
        finally:
            self._watchers.pop(name, None)
        if reason == Reason.WorkerLost and not no_fault:
            return True  # it exited: the report it stored, if any, is the outcome
        raise WorkerLost(message, reason=reason, no_fault_of_the_code=no_fault)

    async def end_attempt(self, invocation_id: str) -> bool:
        """The earlier attempt's worker pods are deleted (their Jobs), and waited for until
        none of them runs: gone from the watch, or ended (Succeeded/Failed)."""
        label = label_value(invocation_id)
        deadline = time.monotonic() + END_ATTEMPT_TIMEOUT_S
        deleted: set[str] = set()
        while True:
            running = [p for p in self.tracker.pods.values()
                       if _labels(p).get(INVOCATION) == label
                       and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
            if not running:
                return True
            for pod in running:
                job = _job_of(pod)
                if job and job not in deleted:
                    deleted.add(job)
                    await self._delete_job(job)
            if time.monotonic() > deadline:
                log.warning("invocation %s: the worker of its earlier attempt is still "
                            "there after %.0fs", invocation_id, END_ATTEMPT_TIMEOUT_S)
                return False
            await asyncio.sleep(0.5)

    # -- state ----------------------------------------------------------------------------

    def pools(self) -> list[PoolState]:
        out = []
        for pool in self._pools.values():
            pods = [p for p in (self.tracker.pods.values() if self.tracker else [])
                    if _labels(p).get(PROFILE) == pool.label]
            out.append(PoolState(
                profile=pool.profile.name, executor=self.name,
                idle=len(self._idle_ready(pool)) if self.tracker else 0,
                starting=len(self._starting(pool)) if self.tracker else 0,
                busy=sum(1 for p in pods if _labels(p).get(STATE) == "claimed"
                         and terminal_failure(p) is None),
                queued=pool.waiting, min_idle=pool.profile.pool.min,
                max_idle=pool.profile.pool.max, target_idle=pool.target_idle(),
                warm_starts=pool.warm_starts, cold_starts=pool.cold_starts))
        return out

    async def check(self) -> None:
        if self.tracker is None or not self.tracker.synced.is_set() or not self.tracker.healthy:
            raise ExecutorUnavailable("the Kubernetes API is not reachable (pod watch down)",
                                      retry_after=5)

    @property
    def api_calls(self) -> dict[str, int]:
        return dict(self.api.calls) if self.api else {}
