"""Callbacks: signed, retried with backoff, attempts visible, SSRF-checked."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from gateway.callbacks.signing import verify
from tests.support import CallbackReceiver, invoke, running_gateway, wait_until

PY = "python3.11"
SECRET = "a-per-call-secret-of-some-length"


def check_signature(secret: str, body: bytes, header: str) -> None:
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    assert abs(int(fields["t"]) - time.time()) < 60


def test_async_callback_is_signed_with_the_call_secret(client: httpx.Client,
                                                      receiver: CallbackReceiver) -> None:
    r = invoke(client, profile=PY, code="print('called back')", mode="async",
               callback={"url": receiver.url, "secret": SECRET})
    assert r.status_code == 202
    inv_id = r.json()["id"]
    [cb] = receiver.wait_for(lambda got: len(got) >= 1)
    assert cb.headers["x-jobgate-event"] == "invocation.completed"
    assert cb.headers["x-jobgate-delivery"].startswith("dlv_")
    assert cb.headers["content-type"] == "application/json"
    check_signature(SECRET, cb.body, cb.headers["x-jobgate-signature"])
    assert verify(SECRET, cb.body, cb.headers["x-jobgate-signature"])
    assert not verify("wrong-secret-wrong-secret", cb.body, cb.headers["x-jobgate-signature"])
    assert not verify(SECRET, cb.body + b" ", cb.headers["x-jobgate-signature"])
    payload = cb.json()
    assert payload["id"] == inv_id
    assert payload["status"] == "succeeded"
    assert payload["stdout"] == "called back\n"
    record = wait_until(lambda: (rec := client.get(f"/v1/invocations/{inv_id}").json())
                        ["callback"]["status"] == "delivered" and rec)
    assert [a["status_code"] for a in record["callback"]["attempts"]] == [200]


def test_server_secret_is_used_without_a_call_secret(tmp_path: Path,
                                                    receiver: CallbackReceiver) -> None:
    server_secret = "server-wide-secret-0123456789"
    with running_gateway(tmp_path, JOBGATE_CALLBACK_SECRET=server_secret) as gw, \
            gw.client() as c:
        invoke(c, profile=PY, code="print(1)", mode="async", callback={"url": receiver.url})
        [cb] = receiver.wait_for(lambda got: len(got) >= 1)
        check_signature(server_secret, cb.body, cb.headers["x-jobgate-signature"])
    assert server_secret not in gw.log()


def test_callback_is_retried_after_a_500(client: httpx.Client,
                                         receiver: CallbackReceiver) -> None:
    receiver.statuses = [500, 503]
    inv_id = invoke(client, profile=PY, code="print(1)", mode="async",
                    callback={"url": receiver.url, "secret": SECRET}).json()["id"]
    got = receiver.wait_for(lambda got: len(got) >= 3)
    # The same delivery, the same body, each attempt signed anew.
    assert len({cb.headers["x-jobgate-delivery"] for cb in got}) == 1
    assert len({cb.body for cb in got}) == 1
    for cb in got:
        check_signature(SECRET, cb.body, cb.headers["x-jobgate-signature"])
    record = wait_until(lambda: (rec := client.get(f"/v1/invocations/{inv_id}").json())
                        ["callback"]["status"] == "delivered" and rec)
    attempts = record["callback"]["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 503, 200]
    # Backoff with equal jitter, base 0.2 s: at least 0.1 s, then at least 0.2 s apart.
    times = [datetime.fromisoformat(a["at"]) for a in attempts]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2, gaps


def test_callback_gives_up_on_a_permanent_4xx(client: httpx.Client,
                                              receiver: CallbackReceiver) -> None:
    receiver.statuses = [404]
    inv_id = invoke(client, profile=PY, code="print(1)", mode="async",
                    callback={"url": receiver.url}).json()["id"]
    record = wait_until(lambda: (rec := client.get(f"/v1/invocations/{inv_id}").json())
                        ["callback"]["status"] == "failed" and rec)
    assert [a["status_code"] for a in record["callback"]["attempts"]] == [404]


def test_sync_call_with_a_callback_also_delivers(client: httpx.Client,
                                                 receiver: CallbackReceiver) -> None:
    body = invoke(client, profile=PY, code="print(5)", callback={"url": receiver.url}).json()
    assert body["status"] == "succeeded"
    [cb] = receiver.wait_for(lambda got: len(got) >= 1)
    assert json.loads(cb.body)["id"] == body["id"]


@pytest.mark.parametrize("url", ["http://10.0.0.1/hook", "http://192.168.1.1/x",
                                 "http://169.254.169.254/latest/meta-data/",
                                 "http://[::1]:8080/x", "http://127.0.0.1:9/x",
                                 "http://localhost:9/x", "http://0.0.0.0/x",
                                 "http://[fd00::1]/x", "http://[::ffff:127.0.0.1]/x"])
def test_private_callback_urls_are_refused_without_an_allow_list(tmp_path: Path,
                                                                url: str) -> None:
    with running_gateway(tmp_path, JOBGATE_CALLBACK_ALLOW="") as gw, gw.client() as c:
        r = invoke(c, profile=PY, code="print(1)", mode="async", callback={"url": url})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "CallbackRefused"
        assert "JOBGATE_CALLBACK_ALLOW" in err["message"]


def test_allow_list_by_host_name(tmp_path: Path, receiver: CallbackReceiver) -> None:
    url = receiver.url.replace("127.0.0.1", "localhost")
    with running_gateway(tmp_path, JOBGATE_CALLBACK_ALLOW="localhost") as gw, gw.client() as c:
        r = invoke(c, profile=PY, code="print(1)", mode="async", callback={"url": url})
        assert r.status_code == 202, r.text
        receiver.wait_for(lambda got: len(got) >= 1)
        r = invoke(c, profile=PY, code="print(1)", mode="async",
                   callback={"url": receiver.url})
        assert r.status_code == 422  # 127.0.0.1 itself is not on the list


def test_unresolvable_callback_host_is_refused(client: httpx.Client) -> None:
    r = invoke(client, profile=PY, code="print(1)", mode="async",
               callback={"url": "http://no-such-host.invalid/hook"})
    assert r.status_code == 422
    assert "does not resolve" in r.json()["error"]["message"]
