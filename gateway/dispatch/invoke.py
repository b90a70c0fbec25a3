"""The dispatch layer's one face to every front door (HTTP today, MCP later):
``invoke(request, wait_s) -> Outcome`` (admission, idempotency, quotas and the
sync-or-202 decision, written once), the reads and controls of an invocation, and the
start and stop of the work this replica owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from gateway.auth.upload_tokens import UploadTokens
from gateway.callbacks.delivery import CallbackDeliverer
from gateway.callbacks.ssrf import CallbackPolicy
from gateway.dispatch.admission import Admission, InvocationRequest
from gateway.dispatch.follow import Follow, LogFollowers, Offsets
from gateway.dispatch.lifecycle import Lifecycle
from gateway.dispatch.live import LiveTable
from gateway.dispatch.outputs import Outputs, choose_outputs
from gateway.dispatch.parts import Parts
from gateway.dispatch.recovery import Recovery
from gateway.dispatch.retries import Reruns
from gateway.dispatch.usage import by_label, every_usage, usage_of
from gateway.executors.live_output import StreamName
from gateway.models import ArtifactListing, InvocationRecord, PoolState, Usage
from gateway.tenants.quota import StorageQuota

log = logging.getLogger("jobgate.dispatch")
__all__ = ["Dispatcher", "InvocationRequest", "Outcome", "build_dispatcher"]


@dataclass(frozen=True)
class Outcome:
    """What invoke answers: the final record if the invocation ended within the wait
    (``finished``); else the record as accepted, still running (its id, its status)."""

    record: InvocationRecord
    finished: bool

    @property
    def id(self) -> str:
        return self.record.id


class Dispatcher:
    def __init__(self, admission: Admission, lifecycle: Lifecycle, recovery: Recovery,
                 outputs: Outputs, live: LiveTable):
        self.admission = admission
        self.lifecycle = lifecycle
        self.recovery = recovery
        self.outputs = outputs
        self.live = live
        self.followers = LogFollowers(live, lifecycle)

    async def invoke(self, request: InvocationRequest, wait_s: float | None = None
                     ) -> Outcome:
        """Admit the invocation, then wait up to ``wait_s`` for it to end. ``None``: as the
        request asks (async: no wait; sync: its sync wait, capped by the settings)."""
        record, live = await self.admission.admit(request)
        if wait_s is None and request.body.mode == "async":
            return Outcome(record, finished=False)
        if live is None:  # an earlier request with this Idempotency-Key, run elsewhere
            return Outcome(record, finished=record.status.terminal)
        finished = await self.lifecycle.wait(
            live, live.plan.sync_wait_s if wait_s is None else wait_s)
        if finished is None:
            return Outcome(live.record.model_copy(deep=True), finished=False)
        return Outcome(finished, finished=True)

    async def get(self, tenant: str, invocation_id: str) -> InvocationRecord:
        live = self.live.get(invocation_id, tenant)
        if live is not None:
            return live.record.model_copy(deep=True)
        return await self.lifecycle.parts.records.load(tenant, invocation_id)

    async def wait_for(self, tenant: str, invocation_id: str, timeout_s: float
                       ) -> InvocationRecord:
        """The record once it ends (if it runs here), or as it is after ``timeout_s``."""
        live = self.live.get(invocation_id, tenant)
        if live is not None:
            finished = await self.lifecycle.wait(live, timeout_s)
            if finished is not None:
                return await self.lifecycle.parts.records.load(tenant, invocation_id)
        return await self.get(tenant, invocation_id)

    async def follow_logs(self, tenant: str, invocation_id: str, offsets: Offsets,
                          streams: tuple[StreamName, ...]) -> Follow:
        """A follower's stream of the invocation's logs (gateway.dispatch.follow): the
        tenant's invocations only (InvocationNotFound), within the follower limits
        (TooManyFollowers)."""
        await self.get(tenant, invocation_id)
        return self.followers.open(tenant, invocation_id, offsets, streams)

    async def cancel(self, tenant: str, invocation_id: str) -> InvocationRecord:
        return await self.lifecycle.cancel(tenant, invocation_id)

    async def presign_artifacts(self, token: str, invocation_id: str,
                                listing: ArtifactListing) -> dict[str, str]:
        """Upload URLs for a worker's artifacts (its upload token, not an API key)."""
        return await self.outputs.presign_artifacts(token, invocation_id, listing, self.get)

    async def usage(self, tenant: str) -> Usage:
        return await usage_of(self.lifecycle.parts, tenant)

    async def every_usage(self) -> list[Usage]:
        return await every_usage(self.lifecycle.parts)

    def usage_by_label(self) -> dict[str, tuple[int, int]]:
        return by_label(self.lifecycle.parts)

    def pools(self) -> list[PoolState]:
        """The executor's pools; their ``queued`` counts the calls waiting for their turn
        in the fair share too (they wait here, not in the executor)."""
        share = self.lifecycle.parts.share
        return [pool.model_copy(update={"queued": pool.queued + share.waiting(pool.profile)})
                for pool in self.lifecycle.parts.executor.pools()]

    async def recover(self, *, at_start: bool = False) -> int:
        return await self.recovery.recover(at_start=at_start)

    async def recovery_loop(self, interval_s: float) -> None:
        await self.recovery.loop(interval_s)

    @property
    def quota(self) -> StorageQuota:
        """Each tenant's stored bytes and their limit (``used``, ``limit``)."""
        return self.lifecycle.parts.quota

    @property
    def accepting(self) -> bool:
        return self.admission.accepting

    def begin_stop(self, grace_s: float) -> None:
        """The server is stopping (SIGTERM): refuse new invocations and report not ready
        now; callers still waiting get their answer within ``grace_s``, before the server
        would cancel their requests (an answer of 202 and a Location to poll, which a
        peer replica serves once the invocation ends)."""
        self.admission.accepting = False
        asyncio.get_running_loop().call_later(grace_s, self.lifecycle.end_waits)

    async def drain(self, grace_s: float) -> None:
        """Stop accepting; give in-flight invocations up to ``grace_s`` to finish."""
        self.admission.accepting = False
        self.lifecycle.end_waits()
        pending = [live.done for live in self.live.all()]
        if pending:
            log.info("draining %d in-flight invocation(s), up to %.0fs", len(pending), grace_s)
            await asyncio.wait(pending, timeout=grace_s)
        self.lifecycle.parts.share.freeze()
        for live in self.live.all():
            if live.task is not None and live.worker is None:
                # Still queued: leave it pending in storage; the next start runs it.
                live.abandoned = True
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task

    async def wait_all(self, timeout_s: float) -> None:
        tasks = self.live.tasks()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    @property
    def in_flight(self) -> int:
        return len(self.live)


def build_dispatcher(parts: Parts, deliverer: CallbackDeliverer, policy: CallbackPolicy,
                     upload_tokens: UploadTokens) -> Dispatcher:
    """The dispatch jobs, wired; who stores outputs is chosen here, once."""
    live = LiveTable()
    outputs = choose_outputs(parts, upload_tokens)
    reruns = Reruns(parts.executor, parts.records)
    lifecycle = Lifecycle(parts, outputs, reruns, deliverer, live)
    recovery = Recovery(parts, lifecycle, reruns, deliverer, live)
    return Dispatcher(Admission(parts, policy, lifecycle, live), lifecycle, recovery,
                      outputs, live)
