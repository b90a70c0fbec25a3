"""Each profile's pool as this replica sees it: its workers in the watch (idle and ready,
starting, busy), the calls waiting here for one, and the demand the watch shows across all
replicas (claims, creation-to-ready times), which sizes the pool."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator

from gateway.config.profiles import Profile, ProfileCatalog
from gateway.config.settings import Settings
from gateway.executors.kubernetes.pods import Pod
from gateway.executors.kubernetes.reasons import PodFailure
from gateway.executors.kubernetes.spec import PROFILE, WorkerState
from gateway.executors.kubernetes.tracker import Change, PodEvent, PodTracker
from gateway.executors.pool import DemandSizer
from gateway.kube.names import label_value
from gateway.models import PoolState


class ProfilePool:
    def __init__(self, profile: Profile, settings: Settings, tracker: PodTracker):
        self.profile = profile
        self.label = label_value(profile.name)
        self.queue_size = settings.queue_size
        self._pull_grace_s = settings.kubernetes.image_pull_grace_s
        self._unschedulable_after_s = settings.kubernetes.unschedulable_after_s
        self._tracker = tracker
        self.waiting = 0  # calls of this replica waiting for a worker
        self._ready = asyncio.Event()  # replaced after each wake-up (a broadcast)
        self.sizer = DemandSizer(profile.pool.min, profile.pool.max, initial_start_s=3.0)
        self.cold_inflight = 0
        self.creating = 0
        self.warm_starts = 0
        self.cold_starts = 0
        self.failures: dict[str, PodFailure] = {}  # why workers never started, by job

    def target_idle(self) -> int:
        return self.sizer.target()

    # -- its workers, as the watch shows them --------------------------------------------

    def pods(self) -> list[Pod]:
        return self._tracker.labelled(PROFILE, self.label)

    def idle(self) -> list[Pod]:
        """Unclaimed workers, ready or not."""
        return [p for p in self.pods() if p.state is WorkerState.IDLE]

    def idle_ready(self) -> list[Pod]:
        """Workers a call can claim now, in random order: replicas that race for the same
        pods spread out."""
        pods = [p for p in self.idle() if not p.deleting and p.ready]
        random.shuffle(pods)
        return pods

    def starting(self) -> list[Pod]:
        return [p for p in self.idle() if not p.ready and p.ended() is None]

    def never_starts(self, pod: Pod) -> PodFailure | None:
        return pod.never_starts(pull_grace_s=self._pull_grace_s,
                                unschedulable_after_s=self._unschedulable_after_s)

    # -- waiting for a worker ------------------------------------------------------------

    def observe(self, event: PodEvent) -> None:
        """Demand and start latency from the watch; wakes the waiters when a worker is
        ready to claim."""
        pod, previous = event.pod, event.previous
        if event.change is Change.DELETED:
            return
        if pod.state is WorkerState.IDLE and pod.ready:
            if previous is None or not previous.ready:
                self.sizer.started(max(0.0, time.time() - pod.created))
                self.failures.clear()  # the profile's workers start again
            self.wake()
        if pod.state is WorkerState.CLAIMED and previous is not None \
                and previous.state is WorkerState.IDLE:
            self.sizer.arrival()

    def wake(self) -> None:
        self._ready.set()
        self._ready = asyncio.Event()

    async def wait_ready(self, timeout_s: float) -> None:
        """Until a worker may have become ready (or ``timeout_s``). asyncio.timeout, not
        wait_for: on 3.11, wait_for loses a cancellation that meets a wake-up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()

    # -- observability -------------------------------------------------------------------

    def state(self, executor: str) -> PoolState:
        pool = self.profile.pool
        return PoolState(
            profile=self.profile.name, executor=executor, idle=len(self.idle_ready()),
            starting=len(self.starting()),
            busy=sum(1 for p in self.pods()
                     if p.state is WorkerState.CLAIMED and p.ended() is None),
            queued=self.waiting, min_idle=pool.min, max_idle=pool.max,
            target_idle=self.target_idle(), warm_starts=self.warm_starts,
            cold_starts=self.cold_starts)


class Pools:
    """Every profile's pool, by profile name and by the profile label on its pods."""

    def __init__(self, profiles: ProfileCatalog, settings: Settings, tracker: PodTracker):
        self._by_name = {p.name: ProfilePool(p, settings, tracker) for p in profiles.all()}
        self._by_label = {pool.label: pool for pool in self._by_name.values()}

    def __getitem__(self, profile: str) -> ProfilePool:
        return self._by_name[profile]

    def __iter__(self) -> Iterator[ProfilePool]:
        return iter(self._by_name.values())

    def observe(self, event: PodEvent) -> None:
        pool = self._by_label.get(event.pod.profile or "")
        if pool is not None:
            pool.observe(event)
