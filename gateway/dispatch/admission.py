"""Admission of one invocation: validate against its profile and the tenant's max TTL (the
plan) -> idempotency -> the tenant's limits and room (its stored-bytes quota, its queue,
its rate, the profile's queue) -> its turn in the fair share -> persist the request and
the record (durable from here, before any 202) -> hand it to the lifecycle. A refused
submission stores nothing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.callbacks.signing import secret_key
from gateway.callbacks.ssrf import CallbackPolicy
from gateway.dispatch.charges import admission_charge
from gateway.dispatch.keyed_locks import KeyedLocks
from gateway.dispatch.lifecycle import Lifecycle
from gateway.dispatch.live import LiveInvocation, LiveTable
from gateway.dispatch.parts import Parts
from gateway.dispatch.plan import Plan, make_plan
from gateway.dispatch.tenant_gate import TenantGate
from gateway.errors import (
    IdempotencyConflict,
    InvalidInput,
    JobgateError,
    ShuttingDown,
    StorageUnavailable,
    TtlTooLong,
)
from gateway.ids import new_invocation_id, new_token
from gateway.models import CallbackState, InvocationCreate, InvocationRecord


@dataclass(frozen=True)
class InvocationRequest:
    """One call to invoke, whatever the front door: who asks, what (parsed, and the raw
    body the idempotency check compares), and the Idempotency-Key if any."""

    tenant: str
    body: InvocationCreate
    raw: bytes
    idempotency_key: str | None = None

    @classmethod
    def parse(cls, tenant: str, data: object, raw: bytes,
              idempotency_key: str | None = None) -> InvocationRequest:
        """The request from a body as it arrived, ``data`` parsed from ``raw``: a JSON
        object that validates as ``InvocationCreate`` (a pydantic ValidationError if not)."""
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object")
        return cls(tenant, InvocationCreate.model_validate(data), raw, idempotency_key)


class Admission:
    def __init__(self, parts: Parts, policy: CallbackPolicy, lifecycle: Lifecycle,
                 live: LiveTable):
        self.parts = parts
        self.policy = policy
        self.lifecycle = lifecycle
        self.live = live
        self.idem_locks = KeyedLocks()
        self.gate = TenantGate(parts.limits, parts.share)
        self.accepting = True

    async def admit(self, request: InvocationRequest
                    ) -> tuple[InvocationRecord, LiveInvocation | None]:
        """Validate, admit, persist, start. Returns the record and, when it runs in this
        replica, the live handle to wait on (None: an earlier request with the same
        Idempotency-Key, not running here)."""
        if not self.accepting:
            raise ShuttingDown("the gateway is shutting down", retry_after=1)
        req, tenant, key = request.body, request.tenant, request.idempotency_key
        plan = make_plan(req, self.parts.profiles.get(req.profile), self.parts.settings)
        try:
            plan = self.gate.plan_for(tenant, req, plan)
        except TtlTooLong as e:
            self._refused(tenant, e)
            raise
        if req.callback is not None:
            if req.callback.secret is not None:
                try:
                    secret_key(req.callback.secret)
                except ValueError as e:
                    raise InvalidInput(f"callback.secret: {e}") from None
            await self.policy.resolve(req.callback.url)
        if key is None:
            return await self._persist_and_start(request, plan, None)
        if len(key) > 255 or not key.isprintable():
            raise InvalidInput("Idempotency-Key must be at most 255 printable characters")
        records = self.parts.records
        key_hash = records.hash_idempotency_key(key)
        body_hash = hashlib.sha256(request.raw).hexdigest()
        # Same-key submissions to this replica take turns: the second finds the first's
        # entry instead of starting a second invocation.
        async with self.idem_locks.hold(f"{tenant}/{key_hash}"):
            entry = await records.idempotency(tenant, key_hash)
            if entry is None:
                return await self._persist_and_start(request, plan, (key_hash, body_hash))
            if entry.body_sha256 != body_hash:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request",
                    {"invocation_id": entry.invocation_id})
            live = self.live.get(entry.invocation_id)
            if live is not None and live.record.tenant == tenant:
                return live.record.model_copy(deep=True), live
            return await records.load(tenant, entry.invocation_id), live

    async def _persist_and_start(self, request: InvocationRequest, plan: Plan,
                                 idempotency: tuple[str, str] | None
                                 ) -> tuple[InvocationRecord, LiveInvocation]:
        req, share = request.body, self.parts.share
        charge = admission_charge(request.raw)
        try:
            # The quota first: it may list the store (an await). From the gate's check to
            # the turn taken below nothing awaits, so concurrent admissions count each
            # other. (A refusal after it leaves a charge counted until the next listing.)
            await self.parts.quota.reserve(request.tenant, charge)
            self.gate.admit(request.tenant, plan.profile.name)
            self.parts.executor.check_room(plan.profile)
        except JobgateError as e:
            self._refused(request.tenant, e)
            raise
        now = datetime.now(UTC)
        record = InvocationRecord(
            id=new_invocation_id(), tenant=request.tenant, profile=plan.profile.name,
            mode=req.mode, created_at=now, expires_at=now + timedelta(seconds=plan.ttl_s),
            replica=self.parts.membership.identity, max_attempts=plan.max_attempts,
            callback=None if req.callback is None else CallbackState(
                url=req.callback.url, delivery_id=f"dlv_{new_token(12)}"),
        )
        # The turn is taken before the write, so that concurrent admissions count each
        # other against max_queued; a write that fails gives it back.
        turn = share.enter(plan.profile.name, request.tenant)
        try:
            await self.parts.records.create(record, request.raw, idempotency,
                                            stored_bytes=charge)
        except BaseException as e:
            turn.close()
            if isinstance(e, StorageUnavailable):
                self.parts.metrics.rejected.labels("StorageUnavailable").inc()
            raise
        metrics = self.parts.metrics
        metrics.accepted.labels(record.profile, record.mode).inc()
        metrics.tenant_admitted.labels(self.parts.tenants.label(record.tenant)).inc()
        live = self.lifecycle.start(record, plan, req, turn)
        live.charged = charge
        return record, live

    def _refused(self, tenant: str, error: JobgateError) -> None:
        self.parts.metrics.tenant_refused.labels(self.parts.tenants.label(tenant),
                                                 error.code).inc()
