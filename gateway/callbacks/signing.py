"""Callback signatures, made and checked. Standard library only: receivers import
``verify_webhook`` without the gateway's server dependencies (the Python client re-exports
it).

Two schemes are sent on every attempt:

- Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id`` (the delivery's id,
  the same on every attempt), ``webhook-timestamp`` (unix seconds of this attempt) and
  ``webhook-signature: v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>``,
  one signature per secret, space-separated (the current secret first, then those being
  rotated out).
- Legacy: ``X-Jobgate-Signature: t=UNIX,v1=HEX(HMAC-SHA256(secret, t + "." + body))`` with
  the current secret only, the scheme Stripe made familiar. Checked with ``verify``.

A secret is either ``whsec_<base64>`` (the key is the decoded bytes, as Standard Webhooks
libraries read it) or any other string (the key is its UTF-8 bytes). The legacy header is
keyed with the secret's UTF-8 bytes whatever its form, as it always was."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

SIGNATURE_HEADER = "X-Jobgate-Signature"
EVENT_HEADER = "X-Jobgate-Event"
DELIVERY_HEADER = "X-Jobgate-Delivery"

WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"
SECRET_PREFIX = "whsec_"
# The key lengths Standard Webhooks allows for HMAC-SHA256 (192 to 512 bits).
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
# A receiver checks at most this many signatures of one header (they are cheap, but the
# header is the sender's to make long).
MAX_SIGNATURES = 16


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` decoded (24 to 64 bytes), any other
    string as its UTF-8 bytes. ValueError for a ``whsec_`` secret that is not that."""
    if not secret.startswith(SECRET_PREFIX):
        if not secret:
            raise ValueError("a webhook secret may not be empty")
        return secret.encode()
    encoded = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ secret must be whsec_ and standard base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"a whsec_ secret must decode to {MIN_KEY_BYTES} to "
                         f"{MAX_KEY_BYTES} bytes, not {len(key)}")
    return key


def _webhook_mac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def webhook_headers(secrets: Sequence[str], msg_id: str, body: bytes,
                    timestamp: int | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with every secret in order."""
    t = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(
        "v1," + base64.b64encode(_webhook_mac(secret_key(s), msg_id, t, body)).decode()
        for s in secrets)
    return {WEBHOOK_ID: msg_id, WEBHOOK_TIMESTAMP: str(t), WEBHOOK_SIGNATURE: signatures}


def verify_webhook(body: bytes, headers: Mapping[str, str], secret: str | Sequence[str],
                   tolerance_s: float = 300, *, now: float | None = None) -> bool:
    """True when ``headers`` carry a Standard Webhooks signature of ``body`` made with
    ``secret`` (or any of several, during a rotation) within ``tolerance_s`` seconds of now,
    either way. Header names are matched in any case. Pass the body exactly as received,
    before any JSON parsing. ValueError for a malformed ``whsec_`` secret (the receiver's
    own configuration); anything wrong with the request is False."""
    return webhook_fault(body, headers, secret, tolerance_s, now=now) is None


def webhook_fault(body: bytes, headers: Mapping[str, str], secret: str | Sequence[str],
                  tolerance_s: float = 300, *, now: float | None = None) -> str | None:
    """What is wrong with a delivery, in words (None: nothing, it verifies): the check
    behind ``verify_webhook``, for callers that say why they refused one."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    keys = [secret_key(s) for s in secrets]
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(WEBHOOK_ID, "")
    stamp = lowered.get(WEBHOOK_TIMESTAMP, "")
    signatures = lowered.get(WEBHOOK_SIGNATURE, "")
    if not (msg_id and stamp and signatures):
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        return f"webhook-timestamp is not Unix seconds: {stamp[:20]!r}"
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return (f"webhook-timestamp is outside the tolerance ({tolerance_s:g} s): a replay, "
                "or a clock off")
    given: list[bytes] = []
    for entry in signatures.split(" ")[:MAX_SIGNATURES]:
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # another scheme (v1a, asymmetric): not ours to check
        try:
            given.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    expected = [_webhook_mac(key, msg_id, timestamp, body) for key in keys]
    # Every pair is compared (no early exit on a match): the time taken says nothing.
    matched = False
    for mac in expected:
        for candidate in given:
            matched |= hmac.compare_digest(mac, candidate)
    return None if matched else "no signature matches"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The legacy ``X-Jobgate-Signature`` value."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: int = 300,
           now: int | None = None) -> bool:
    """True when ``header`` is a valid legacy signature of ``body`` made within the
    tolerance."""
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
