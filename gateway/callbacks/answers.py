"""What a receiver's answer means for a delivery: done, worth another attempt (and when,
if the receiver said so with ``Retry-After``), or never (and why)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from gateway.models import CallbackReason

# Worth another attempt although 4xx; any other 4xx means the receiver will never take it.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
# The answers whose Retry-After says when to come back (RFC 9110 section 10.2.3).
RETRY_AFTER_STATUSES = frozenset({429, 503})
# A Retry-After longer than this is not a delay or a date of any use: it is ignored.
MAX_RETRY_AFTER_CHARS = 64

Outcome = Literal["delivered", "refused", "error"]


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    # When refused: why it is given up (an enum value, recorded on the callback).
    reason: CallbackReason | None = None
    # When an error: the receiver's Retry-After in seconds, if it gave a usable one.
    retry_after_s: float | None = None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP-date; None when
    absent or unusable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def judge(status: int, retry_after: str | None) -> Judgement:
    """The meaning of a receiver's HTTP status (and Retry-After header)."""
    if 200 <= status < 300:
        return Judgement("delivered")
    if status == 410:  # Standard Webhooks: the receiver wants no more from this source
        return Judgement("refused", CallbackReason.Gone)
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        return Judgement("refused", CallbackReason.Rejected)
    wait = retry_after_seconds(retry_after) if status in RETRY_AFTER_STATUSES else None
    return Judgement("error", retry_after_s=wait)
