"""The warm pool of one profile, shared by every executor.

Idle workers wait here, started ahead of need. A call takes an idle worker at once (a
warm start) or waits in a bounded queue for the next one that becomes ready (a cold
start: the same code path, the worker is simply younger). A controller task keeps the
idle count at a target sized from recent demand:

    target_idle = clamp(ceil(arrival_rate * start_latency) + headroom, min, max)

and spawns at a limited rate, so a burst never stampedes the machine or the API server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from gateway.errors import QueueFull, WorkerStartFailed
from gateway.executors.base import WorkerHandle
from gateway.models import PoolState
from gateway.supervise import TaskSet

log = logging.getLogger("jobgate.pool")

SpawnFn = Callable[[], Awaitable[WorkerHandle]]
DiscardFn = Callable[[WorkerHandle], Awaitable[None]]
AliveFn = Callable[[WorkerHandle], bool]


class RateLimiter:
    """Token bucket: ``rate`` tokens per second, up to ``burst``."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def try_take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_time(self) -> float:
        return max(0.0, (1 - self.tokens) / self.rate)


class Ewma:
    def __init__(self, alpha: float, initial: float):
        self.alpha = alpha
        self.value = initial

    def add(self, sample: float) -> None:
        self.value = self.alpha * sample + (1 - self.alpha) * self.value


class DemandSizer:
    """How many idle workers a profile should keep, from recent demand: the arrival rate
    over a window times the measured start latency, plus headroom, within [min, max].
    One formula for every executor: the local pool and the Kubernetes pool leader."""

    def __init__(self, min_idle: int, max_idle: int, *, initial_start_s: float,
                 headroom: int = 1, window_s: float = 10.0):
        self.min_idle = min_idle
        self.max_idle = max(max_idle, min_idle)
        self.headroom = headroom
        self.window_s = window_s
        self.start_latency = Ewma(0.3, initial_start_s)
        self._arrivals: collections.deque[float] = collections.deque()

    def arrival(self) -> None:
        self._arrivals.append(time.monotonic())

    def started(self, seconds: float) -> None:
        self.start_latency.add(seconds)

    def rate(self) -> float:
        now = time.monotonic()
        while self._arrivals and self._arrivals[0] < now - self.window_s:
            self._arrivals.popleft()
        return len(self._arrivals) / self.window_s

    def target(self) -> int:
        wanted = math.ceil(self.rate() * self.start_latency.value)
        if self._arrivals:
            wanted += self.headroom
        return max(self.min_idle, min(self.max_idle, wanted))


class WarmPool:
    def __init__(
        self,
        profile: str,
        *,
        executor: str,
        spawn: SpawnFn,
        discard: DiscardFn,
        alive: AliveFn,
        min_idle: int,
        max_idle: int,
        max_concurrency: int,
        queue_size: int,
        spawn_rate: float = 50.0,
        spawn_parallelism: int = 4,
        max_idle_age_s: float = 0.0,
        headroom: int = 1,
    ):
        self.profile = profile
        self.executor = executor
        self._spawn_fn = spawn
        self._discard_fn = discard
        self._alive = alive
        self.sizer = DemandSizer(min_idle, max_idle, initial_start_s=0.05, headroom=headroom)
        self.min_idle = self.sizer.min_idle
        self.max_idle = self.sizer.max_idle
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.max_idle_age_s = max_idle_age_s
        self._limiter = RateLimiter(spawn_rate, max(1, spawn_parallelism))
        self._parallelism = spawn_parallelism
        self._idle: collections.deque[WorkerHandle] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[WorkerHandle]] = collections.deque()
        self._starting = 0
        self._busy = 0
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Worker starts and discards under way.
        self._tasks = TaskSet(f"pool {profile}", log)
        self._failures = 0
        self._last_error: str | None = None
        self.warm_starts = 0
        self.cold_starts = 0
        self._closed = False

    def target_idle(self) -> int:
        return self.sizer.target()

    # -- claiming -----------------------------------------------------------------------

    def check_room(self) -> None:
        if (self._idle and self._busy < self.max_concurrency) or \
                len(self._waiters) < self.queue_size:
            return
        raise QueueFull(
            f"the queue of profile {self.profile!r} is full ({self.queue_size} waiting)",
            {"profile": self.profile, "queue_size": self.queue_size},
            retry_after=max(1, math.ceil(self.sizer.start_latency.value * 2)),
        )

    async def acquire(self) -> WorkerHandle:
        self.sizer.arrival()
        if self._busy < self.max_concurrency:
            while self._idle:
                worker = self._idle.popleft()
                if not self._alive(worker):
                    self._background(self._discard_fn(worker))
                    continue
                self._busy += 1
                worker.warm = True
                self.warm_starts += 1
                self._kick.set()
                return worker
        self.check_room()
        fut: asyncio.Future[WorkerHandle] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._kick.set()
        try:
            worker = await fut
        except asyncio.CancelledError:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result(), reuse=True)
            raise
        worker.warm = False
        self.cold_starts += 1
        return worker

    def release(self, worker: WorkerHandle | None = None, *, reuse: bool = False) -> None:
        """A claimed worker is done. Workers are single-use: only a worker that never ran
        anything (a cancelled wait) goes back to the pool."""
        self._busy -= 1
        if reuse and worker is not None:
            self._offer(worker)
        self._serve_waiters()
        self._kick.set()

    def _offer(self, worker: WorkerHandle) -> None:
        """A worker became ready: give it to the first waiter, or keep it idle."""
        while self._waiters and self._busy < self.max_concurrency:
            fut = self._waiters.popleft()
            if not fut.done():
                self._busy += 1
                fut.set_result(worker)
                return
        self._idle.append(worker)

    def _serve_waiters(self) -> None:
        while self._idle and self._waiters and self._busy < self.max_concurrency:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            worker = self._idle.popleft()
            self._busy += 1
            fut.set_result(worker)

    # -- the controller -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._control(), name=f"pool:{self.profile}")

    async def stop(self) -> None:
        self._closed = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._tasks.cancel_all()
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(WorkerStartFailed("the gateway is shutting down"))
        idle, self._idle = list(self._idle), collections.deque()
        await asyncio.gather(*(self._discard_fn(w) for w in idle), return_exceptions=True)

    async def _control(self) -> None:
        """Never dies: an error is logged and retried with backoff."""
        backoff = 0.1
        while not self._closed:
            try:
                delay = self._reconcile()
                backoff = 0.1
            except Exception:  # the controller must outlive any one error
                log.exception("pool %s: reconcile failed", self.profile)
                delay = backoff = min(backoff * 2, 5.0)
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=delay)

    def _reconcile(self) -> float:
        """One step: retire what is stale or surplus, start what is missing. Returns how
        long to sleep if nothing else happens."""
        now = time.monotonic()
        if self.max_idle_age_s:
            for worker in [w for w in self._idle if now - w.ready_at > self.max_idle_age_s]:
                self._idle.remove(worker)
                self._background(self._discard_fn(worker))
        target = self.target_idle()
        waiting = sum(1 for f in self._waiters if not f.done())
        surplus = len(self._idle) - target - waiting
        while surplus > 0 and len(self._idle) > self.min_idle:
            self._background(self._discard_fn(self._idle.popleft()))
            surplus -= 1
        alive = self._busy + len(self._idle) + self._starting
        room = self.max_concurrency + self.max_idle - alive
        need = target + waiting - len(self._idle) - self._starting
        to_start = min(need, room, self._parallelism - self._starting)
        if self._failures:
            # Back off after failed starts; waiters learn of a persistent failure.
            if self._failures >= 3:
                self._fail_waiters()
            to_start = min(to_start, 1)
        started = 0
        while started < to_start and self._limiter.try_take():
            self._starting += 1
            self._tasks.spawn(self._spawn_one(), name=f"spawn:{self.profile}")
            started += 1
        if started < to_start:
            return self._limiter.wait_time()
        if self._failures:
            return min(0.1 * 2.0 ** self._failures, 10.0)
        return 1.0

    async def _spawn_one(self) -> None:
        t0 = time.monotonic()
        try:
            worker = await self._spawn_fn()
        except asyncio.CancelledError:
            self._starting -= 1
            raise
        except Exception as e:  # noqa: BLE001 - a failed start is counted and reported
            self._starting -= 1
            self._failures += 1
            self._last_error = f"{type(e).__name__}: {e}"
            log.warning("pool %s: worker start failed (%d in a row): %s",
                        self.profile, self._failures, self._last_error)
            self._kick.set()
            return
        self._starting -= 1
        self._failures = 0
        self.sizer.started(time.monotonic() - t0)
        if self._closed:
            await self._discard_fn(worker)
            return
        self._offer(worker)
        self._kick.set()

    def _fail_waiters(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(WorkerStartFailed(
                    f"no worker of profile {self.profile!r} could be started: "
                    f"{self._last_error}"
                ))

    def _background(self, aw: Awaitable[None]) -> None:
        self._tasks.spawn(aw)

    # -- state --------------------------------------------------------------------------

    def state(self) -> PoolState:
        return PoolState(
            profile=self.profile, executor=self.executor, idle=len(self._idle),
            starting=self._starting, busy=self._busy,
            queued=sum(1 for f in self._waiters if not f.done()),
            min_idle=self.min_idle, max_idle=self.max_idle, target_idle=self.target_idle(),
            warm_starts=self.warm_starts, cold_starts=self.cold_starts,
        )

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def failing(self) -> bool:
        return self._failures >= 3
