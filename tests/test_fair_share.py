"""Tenants that cannot hurt each other, over real HTTP against real gateways (every
configuration: ``configured_gateway``): one tenant's flood does not hold another's call
behind it, weights share busy workers, and a tenant's limits answer 429/422 at admission
with nothing stored."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from loadtests.flood import flood, sleeper, timed_call
from tests.support import KEY_A, KEY_B, GatewayProcess, wait_until

Start = Callable[[dict[str, str]], GatewayProcess]
PY = "python3.11"
RUN_S = 0.2  # one of A's calls: a worker busy this long
SLOTS = 4  # JOBGATE_MAX_CONCURRENCY: the profile's workers at once
FLOOD = 1000
# The longest a Kubernetes worker pod takes to start on the test node under load.
WORKER_START_S = 5.0


def settings(limits: dict[str, Any], **env: str) -> dict[str, str]:
    return {"JOBGATE_TENANT_LIMITS": json.dumps(limits), "JOBGATE_SHUTDOWN_GRACE_S": "1",
            **env}


def usage(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/v1/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_one_call_of_b_is_not_held_behind_a_flood_of_a(configured_gateway: Start) -> None:
    gw = configured_gateway(settings(
        {"defaults": {"max_queued": FLOOD}},
        JOBGATE_MAX_CONCURRENCY=str(SLOTS), JOBGATE_QUEUE_SIZE=str(2 * FLOOD),
        JOBGATE_OPERATOR_TENANTS="tenant-b"))
    with gw.client(KEY_A) as a, gw.client(KEY_B) as b:
        # B's call alone, the same code: what one call costs here, flood or not.
        alone = statistics.median(timed_call(b, PY, sleeper(RUN_S))[0] for _ in range(3))
        items = asyncio.run(flood(gw.url, KEY_A, calls=FLOOD, profile=PY,
                                  code=sleeper(RUN_S)))
        assert [i["status_code"] for i in items] == [202] * FLOOD
        flooded = usage(a)
        assert flooded["running"] == SLOTS and flooded["queued"] >= FLOOD // 2, flooded

        latency, answer = timed_call(b, PY, sleeper(RUN_S))
        after = usage(a)
        # B waits for one slot to free: at most one of A's runs (and its overhead, a call
        # of its own), then runs like a call alone; 1 s of slack for a machine that runs
        # A's flood meanwhile. First come, first served, B would wait for A's queue.
        # On Kubernetes A's flood takes every warm pod as it comes: B's turn may then wait
        # for a pod to start (the test node starts about one a second, slower under the
        # flood), which no scheduler can shorten.
        start_s = WORKER_START_S if getattr(gw, "config", "") == "kubernetes" else 0.0
        bound = RUN_S + 2 * alone + 1.0 + start_s
        done = flooded["queued"] - after["queued"]
        first_come = after["queued"] * latency / max(done, 1)
        print(f"\nB alone {alone * 1000:.0f} ms; B under A's flood of {FLOOD} "
              f"({flooded['queued']} queued): {latency * 1000:.0f} ms (bound "
              f"{bound * 1000:.0f} ms); first come, it would wait ~{first_come:.0f} s")
        assert answer["status"] == "succeeded", answer
        assert latency <= bound, (latency, bound)
        assert after["queued"] > SLOTS * 10, "A's flood was over before B's call"

        # Seen by both tenants' usage, the operator's view and the metrics.
        assert usage(b)["running"] == 0 and usage(b)["queued"] == 0
        assert a.get("/v1/admin/usage").status_code == 403
        every = {u["tenant"]: u for u in b.get("/v1/admin/usage").json()["items"]}
        assert every["tenant-a"]["queued"] > 0 and every["tenant-b"]["queued"] == 0
        text = a.get("/metrics").text
        assert (metric(text, "jobgate_tenant_queued", tenant="tenant-a") or 0) > 0
        assert metric(text, "jobgate_tenant_running", tenant="tenant-a") == SLOTS
        assert metric(text, "jobgate_tenant_queued", tenant="tenant-b") == 0
        assert metric(text, "jobgate_tenant_admitted_total", tenant="tenant-a") == FLOOD
        assert metric(text, "jobgate_tenant_admitted_total", tenant="tenant-b") == 4


def test_a_weight_2_tenant_gets_twice_the_share(configured_gateway: Start) -> None:
    slots, calls, run_s = 3, 75, 0.1
    gw = configured_gateway(settings(
        {"tenants": {"tenant-a": {"weight": 2}}}, JOBGATE_MAX_CONCURRENCY=str(slots)))
    with gw.client(KEY_B) as b:
        # B holds every slot while both floods go in, then lets go: both are waiting all
        # along. The blockers end when cancelled, not after a sleep that a slow machine
        # (a cold run, on Kubernetes) can outlast while the floods are still going in.
        blockers = [b.post("/v1/invocations", json={
            "profile": PY, "code": sleeper(120), "mode": "async"}).json()["id"]
            for _ in range(slots)]

        async def both() -> list[list[dict[str, Any]]]:
            return list(await asyncio.gather(*(
                flood(gw.url, key, calls=calls, profile=PY, code=sleeper(run_s))
                for key in (KEY_A, KEY_B))))

        floods = asyncio.run(both())
        assert usage(b)["running"] == slots, "the blockers ended before the floods were in"
        for blocker in blockers:
            assert b.post(f"/v1/invocations/{blocker}/cancel").json()["status"] == "cancelled"
        started: list[tuple[datetime, str]] = []
        for key, items in zip((KEY_A, KEY_B), floods, strict=True):
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"},
                              timeout=120) as c:
                for item in items:
                    record = c.get(f"/v1/invocations/{item['invocation']['id']}",
                                   params={"wait": 30}).json()
                    assert record["status"] == "succeeded", record
                    started.append((datetime.fromisoformat(record["started_at"]),
                                    "a" if key == KEY_A else "b"))
    # While both have calls waiting (A's run out after ~3/2 * calls grants): A's share.
    window = [tenant for _, tenant in sorted(started)][:calls]
    share_a = window.count("a") / len(window)
    print(f"\nA (weight 2) took {share_a:.2f} of the first {len(window)} turns")
    assert 0.55 <= share_a <= 0.78, share_a


def test_over_limit_submissions_are_refused_and_store_nothing(
        configured_gateway: Start) -> None:
    gw = configured_gateway(settings(
        {"tenants": {"tenant-a": {"max_queued": 2, "max_running": 1},
                     "tenant-b": {"rate_per_s": 0.5, "burst": 2, "max_ttl_s": 600}}},
        JOBGATE_MAX_CONCURRENCY="2", JOBGATE_OPERATOR_TENANTS="tenant-b"))
    with gw.client(KEY_A) as a, gw.client(KEY_B) as b:
        # max_running 1: A's second call waits its turn though a slot is free.
        ids = [a.post("/v1/invocations", json={"profile": PY, "code": sleeper(30),
                                               "mode": "async"}).json()["id"]
               for _ in range(3)]
        wait_until(lambda: usage(a)["running"] == 1 and usage(a)["queued"] == 2,
                   message="one of A's running, two waiting")
        listed = len(a.get("/v1/invocations").json()["items"])
        refused = a.post("/v1/invocations", json={"profile": PY, "code": "print(1)",
                                                  "mode": "async"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "TenantQueueFull"
        assert int(refused.headers["retry-after"]) >= 1
        item = a.post("/v1/invocations/batch", json={"invocations": [
            {"profile": PY, "code": "print(1)"}]}).json()["items"][0]
        assert (item["status_code"], item["error"]["code"]) == (429, "TenantQueueFull")
        assert item["retry_after"] >= 1
        assert len(a.get("/v1/invocations").json()["items"]) == listed  # nothing stored

        # B's rate is a burst of 2, then 0.5/s. Its calls are async so that the three are
        # admitted back to back: sync ones that wait for a cold worker (a second each on
        # Kubernetes) would earn the third its token.
        def submit_b() -> httpx.Response:
            return b.post("/v1/invocations", json={"profile": PY, "code": "print(1)",
                                                   "mode": "async"})

        first = [submit_b() for _ in range(2)]
        assert [r.status_code for r in first] == [202, 202], [r.text for r in first]
        limited = submit_b()
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["code"] == "RateLimited"
        retry = int(limited.headers["retry-after"])
        assert 1 <= retry <= 2
        time.sleep(retry)
        assert submit_b().status_code == 202
        # B (the other slot) is not held by A's max_running: its calls run and end.
        ran = [f"/v1/invocations/{r.json()['id']}" for r in first]
        wait_until(lambda: all(b.get(url).json()["status"] == "succeeded" for url in ran),
                   message="B's calls ran beside A's")

        # max_ttl_s: asking more is refused; asking nothing gets the tenant's maximum.
        time.sleep(2.5)  # a token for the call that is kept
        long = b.post("/v1/invocations", json={"profile": PY, "code": "print(1)",
                                               "ttl_s": 601})
        assert long.status_code == 422, long.text
        assert long.json()["error"]["code"] == "TtlTooLong"
        assert "600" in long.json()["error"]["message"]
        kept = b.post("/v1/invocations", json={"profile": PY, "code": "print(1)"}).json()
        lifetime = (datetime.fromisoformat(kept["expires_at"])
                    - datetime.fromisoformat(kept["created_at"]))
        assert lifetime.total_seconds() == 600

        limits = usage(b)["limits"]
        assert (limits["rate_per_s"], limits["burst"], limits["max_ttl_s"]) == (0.5, 2, 600)
        # B's one kept call: its request and record, counted as admission charged them.
        assert usage(b)["stored_bytes"] >= 4096
        text = a.get("/metrics").text
        assert metric(text, "jobgate_tenant_refused_total", tenant="tenant-a",
                      reason="TenantQueueFull") == 2
        assert metric(text, "jobgate_tenant_refused_total", tenant="tenant-b",
                      reason="RateLimited") == 1
        assert metric(text, "jobgate_tenant_refused_total", tenant="tenant-b",
                      reason="TtlTooLong") == 1

        # A cancelled waiter leaves its queue; nothing is left counted once all ended.
        assert a.post(f"/v1/invocations/{ids[2]}/cancel").json()["status"] == "cancelled"
        assert usage(a)["queued"] == 1
        for inv in ids[:2]:
            a.post(f"/v1/invocations/{inv}/cancel")
        wait_until(lambda: usage(a)["running"] == usage(a)["queued"] == 0,
                   message="A's counts back to zero")


def test_two_replicas_on_one_bucket_each_hold_b_out_of_a_flood(
        request: Any, tmp_path: Any) -> None:
    """The same on two replicas sharing S3: A floods both, B's one call through either is
    served within the bound (the fair share is each replica's, of its own workers)."""
    import uuid

    from tests.conftest import start_configured

    bucket = f"two-{uuid.uuid4().hex[:8]}"
    flood_each = FLOOD // 2
    env = settings({"defaults": {"max_queued": FLOOD}}, JOBGATE_MAX_CONCURRENCY=str(SLOTS),
                   JOBGATE_QUEUE_SIZE=str(2 * FLOOD))
    replicas = []
    try:
        for name in ("r1", "r2"):
            (tmp_path / name).mkdir()
            replicas.append(start_configured(request, "s3", tmp_path / name, env,
                                             bucket=bucket))

        async def both() -> None:
            floods = await asyncio.gather(*(
                flood(gw.url, KEY_A, calls=flood_each, profile=PY, code=sleeper(RUN_S))
                for gw in replicas))
            assert all(i["status_code"] == 202 for items in floods for i in items)

        with replicas[1].client(KEY_B) as b:
            alone = statistics.median(timed_call(b, PY, sleeper(RUN_S))[0]
                                      for _ in range(3))
            asyncio.run(both())
            for gw in replicas:
                with gw.client(KEY_A) as a:
                    assert usage(a)["queued"] > SLOTS * 10, "the flood was over too soon"
            bound = RUN_S + 2 * alone + 1.0
            for gw in replicas:
                with gw.client(KEY_B) as b_here:
                    latency, answer = timed_call(b_here, PY, sleeper(RUN_S))
                print(f"\nreplica {gw.port}: B under A's flood {latency * 1000:.0f} ms "
                      f"(alone {alone * 1000:.0f} ms, bound {bound * 1000:.0f} ms)")
                assert answer["status"] == "succeeded", answer
                assert latency <= bound, (latency, bound)
    finally:
        for gw in replicas:
            gw.stop()
