"""Callback signatures: ``X-Jobgate-Signature: t=UNIX,v1=HEX(HMAC-SHA256(secret, t + "." +
body))``, the scheme Stripe made familiar. Receivers check it with ``verify``."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Jobgate-Signature"
EVENT_HEADER = "X-Jobgate-Event"
DELIVERY_HEADER = "X-Jobgate-Delivery"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: int = 300,
           now: int | None = None) -> bool:
    """True when ``header`` is a valid signature of ``body`` made within the tolerance."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError):
        return False
    current = int(time.time()) if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
