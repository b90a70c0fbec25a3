"""Sending a request, retried after 429 (QueueFull) and 503 (unavailable, shutting down)
when repeating it is safe: a GET, or a POST that carries an Idempotency-Key (the client
gives every invoke and submit one, so the gateway runs it once however often it is sent).
The wait honours Retry-After (seconds or an HTTP-date); the number of tries and the total
time slept are both bounded. Any other error answer is raised as its ``ApiError``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from gateway.client.errors import api_error
from gateway.client.protocol import Answer, Open, Operation, Request, Send, Sleep

RETRIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    # Tries in all, the first included; 1 never retries.
    attempts: int = 5
    # The most slept in all for one request; a Retry-After past it is not waited for.
    max_total_s: float = 60.0
    # The pause when the answer has no Retry-After: doubled each try, up to max_delay_s.
    backoff_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, answer: Answer, attempt: int, slept_s: float) -> float | None:
        """How long to wait before trying again, or None to give up."""
        if answer.status not in RETRIED_STATUSES or attempt >= self.attempts:
            return None
        asked = retry_after_s(answer.headers.get("retry-after"))
        delay = asked if asked is not None else min(self.backoff_s * 2 ** (attempt - 1),
                                                    self.max_delay_s)
        if delay > self.max_delay_s or slept_s + delay > self.max_total_s:
            return None
        return delay


NO_RETRIES = RetryPolicy(attempts=1)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delay-seconds or an HTTP-date (RFC 9110 10.2.3);
    None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def send(request: Request, policy: RetryPolicy, *, stream: bool = False
         ) -> Operation[Answer]:
    """The successful answer to ``request`` (opened as a stream with ``stream``)."""
    slept = 0.0
    attempt = 0
    while True:
        attempt += 1
        answer: Answer = yield (Open(request) if stream else Send(request))
        if answer.status < 400:
            return answer
        delay = policy.delay(answer, attempt, slept) if request.retry_safe else None
        if delay is None:
            raise api_error(answer.status, answer.body,
                            retry_after_s(answer.headers.get("retry-after")))
        yield Sleep(delay)
        slept += delay
