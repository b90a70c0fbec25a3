"""Callbacks in the Standard Webhooks format: real deliveries from a gateway process to a
receiver on loopback, verified with the `standardwebhooks` package (the specification's
own library); key rotation, 410 Gone, Retry-After; and ``verify_webhook`` against that
library both ways."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.callbacks.signing import verify, verify_webhook, webhook_headers
from tests.doc_examples import write_block
from tests.support import (
    ROOT,
    CallbackReceiver,
    GatewayProcess,
    ReceivedCallback,
    free_port,
    invoke,
    running_gateway,
    wait_until,
)

PY = "python3.11"
PLAIN = "a-plain-per-call-secret-0123456789"


def whsec(seed: int) -> str:
    return "whsec_" + base64.b64encode(bytes((seed + i) % 256 for i in range(32))).decode()


CURRENT, PREVIOUS, UNRELATED = whsec(1), whsec(100), whsec(200)


def verified(secret: str | bytes, cb: ReceivedCallback) -> Any:
    """The payload, once the standardwebhooks library has verified the delivery."""
    return Webhook(secret).verify(cb.body, cb.headers)


def callback_state(client: httpx.Client, inv_id: str, status: str) -> dict[str, Any]:
    state: dict[str, Any] = wait_until(
        lambda: (cb := client.get(f"/v1/invocations/{inv_id}").json()["callback"])
        ["status"] == status and cb, message=f"callback {status}")
    return state


def send(client: httpx.Client, receiver: CallbackReceiver, secret: str | None = None) -> str:
    callback = {"url": receiver.url} | ({"secret": secret} if secret else {})
    r = invoke(client, profile=PY, code="print('hi')", mode="async", callback=callback)
    assert r.status_code == 202, r.text
    inv_id: str = r.json()["id"]
    return inv_id


# -- deliveries -----------------------------------------------------------------------------


def test_a_whsec_call_secret_signs_a_standard_webhook(client: httpx.Client,
                                                       receiver: CallbackReceiver) -> None:
    inv_id = send(client, receiver, CURRENT)
    [cb] = receiver.wait_for(lambda got: len(got) >= 1)
    payload = verified(CURRENT, cb)
    assert payload["id"] == inv_id and payload["status"] == "succeeded"
    with pytest.raises(WebhookVerificationError):
        verified(UNRELATED, cb)
    assert verify_webhook(cb.body, cb.headers, CURRENT)
    assert not verify_webhook(cb.body + b" ", cb.headers, CURRENT)
    # One signature (no rotation for a call's own secret); the legacy headers still come,
    # keyed with the secret as a string, as they always were.
    assert cb.headers["webhook-signature"].count("v1,") == 1
    assert verify(CURRENT, cb.body, cb.headers["x-jobgate-signature"])
    state = callback_state(client, inv_id, "delivered")
    assert cb.headers["webhook-id"] == cb.headers["x-jobgate-delivery"] == state["delivery_id"]
    assert cb.headers["x-jobgate-signature"].startswith(f"t={cb.headers['webhook-timestamp']},")
    assert abs(int(cb.headers["webhook-timestamp"]) - time.time()) < 60


def test_a_plain_call_secret_is_its_utf8_bytes(client: httpx.Client,
                                                receiver: CallbackReceiver) -> None:
    send(client, receiver, PLAIN)
    [cb] = receiver.wait_for(lambda got: len(got) >= 1)
    verified(PLAIN.encode(), cb)
    assert verify_webhook(cb.body, cb.headers, PLAIN)
    assert verify(PLAIN, cb.body, cb.headers["x-jobgate-signature"])


def test_a_rotated_server_secret_signs_with_the_current_and_the_previous(
        tmp_path: Path, receiver: CallbackReceiver) -> None:
    old_plain = "the-secret-before-that-one-0123"
    with running_gateway(tmp_path, JOBGATE_CALLBACK_SECRET=CURRENT,
                         JOBGATE_CALLBACK_PREVIOUS_SECRETS=f"{PREVIOUS}, {old_plain}") as gw, \
            gw.client() as c:
        send(c, receiver)
        [cb] = receiver.wait_for(lambda got: len(got) >= 1)
    signatures = cb.headers["webhook-signature"].split(" ")
    assert len(signatures) == 3 and all(s.startswith("v1,") for s in signatures)
    # A receiver holding any one of the three verifies; one holding none does not.
    for secret in (CURRENT, PREVIOUS, old_plain.encode()):
        verified(secret, cb)
    with pytest.raises(WebhookVerificationError):
        verified(UNRELATED, cb)
    # The current one signs first: a receiver that tries only the first still verifies.
    verified(CURRENT, ReceivedCallback(cb.headers | {"webhook-signature": signatures[0]},
                                       cb.body))
    assert verify_webhook(cb.body, cb.headers, [UNRELATED, PREVIOUS])
    assert not verify_webhook(cb.body, cb.headers, [UNRELATED])
    assert verify(CURRENT, cb.body, cb.headers["x-jobgate-signature"])  # legacy: current only
    log = gw.log()
    assert CURRENT not in log and PREVIOUS not in log and old_plain not in log


def test_the_webhook_id_is_the_same_on_every_attempt(client: httpx.Client,
                                                     receiver: CallbackReceiver) -> None:
    receiver.statuses = [500, 502]
    inv_id = send(client, receiver, CURRENT)
    got = receiver.wait_for(lambda got: len(got) >= 3)
    state = callback_state(client, inv_id, "delivered")
    assert {cb.headers["webhook-id"] for cb in got} == {state["delivery_id"]}
    for cb in got:  # each attempt signed anew, each valid
        verified(CURRENT, cb)


def test_410_gone_ends_the_retries(client: httpx.Client, receiver: CallbackReceiver) -> None:
    receiver.statuses = [503, 410, 200]
    inv_id = send(client, receiver)
    state = callback_state(client, inv_id, "failed")
    assert [a["status_code"] for a in state["attempts"]] == [503, 410]
    assert state["reason"] == "Gone"
    # Backoff here is 0.1 to 0.4 s: a third attempt would have come by now.
    time.sleep(1.5)
    assert len(receiver.received) == 2


def test_a_permanent_4xx_is_given_up_as_rejected(client: httpx.Client,
                                                 receiver: CallbackReceiver) -> None:
    receiver.statuses = [401]
    state = callback_state(client, send(client, receiver), "failed")
    assert state["reason"] == "Rejected" and len(state["attempts"]) == 1


def test_retry_after_seconds_sets_the_next_attempt(client: httpx.Client,
                                                   receiver: CallbackReceiver) -> None:
    receiver.statuses = [(503, {"Retry-After": "2"})]
    inv_id = send(client, receiver, CURRENT)
    first, second = receiver.wait_for(lambda got: len(got) >= 2)
    # Without it, backoff (base 0.2 s here) would have come back within 0.2 s.
    assert 1.95 <= second.at - first.at < 5, second.at - first.at
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    verified(CURRENT, second)
    state = callback_state(client, inv_id, "delivered")
    assert [a["status_code"] for a in state["attempts"]] == [503, 200]


def test_retry_after_as_an_http_date(client: httpx.Client, receiver: CallbackReceiver) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    receiver.statuses = [(429, {"Retry-After": when})]
    send(client, receiver)
    first, second = receiver.wait_for(lambda got: len(got) >= 2)
    # The date has whole seconds: 2 to 3 s from the first answer.
    assert 1.5 <= second.at - first.at < 5, second.at - first.at


def test_retry_after_is_bounded_by_the_longest_backoff(tmp_path: Path,
                                                       receiver: CallbackReceiver) -> None:
    receiver.statuses = [(503, {"Retry-After": "3600"}), (429, {"Retry-After": "86400"})]
    with running_gateway(tmp_path, JOBGATE_CALLBACK_BACKOFF_MAX_S="1") as gw, gw.client() as c:
        send(c, receiver)
        got = receiver.wait_for(lambda got: len(got) >= 3)
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert all(0.9 <= gap < 3 for gap in gaps), gaps


def test_a_malformed_whsec_call_secret_is_refused(client: httpx.Client,
                                                  receiver: CallbackReceiver) -> None:
    too_short = "whsec_" + base64.b64encode(b"x" * 16).decode()
    for secret in ("whsec_not*base64*at*all*!!!!!!", too_short):
        r = invoke(client, profile=PY, code="print(1)", mode="async",
                   callback={"url": receiver.url, "secret": secret})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "InvalidInput" and "callback.secret" in error["message"]
        assert secret not in r.text


def test_a_malformed_whsec_server_secret_stops_the_start(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data", env={
        "JOBGATE_CALLBACK_PREVIOUS_SECRETS": "whsec_dG9vLXNob3J0"})
    with pytest.raises(RuntimeError, match="JOBGATE_CALLBACK_PREVIOUS_SECRETS"):
        gw.start(timeout_s=30)
    assert "Traceback" not in gw.log()


# -- the receiver in docs/api.md, run as printed --------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as s, contextlib.suppress(OSError):
        s.settimeout(0.2)
        s.connect(("127.0.0.1", port))
        return True
    return False


def test_the_documented_receiver(client: httpx.Client, tmp_path: Path) -> None:
    script = write_block(tmp_path / "receiver.py", "api.md", "python", "standardwebhooks")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "WEBHOOK_SECRET": CURRENT, "PORT": str(port)})
    try:
        wait_until(lambda: _listening(port) or proc.poll() is not None, timeout_s=20)
        assert proc.poll() is None, "the documented receiver exited"
        url = f"http://127.0.0.1:{port}/hook"
        inv_id = invoke(client, profile=PY, code="print(1)", mode="async",
                        callback={"url": url, "secret": CURRENT}).json()["id"]
        state = callback_state(client, inv_id, "delivered")
        assert [a["status_code"] for a in state["attempts"]] == [204]
        # Forged (another secret) or tampered: 401. A repeat of one delivery: handled once.
        body = b'{"id": "inv_forged", "status": "succeeded"}'
        with httpx.Client(timeout=10) as raw:
            forged = webhook_headers([UNRELATED], "dlv_forged", body)
            assert raw.post(url, content=body, headers=forged).status_code == 401
            good = webhook_headers([CURRENT], "dlv_repeat", body)
            assert raw.post(url, content=body + b" ", headers=good).status_code == 401
            assert raw.post(url, content=body, headers=good).status_code == 204
            assert raw.post(url, content=body, headers=good).status_code == 204
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert out.splitlines() == [f"{inv_id} succeeded", "inv_forged succeeded"]


# -- verify_webhook and the standardwebhooks library, both ways -----------------------------

BODY = json.dumps({"id": "inv_x", "status": "succeeded", "stdout": "é\n"}).encode()


def library_headers(secret: str | bytes, msg_id: str, at: datetime,
                    body: bytes = BODY) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    return {"Webhook-Id": msg_id, "Webhook-Timestamp": str(int(at.timestamp())),
            "Webhook-Signature": signature}


def test_verify_webhook_accepts_what_the_library_signs() -> None:
    now = datetime.now(UTC)
    assert verify_webhook(BODY, library_headers(CURRENT, "msg_1", now), CURRENT)
    assert verify_webhook(BODY, library_headers(PLAIN.encode(), "msg_1", now), PLAIN)
    assert verify_webhook(BODY, library_headers(PREVIOUS, "msg_1", now), [CURRENT, PREVIOUS])
    # A signature list where only the second is ours (another sender's rotation).
    theirs = library_headers(UNRELATED, "msg_1", now)
    ours = library_headers(CURRENT, "msg_1", now)["Webhook-Signature"]
    both = theirs | {"Webhook-Signature": f"{theirs['Webhook-Signature']} {ours}"}
    assert verify_webhook(BODY, both, CURRENT)


def test_verify_webhook_refuses_what_is_not_genuine_or_not_fresh() -> None:
    now = datetime.now(UTC)
    headers = library_headers(CURRENT, "msg_1", now)
    assert not verify_webhook(BODY + b"\n", headers, CURRENT)
    assert not verify_webhook(BODY, headers, UNRELATED)
    assert not verify_webhook(BODY, headers | {"Webhook-Id": "msg_2"}, CURRENT)
    for age in (301, -301):
        stale = library_headers(CURRENT, "msg_1", now - timedelta(seconds=age))
        assert not verify_webhook(BODY, stale, CURRENT)
    assert verify_webhook(BODY, library_headers(CURRENT, "msg_1", now - timedelta(seconds=400)),
                          CURRENT, tolerance_s=500)
    for name in headers:
        assert not verify_webhook(BODY, {k: v for k, v in headers.items() if k != name},
                                  CURRENT)
    for signature in ("", "v1", "v1,", "v1,!!!", "v1a," + headers["Webhook-Signature"][3:],
                      "v2," + headers["Webhook-Signature"][3:]):
        assert not verify_webhook(BODY, headers | {"Webhook-Signature": signature}, CURRENT)
    for stamp in ("", "soon", "1e9", "-5", "\uff19\uff19"):
        assert not verify_webhook(BODY, headers | {"Webhook-Timestamp": stamp}, CURRENT)
    assert not verify_webhook(BODY, headers, [])


def test_the_library_accepts_what_jobgate_signs() -> None:
    headers = webhook_headers([CURRENT, PREVIOUS, PLAIN], "dlv_abc", BODY)
    for secret in (CURRENT, PREVIOUS, PLAIN.encode()):
        assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(UNRELATED).verify(BODY, headers)
    assert verify_webhook(BODY, headers, PLAIN)


def test_a_malformed_whsec_secret_is_the_receivers_error() -> None:
    headers = webhook_headers([CURRENT], "dlv_abc", BODY)
    for secret in ("whsec_***", "whsec_", "whsec_" + base64.b64encode(b"x" * 65).decode(), ""):
        with pytest.raises(ValueError, match="secret"):
            verify_webhook(BODY, headers, secret)


def test_verify_webhook_needs_only_the_standard_library() -> None:
    """The Python client re-exports it: importing it loads no server dependency."""
    code = ("import sys, gateway.callbacks.signing as s; "
            "print(sorted(m for m in ('starlette', 'pydantic', 'httpx', 'orjson', 'uvicorn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    assert out.strip() == "[]"
