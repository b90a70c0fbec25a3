"""Verifying a callback delivery on the receiving side, by the Standard Webhooks
specification (standardwebhooks.com): the headers ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature`` (space-separated ``v1,<base64 HMAC-SHA256>``
signatures of ``"{id}.{timestamp}.{body}"``; several during a secret rotation). Standard
library only, so a receiver needs nothing else of jobgate."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from gateway.client.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """``whsec_<base64>`` gives the decoded bytes; any other secret its UTF-8 bytes (a
    jobgate ``callback.secret`` is such a plain string)."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the whsec_ secret is not base64") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def verify_webhook(body: bytes, headers: Mapping[str, str], secret: str | Sequence[str], *,
                   tolerance_s: int = 300, now: float | None = None) -> None:
    """Return if one signature matches a secret (several secrets: during a rotation) and
    the timestamp is within ``tolerance_s`` of now; raise WebhookVerificationError
    otherwise. ``body`` is the raw request body, before any JSON parsing."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or "
                                       "webhook-signature")
    if not stamp.isdigit():
        raise WebhookVerificationError(f"webhook-timestamp is not Unix seconds: {stamp!r}")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance "
                                       f"({tolerance_s} s): a replay, or a clock off")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    expected = [sign(secret_key(s), msg_id, timestamp, body) for s in secrets]
    for versioned in signatures.split(" "):
        version, _, encoded = versioned.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Every candidate is compared, in constant time each.
        if any([hmac.compare_digest(given, e) for e in expected]):
            return
    raise WebhookVerificationError("no signature matches")
