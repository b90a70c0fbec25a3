"""gateway.client.verify_webhook against deliveries signed by the reference Standard
Webhooks library (the ``standardwebhooks`` package)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from gateway.client import WebhookVerificationError, verify_webhook

BODY = b'{"id": "inv_0000000000aaaaaaaaaa", "status": "succeeded", "stdout": "\\u00e9\\n"}'
WHSEC = "whsec_" + base64.b64encode(b"a key of thirty-two random bytes").decode()
PLAIN = "a-plain-callback-secret-of-jobgate"


def signed(webhook: Webhook, body: bytes = BODY, *, msg_id: str = "dlv_abc",
           at: float | None = None) -> dict[str, str]:
    stamp = int(time.time() if at is None else at)
    signature = webhook.sign(msg_id, datetime.fromtimestamp(stamp, tz=UTC), body.decode())
    return {"Webhook-Id": msg_id, "Webhook-Timestamp": str(stamp),
            "Webhook-Signature": signature}


def test_a_whsec_secret_verifies_what_the_library_signs() -> None:
    headers = signed(Webhook(WHSEC))
    verify_webhook(BODY, headers, WHSEC)
    Webhook(WHSEC).verify(BODY, headers)  # and the library agrees it is valid


def test_a_plain_secret_is_its_utf8_bytes() -> None:
    headers = signed(Webhook(PLAIN.encode()))
    verify_webhook(BODY, headers, PLAIN)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, signed(Webhook(WHSEC)), PLAIN)


def test_one_matching_signature_of_several_and_secret_rotation() -> None:
    old, new = Webhook(PLAIN.encode()), Webhook(WHSEC)
    at = time.time()
    both = signed(old, at=at)
    both["Webhook-Signature"] = " ".join([
        "v2,ignored-version", signed(new, at=at)["Webhook-Signature"],
        both["Webhook-Signature"]])
    verify_webhook(BODY, both, WHSEC)
    other = "whsec_" + base64.b64encode(b"other-key-of-32-bytes-0123456789").decode()
    verify_webhook(BODY, signed(old), [other, PLAIN])


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "signature", "secret"])
def test_anything_changed_is_refused(tamper: str) -> None:
    headers = signed(Webhook(WHSEC))
    body, secret = BODY, WHSEC
    if tamper == "body":
        body = BODY.replace(b"succeeded", b"failed")
    elif tamper == "id":
        headers["Webhook-Id"] = "dlv_other"
    elif tamper == "timestamp":
        headers["Webhook-Timestamp"] = str(int(headers["Webhook-Timestamp"]) + 1)
    elif tamper == "signature":
        headers["Webhook-Signature"] = "v1," + base64.b64encode(b"\0" * 32).decode()
    else:
        secret = "whsec_" + base64.b64encode(b"another-key-of-32-bytes-01234567").decode()
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify_webhook(body, headers, secret)


def test_timestamps_outside_the_tolerance_and_missing_headers_are_refused() -> None:
    webhook = Webhook(WHSEC)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(BODY, signed(webhook, at=time.time() - 301), WHSEC)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(BODY, signed(webhook, at=time.time() + 301), WHSEC)
    verify_webhook(BODY, signed(webhook, at=time.time() - 3000), WHSEC, tolerance_s=3600)
    for missing in ("Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"):
        headers = signed(webhook)
        del headers[missing]
        with pytest.raises(WebhookVerificationError, match="missing"):
            verify_webhook(BODY, headers, WHSEC)
    headers = signed(webhook)
    headers["Webhook-Timestamp"] = "1e9"
    with pytest.raises(WebhookVerificationError, match="Unix seconds"):
        verify_webhook(BODY, headers, WHSEC)
    with pytest.raises(WebhookVerificationError, match="base64"):
        verify_webhook(BODY, signed(webhook), "whsec_not*base64")
