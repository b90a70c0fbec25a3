"""The executor seam: one interface, implemented by ``local`` (runner processes on this
machine) and ``kubernetes`` (worker Jobs). Both speak the same runner protocol
(``gateway.executors.runner_client``) and share the warm pool (``gateway.executors.pool``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from gateway.config.profiles import Profile
from gateway.executors.live_output import LiveOutput
from gateway.models import Assignment, PoolState, WorkerReport


@dataclass
class WorkerHandle:
    """The gateway's handle on one single-use worker, from the moment it is ready to
    serve: where its runner listens, the token it takes, where it came from. An executor
    hands it out (acquire) and takes it back (run, cancel, release)."""

    id: str
    profile: str
    address: str  # http://host:port of its runner
    token: str
    ready_at: float  # monotonic
    start_latency_s: float  # from the request to start it until it was ready
    pid: int | None = None
    uid: int | None = None
    warm: bool = False
    meta: dict[str, str] = field(default_factory=dict)


class Executor(ABC):
    name: str
    # True when the gateway can read a finished worker's workspace (it may store the
    # artifacts from it: gateway.dispatch.outputs decides, once, at start).
    reads_workspace: bool = False

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def check_room(self, profile: Profile) -> None:
        """Raise QueueFull when the profile's queue has no room (admission)."""

    @abstractmethod
    async def acquire(self, profile: Profile, invocation_id: str) -> WorkerHandle:
        """A ready worker of the profile, claimed for this invocation: warm from the pool,
        or started for this call."""

    @abstractmethod
    async def run(self, worker: WorkerHandle, assignment: Assignment,
                  output: LiveOutput | None = None) -> WorkerReport:
        """Send the assignment and wait for the report. Raises WorkerLost. ``output``
        receives the code's output while it runs, once someone follows it."""

    @abstractmethod
    async def cancel(self, worker: WorkerHandle) -> None:
        """Stop a running worker; its run() then reports Cancelled or raises WorkerLost."""

    @abstractmethod
    async def release(self, worker: WorkerHandle, report: WorkerReport | None) -> None:
        """The worker is done (single use): clean up what it leaves behind."""

    @abstractmethod
    def pools(self) -> list[PoolState]: ...

    @property
    def api_calls(self) -> dict[str, int]:
        """Calls this made to a control plane, by verb (observability; none by default)."""
        return {}

    async def adopt(self, invocation_id: str, timeout_s: float) -> bool | None:
        """A worker still running an invocation whose gateway is gone: wait until it ends
        (True; its report, if it made one, is in the store), or None when there is no
        such worker. Raises WorkerLost when it is seen to end without a report."""
        return None

    @abstractmethod
    async def end_attempt(self, invocation_id: str) -> bool:
        """Before an invocation runs again: make sure no worker of an earlier attempt still
        runs it or can still report, ending any that might, and waiting until it is gone.
        False when that cannot be made sure (then it must not run again)."""

    @abstractmethod
    async def check(self) -> None:
        """Raise ExecutorUnavailable when no worker can be started (readiness)."""
