"""Callback delivery: at-least-once, signed, retried with exponential backoff and jitter.

A delivery is durable: a ``_callbacks/{tenant}/{id}`` marker exists from the moment the
result is recorded until the delivery succeeds or gives up, so a restarted gateway
resumes it. The marker names the invocation's owner: a gateway resumes only its own
deliveries (or, leading, those of replicas that are gone), never a live peer's. Every
attempt is recorded on the invocation (``callback.attempts``). The same
``X-Jobgate-Delivery`` id is sent on every attempt so receivers can drop duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from gateway.callbacks.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from gateway.callbacks.ssrf import CallbackPolicy
from gateway.config.settings import Settings
from gateway.errors import CallbackRefused, InvocationNotFound
from gateway.metrics.registry import Metrics
from gateway.models import CallbackAttempt, InvocationRecord
from gateway.storage.records import CallbackMark, InvocationStore
from gateway.supervise import TaskSet

log = logging.getLogger("jobgate.callbacks")
EVENT = "invocation.completed"
# Statuses worth another attempt; any other 4xx means the receiver will never accept it.
RETRYABLE = {408, 409, 425, 429}

# Of the owners named on unfinished deliveries, those whose deliveries to resume here.
OwnerChoice = Callable[[set[str]], Awaitable[set[str]]]


def backoff_delay(attempt: int, base_s: float, max_s: float, rnd: random.Random) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random."""
    ceiling = min(max_s, base_s * 2.0 ** (attempt - 1))
    return ceiling / 2 + rnd.uniform(0, ceiling / 2)


class CallbackDeliverer:
    def __init__(self, settings: Settings, records: InvocationStore, metrics: Metrics,
                 policy: CallbackPolicy, server_secret: str):
        self.settings = settings
        self.records = records
        self.metrics = metrics
        self.policy = policy
        self.server_secret = server_secret
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        # One delivery under way per invocation id.
        self._tasks = TaskSet("callback delivery", log)
        self._rnd = random.Random()
        self._closed = False
        # (tenant, invocation id) -> its mark (owner, per-call secret), read once per mark.
        self._marks: dict[tuple[str, str], CallbackMark] = {}

    async def close(self) -> None:
        self._closed = True
        await self._tasks.cancel_all()
        await self._client.aclose()

    async def enqueue(self, record: InvocationRecord, secret: str | None) -> None:
        """Make the delivery durable, then start it in the background."""
        await self.records.mark_callback(record, secret)
        self._start(record.tenant, record.id, secret)

    def _start(self, tenant: str, invocation_id: str, secret: str | None) -> None:
        if self._closed or invocation_id in self._tasks:
            return
        self._tasks.spawn(self._deliver(tenant, invocation_id, secret),
                          name=f"callback:{invocation_id}", key=invocation_id)

    async def resume_pending(self, choose: OwnerChoice) -> int:
        """Pick up the unfinished deliveries of the owners ``choose`` picks: after a
        restart, this gateway's own; for the leader, those of replicas that are gone."""
        listed = await self.records.callback_marks()
        self._marks = {k: v for k, v in self._marks.items() if k in set(listed)}
        waiting: list[tuple[str, str]] = []
        for tenant, inv in listed:
            if inv in self._tasks:
                continue
            if (tenant, inv) not in self._marks:
                mark = await self.records.callback_mark(tenant, inv)
                if mark is None:
                    continue
                self._marks[tenant, inv] = mark
            waiting.append((tenant, inv))
        chosen = await choose({self._marks[key].owner for key in waiting})
        resumed = 0
        for tenant, inv in waiting:
            mark = self._marks[tenant, inv]
            if mark.owner in chosen:
                self._start(tenant, inv, mark.secret)
                resumed += 1
        return resumed

    async def _deliver(self, tenant: str, invocation_id: str, secret: str | None) -> None:
        try:
            record = await self.records.load(tenant, invocation_id)
        except InvocationNotFound:
            await self.records.unmark_callback(tenant, invocation_id)
            return
        state = record.callback
        if state is None or state.status != "pending":
            await self.records.unmark_callback(record.tenant, record.id)
            return
        body = orjson.dumps(record.public().model_dump(mode="json"))
        key = secret or self.server_secret
        max_attempts = self.settings.callback_max_attempts
        while len(state.attempts) < max_attempts:
            if state.next_attempt_at is not None:
                wait = (state.next_attempt_at - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
            number = len(state.attempts) + 1
            outcome, status_code, error, elapsed = await self._attempt(
                state.url, state.delivery_id, body, key)
            self.metrics.callbacks.labels(outcome).inc()
            state.attempts.append(CallbackAttempt(
                attempt=number, at=datetime.now(UTC), status_code=status_code, error=error,
                duration_ms=round(elapsed * 1000, 2)))
            if outcome == "delivered":
                state.status, state.next_attempt_at = "delivered", None
                break
            if outcome == "refused" or number >= max_attempts:
                state.status, state.next_attempt_at = "failed", None
                break
            delay = backoff_delay(number, self.settings.callback_backoff_base_s,
                                  self.settings.callback_backoff_max_s, self._rnd)
            state.next_attempt_at = datetime.now(UTC) + timedelta(seconds=delay)
            await self.records.save(record)
        await self.records.save(record)
        await self.records.unmark_callback(record.tenant, record.id)
        log.info("callback %s for %s: %s after %d attempt(s)", state.delivery_id,
                 invocation_id, state.status, len(state.attempts))

    async def _attempt(self, url: str, delivery_id: str, body: bytes, secret: str
                       ) -> tuple[str, int | None, str | None, float]:
        """One POST. Returns (outcome, status code, error, seconds)."""
        t0 = time.monotonic()
        try:
            target = await self.policy.resolve(url)
        except CallbackRefused as e:
            return "refused", None, e.message, time.monotonic() - t0
        name = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 literal
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "jobgate-callbacks/1",
            EVENT_HEADER: EVENT,
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: sign(secret, body),
            "Host": name if target.port in (80, 443) else f"{name}:{target.port}",
        }
        # Dial the address that was checked, not a fresh DNS answer (DNS rebinding).
        ip = target.address
        host = f"[{ip}]" if ":" in ip else ip
        path_url = httpx.URL(url)
        dial = path_url.copy_with(host=host.strip("[]"), port=target.port)
        try:
            resp = await self._client.post(
                dial, content=body, headers=headers,
                timeout=self.settings.callback_timeout_s,
                extensions={"sni_hostname": target.host},
            )
        except httpx.HTTPError as e:
            return "error", None, f"{type(e).__name__}: {e}"[:500], time.monotonic() - t0
        elapsed = time.monotonic() - t0
        if 200 <= resp.status_code < 300:
            return "delivered", resp.status_code, None, elapsed
        if 400 <= resp.status_code < 500 and resp.status_code not in RETRYABLE:
            return "refused", resp.status_code, f"receiver answered {resp.status_code}", elapsed
        return "error", resp.status_code, f"receiver answered {resp.status_code}", elapsed
