"""POST /v1/invocations/batch over real HTTP: each item admitted on its own (the same
admission as a single call), answered in order; whole-body errors; idempotent retries;
per-item callbacks; the queue limit per item; tenants kept apart."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

from tests.doc_examples import write_block
from tests.support import KEY_A, CallbackReceiver, GatewayProcess, running_gateway, wait_until

PY = "python3.11"
BATCH = "/v1/invocations/batch"


def batch(client: httpx.Client, items: list[Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(BATCH, json={"invocations": items}, headers=headers)


def items_of(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    assert [item["index"] for item in items] == list(range(len(items)))
    return items


def ended(client: httpx.Client, inv_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/v1/invocations/{inv_id}", params={"wait": 30}).json()
    assert body["status"] not in ("queued", "running"), body
    return body


def accepted_ids(items: list[dict[str, Any]]) -> list[str | None]:
    return [item["invocation"]["id"] if item["status_code"] == 202 else None
            for item in items]


def test_good_and_bad_items_are_answered_each_in_order(client: httpx.Client) -> None:
    items = items_of(batch(client, [
        {"profile": PY, "code": "print('zero')"},
        {"profile": PY, "code": "print(1)", "colour": "blue"},            # unknown field
        {"profile": "bash", "code": "echo two", "mode": "async"},
        {"profile": PY, "code": "print(3)", "mode": "sync"},              # a batch never waits
        42,                                                                # not a request
        {"profile": "no-such-profile", "code": "print(5)"},
        {"profile": PY, "code": "print(6)", "callback": {"url": "http://10.1.2.3/hook"}},
        {"profile": PY, "code": "print(7)", "timeout_s": -1},
    ]))
    assert [item["status_code"] for item in items] == [202, 422, 202, 422, 422, 422, 422, 422]
    assert [item["error"]["code"] if item["error"] else None for item in items] == [
        None, "InvalidInput", None, "InvalidInput", "InvalidInput", "ProfileNotFound",
        "CallbackRefused", "InvalidInput"]
    assert "colour" in items[1]["error"]["message"]
    assert "async" in items[3]["error"]["message"]
    assert items[5]["error"]["details"]["known"]  # the one error shape, details and all
    for item in (items[1], items[7]):
        assert item["error"]["details"][0]["loc"]
    for index, expected in ((0, "zero\n"), (2, "two\n")):
        accepted = items[index]["invocation"]
        assert accepted["status"] == "queued" and items[index]["error"] is None
        assert accepted["links"]["self"] == f"/v1/invocations/{accepted['id']}"
        body = ended(client, accepted["id"])
        assert (body["status"], body["stdout"], body["mode"]) == ("succeeded", expected,
                                                                  "async")


def test_whole_body_errors_refuse_the_request(tmp_path: Path) -> None:
    with running_gateway(tmp_path, JOBGATE_BATCH_MAX_ITEMS="3",
                         JOBGATE_MAX_REQUEST_BYTES="4096") as gw, gw.client() as c:
        one = {"profile": "bash", "code": "echo hi"}
        r = batch(c, [one] * 4)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"] == {"limit": 3,
                                                "setting": "JOBGATE_BATCH_MAX_ITEMS"}
        cases = [
            (400, {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
            (415, {"content": b'{"invocations": []}', "headers": {"Content-Type": "text/plain"}}),
            (413, {"json": {"invocations": [one | {"code": "x" * 5000}]}}),
            (422, {"json": [one]}),
            (422, {"json": {}}),
            (422, {"json": {"invocations": []}}),
            (422, {"json": {"invocations": one}}),
            (422, {"json": {"invocations": [one], "mode": "sync"}}),
        ]
        for status, request in cases:
            r = c.post(BATCH, **request)
            assert r.status_code == status, (request, r.text)
            assert set(r.json()["error"]) == {"code", "message", "details"}
        r = c.get(BATCH)  # not an invocation named "batch"
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        r = batch(c, [one], key="k" * 201)
        assert r.status_code == 422 and "Idempotency-Key" in r.json()["error"]["message"]
        # None of those started anything; three items at the limit do.
        assert c.get("/v1/invocations").json()["items"] == []
        assert [i["status_code"] for i in items_of(batch(c, [one] * 3))] == [202] * 3


def test_a_batch_sent_again_answers_the_same_invocations(client: httpx.Client) -> None:
    key = f"batch-{uuid.uuid4().hex}"
    own = f"own-{uuid.uuid4().hex}"
    sent = [{"profile": PY, "code": "print('a')"},
            {"profile": "bash", "code": "echo b", "idempotency_key": own},
            {"profile": "nope", "code": "print('c')"}]
    first = items_of(batch(client, sent, key))
    again = items_of(batch(client, sent, key))
    assert [i["status_code"] for i in first] == [i["status_code"] for i in again] == \
        [202, 202, 422]
    ids = accepted_ids(first)
    assert accepted_ids(again) == ids and ids[0] != ids[1]
    # An item whose body changed under the same key is that item's conflict; the others
    # still answer their invocations.
    changed = items_of(batch(client, [sent[0] | {"code": "print('A')"}, sent[1]], key))
    assert changed[0]["status_code"] == 409
    assert changed[0]["error"]["code"] == "IdempotencyConflict"
    assert changed[0]["error"]["details"] == {"invocation_id": ids[0]}
    assert accepted_ids(changed)[1] == ids[1]
    # One namespace with single calls: item 0's key is KEY:0, item 1's its own.
    for single_key, inv_id in ((f"{key}:0", ids[0]), (own, ids[1])):
        r = client.post("/v1/invocations", json={"profile": PY, "code": "print('x')"},
                        headers={"Idempotency-Key": single_key})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["details"] == {"invocation_id": inv_id}
    # Each ran once.
    listed = {i["id"] for i in client.get("/v1/invocations", params={"limit": 200})
              .json()["items"]}
    assert {ids[0], ids[1]} <= listed
    assert ended(client, str(ids[0]))["stdout"] == "a\n"


def test_each_item_has_its_own_callback(client: httpx.Client,
                                        receiver: CallbackReceiver) -> None:
    secrets = [f"whsec_{uuid.uuid4().hex[:32]}", "a-plain-secret-for-item-1", None]
    sent = [{"profile": PY, "code": f"print({i})",
             "callback": {"url": receiver.url} | ({"secret": s} if s else {})}
            for i, s in enumerate(secrets)]
    sent.append({"profile": PY, "code": "print('no callback')"})
    ids = accepted_ids(items_of(batch(client, sent)))
    assert all(ids)
    got = receiver.wait_for(lambda got: len(got) >= 3)
    by_id = {json.loads(cb.body)["id"]: cb for cb in got}
    assert set(by_id) == set(ids[:3])
    for inv_id, secret in zip(ids[:2], secrets[:2], strict=True):
        assert secret is not None
        key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
        payload = Webhook(key).verify(by_id[str(inv_id)].body, by_id[str(inv_id)].headers)
        assert payload["status"] == "succeeded"
    assert ended(client, str(ids[3]))["callback"] is None
    assert len(receiver.received) == 3


def test_a_full_queue_refuses_its_items_and_lets_the_others_in(tmp_path: Path) -> None:
    with running_gateway(tmp_path, JOBGATE_MAX_CONCURRENCY="1", JOBGATE_QUEUE_SIZE="1") as gw, \
            gw.client() as c:
        running = c.post("/v1/invocations", json={
            "profile": "bash", "code": "sleep 60", "mode": "async"}).json()["id"]
        wait_until(lambda: c.get(f"/v1/invocations/{running}").json()["status"] == "running")
        queued = c.post("/v1/invocations", json={
            "profile": "bash", "code": "echo queued", "mode": "async"}).json()["id"]

        def bash_pool() -> dict[str, Any]:
            pools = c.get("/v1/pools").json()["items"]
            return next(p for p in pools if p["profile"] == "bash")

        wait_until(lambda: bash_pool()["queued"] == 1, message="one bash call queued")
        items = items_of(batch(c, [{"profile": "bash", "code": "echo no"},
                                   {"profile": PY, "code": "print('in')"},
                                   {"profile": "bash", "code": "echo no"}]))
        assert [i["status_code"] for i in items] == [429, 202, 429]
        for refused in (items[0], items[2]):
            assert refused["error"]["code"] == "QueueFull"
            assert refused["error"]["details"]["profile"] == "bash"
            assert refused["retry_after"] >= 1
        assert ended(c, items[1]["invocation"]["id"])["stdout"] == "in\n"
        c.post(f"/v1/invocations/{running}/cancel")
        assert ended(c, queued)["stdout"] == "queued\n"
        assert bash_pool()["queued"] == 0


def test_tenants_do_not_see_each_others_items(client: httpx.Client,
                                              client_b: httpx.Client) -> None:
    key = f"tenants-{uuid.uuid4().hex}"
    sent = [{"profile": PY, "code": "print('mine')"}, {"profile": "bash", "code": "echo x"}]
    ids_a = accepted_ids(items_of(batch(client, sent, key)))
    for inv_id in ids_a:
        r = client_b.get(f"/v1/invocations/{inv_id}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "InvocationNotFound"
        assert client_b.post(f"/v1/invocations/{inv_id}/cancel").status_code == 404
    listed_b = {i["id"] for i in client_b.get("/v1/invocations", params={"limit": 200})
                .json()["items"]}
    assert not listed_b & set(ids_a)
    # The same key is B's own: B's batch starts B's invocations.
    ids_b = accepted_ids(items_of(batch(client_b, sent, key)))
    assert all(ids_b) and not set(ids_b) & set(ids_a)
    assert ended(client, str(ids_a[0]))["stdout"] == "mine\n"


def test_the_documented_curl(gateway: GatewayProcess, client: httpx.Client,
                             tmp_path: Path) -> None:
    script = write_block(tmp_path / "batch.sh", "api.md", "sh", "/v1/invocations/batch")
    env = {**os.environ, "JOBGATE_URL": gateway.url, "JOBGATE_KEY": KEY_A}

    def run() -> list[dict[str, Any]]:
        out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                             check=True, timeout=60).stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    first = run()
    assert [i["status_code"] for i in first] == [202, 202, 422]
    assert "async" in first[2]["error"]["message"]
    assert accepted_ids(run()) == accepted_ids(first)  # its Idempotency-Key
    outputs = [ended(client, str(inv_id))["stdout"] for inv_id in accepted_ids(first)[:2]]
    assert outputs == ["42\n", "hello\n"]
