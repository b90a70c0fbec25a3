"""Callback delivery: at-least-once, signed, retried with exponential backoff and jitter.

A delivery is durable: a ``_callbacks/{tenant}/{id}`` marker exists from the moment the
result is recorded until the delivery succeeds or gives up, so a restarted gateway
resumes it. The marker names the invocation's owner: a gateway resumes only its own
deliveries (or, leading, those of replicas that are gone), never a live peer's. Every
attempt is recorded on the invocation (``callback.attempts``). The same delivery id is
sent on every attempt (``webhook-id``, and the legacy ``X-Jobgate-Delivery``) so receivers
can drop duplicates. A receiver's 410 Gone ends the delivery; its ``Retry-After`` on a 429
or 503 sets the next attempt's delay (at most the longest backoff).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from gateway.callbacks.answers import Judgement, judge
from gateway.callbacks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    sign,
    webhook_headers,
)
from gateway.callbacks.ssrf import CallbackPolicy
from gateway.config.settings import Settings
from gateway.errors import CallbackRefused, InvocationNotFound
from gateway.metrics.registry import Metrics
from gateway.models import CallbackAttempt, CallbackReason, InvocationRecord
from gateway.storage.records import CallbackMark, InvocationStore
from gateway.supervise import TaskSet

log = logging.getLogger("jobgate.callbacks")
EVENT = "invocation.completed"

# Of the owners named on unfinished deliveries, those whose deliveries to resume here.
OwnerChoice = Callable[[set[str]], Awaitable[set[str]]]


def backoff_delay(attempt: int, base_s: float, max_s: float, rnd: random.Random) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random."""
    ceiling = min(max_s, base_s * 2.0 ** (attempt - 1))
    return ceiling / 2 + rnd.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Attempted:
    """One attempt: what the answer means, and what is recorded of it."""

    judgement: Judgement
    status_code: int | None
    error: str | None
    elapsed_s: float


class CallbackDeliverer:
    def __init__(self, settings: Settings, records: InvocationStore, metrics: Metrics,
                 policy: CallbackPolicy, server_secrets: Sequence[str]):
        """``server_secrets``: the server's signing secrets, the current one first, then
        those being rotated out (each signs the Standard Webhooks header too)."""
        self.settings = settings
        self.records = records
        self.metrics = metrics
        self.policy = policy
        if isinstance(server_secrets, str) or not server_secrets:
            # A str is a Sequence[str] too: one secret per character is never meant.
            raise TypeError("server_secrets is a non-empty list of secrets")
        self.server_secrets = list(server_secrets)
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
        secrets = [secret] if secret else self.server_secrets
        max_attempts = self.settings.callback_max_attempts
        while len(state.attempts) < max_attempts:
            if state.next_attempt_at is not None:
                wait = (state.next_attempt_at - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
            number = len(state.attempts) + 1
            result = await self._attempt(state.url, state.delivery_id, body, secrets)
            self.metrics.callbacks.labels(result.judgement.outcome).inc()
            state.attempts.append(CallbackAttempt(
                attempt=number, at=datetime.now(UTC), status_code=result.status_code,
                error=result.error, duration_ms=round(result.elapsed_s * 1000, 2)))
            if result.judgement.outcome == "delivered":
                state.status, state.next_attempt_at = "delivered", None
                break
            if result.judgement.outcome == "refused" or number >= max_attempts:
                state.status, state.next_attempt_at = "failed", None
                state.reason = result.judgement.reason or CallbackReason.AttemptsExhausted
                break
            state.next_attempt_at = datetime.now(UTC) + timedelta(
                seconds=self._next_delay(number, result.judgement))
            await self.records.save(record)
        await self.records.save(record)
        await self.records.unmark_callback(record.tenant, record.id)
        log.info("callback %s for %s: %s after %d attempt(s)%s", state.delivery_id,
                 invocation_id, state.status, len(state.attempts),
                 f" ({state.reason})" if state.reason else "")

    def _next_delay(self, attempt: int, judgement: Judgement) -> float:
        """The receiver's Retry-After when it gave one, else backoff; never past the
        longest backoff (a receiver does not get to park a delivery for a day)."""
        longest = self.settings.callback_backoff_max_s
        if judgement.retry_after_s is not None:
            return min(judgement.retry_after_s, longest)
        return backoff_delay(attempt, self.settings.callback_backoff_base_s, longest,
                             self._rnd)

    async def _attempt(self, url: str, delivery_id: str, body: bytes,
                       secrets: Sequence[str]) -> Attempted:
        """One POST, signed anew (this attempt's timestamp)."""
        t0 = time.monotonic()
        try:
            target = await self.policy.resolve(url)
        except CallbackRefused as e:
            return Attempted(Judgement("refused", CallbackReason.Refused), None, e.message,
                             time.monotonic() - t0)
        name = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 literal
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "jobgate-callbacks/1",
            **webhook_headers(secrets, delivery_id, body, timestamp),
            EVENT_HEADER: EVENT,
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: sign(secrets[0], body, timestamp),
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
            return Attempted(Judgement("error"), None, f"{type(e).__name__}: {e}"[:500],
                             time.monotonic() - t0)
        elapsed = time.monotonic() - t0
        judgement = judge(resp.status_code, resp.headers.get("retry-after"))
        error = None if judgement.outcome == "delivered" else \
            f"receiver answered {resp.status_code}"
        return Attempted(judgement, resp.status_code, error, elapsed)
