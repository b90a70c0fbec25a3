"""Verifying a callback delivery on the receiving side, by the Standard Webhooks
specification (standardwebhooks.com): the headers ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature`` (space-separated ``v1,<base64 HMAC-SHA256>``
signatures of ``"{id}.{timestamp}.{body}"``; several during a secret rotation). The check
is the gateway's own (gateway.callbacks.signing, standard library only: a receiver needs
nothing else of jobgate); here it raises, with the reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.callbacks.signing import webhook_fault
from gateway.client.errors import WebhookVerificationError


def verify_webhook(body: bytes, headers: Mapping[str, str], secret: str | Sequence[str], *,
                   tolerance_s: int = 300, now: float | None = None) -> None:
    """Return if one signature matches a secret (several secrets: during a rotation) and
    the timestamp is within ``tolerance_s`` of now; raise WebhookVerificationError
    otherwise. ``body`` is the raw request body, before any JSON parsing."""
    try:
        fault = webhook_fault(body, headers, secret, tolerance_s, now=now)
    except ValueError as e:  # the receiver's own secret is malformed
        raise WebhookVerificationError(str(e)) from None
    if fault is not None:
        raise WebhookVerificationError(fault)
