"""Many invocations at once, the bounded queue, TTL cleanup, and crash recovery."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.support import KEY_A, GatewayProcess, invoke, running_gateway, wait_until

PY = "python3.11"


def test_200_invocations_at_once_get_their_own_results(gateway: GatewayProcess) -> None:
    # On Kubernetes nearly every call is a cold pod (a worker serves one call) on the real
    # 2-core test node, which starts about 0.7 pods/s with the suite running (200 took
    # 288 s): 60 at once there, past the pools and the 32-call concurrency limit, so calls
    # still queue. They go async and are long-polled, since what is tested is the results.
    on_kubernetes = getattr(gateway, "config", "") == "kubernetes"
    mode = "async" if on_kubernetes else "sync"
    calls = 60 if on_kubernetes else 200

    async def main() -> list[tuple[int, dict]]:  # type: ignore[type-arg]
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120, limits=limits,
                                     headers={"Authorization": f"Bearer {KEY_A}"}) as c:
            async def one(i: int) -> tuple[int, dict]:  # type: ignore[type-arg]
                code = (f"import json, os\nprint({i})\n"
                        f"json.dump({{'i': {i}, 'inv': os.environ['JOBGATE_INVOCATION_ID']}},"
                        " open('result.json', 'w'))")
                r = await c.post("/v1/invocations", json={"profile": PY, "code": code,
                                                          "input": {"i": i}, "mode": mode})
                assert r.status_code == (200 if mode == "sync" else 202), r.text
                body = r.json()
                deadline = time.monotonic() + 600
                while body["status"] in ("queued", "running"):
                    assert time.monotonic() < deadline, f"{body['id']} did not finish"
                    body = (await c.get(f"/v1/invocations/{body['id']}",
                                        params={"wait": 20})).json()
                return i, body

            return await asyncio.gather(*(one(i) for i in range(calls)))

    results = asyncio.run(main())
    ids = set()
    for i, body in results:
        assert body["status"] == "succeeded", body
        assert body["stdout"] == f"{i}\n"
        assert body["result"] == {"i": i, "inv": body["id"]}
        ids.add(body["id"])
    assert len(ids) == calls


def test_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    with running_gateway(tmp_path, JOBGATE_MAX_CONCURRENCY="1", JOBGATE_QUEUE_SIZE="2") as gw, \
            gw.client() as c:
        running = invoke(c, profile="bash", code="sleep 20", mode="async").json()["id"]
        wait_until(lambda: c.get(f"/v1/invocations/{running}").json()["status"] == "running")
        queued = [invoke(c, profile="bash", code="echo q", mode="async") for _ in range(2)]
        assert all(r.status_code == 202 for r in queued)
        refused = invoke(c, profile="bash", code="echo no", mode="async")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "QueueFull"
        assert int(refused.headers["retry-after"]) >= 1
        cancelled = c.post(f"/v1/invocations/{running}/cancel").json()
        for r in queued:
            done = c.get(f"/v1/invocations/{r.json()['id']}", params={"wait": 20}).json()
            # They waited for their turn (the one slot), then took a worker that was idle
            # by then: warm says the worker was ready, not that nobody waited.
            assert done["status"] == "succeeded"
            assert done["started_at"] >= cancelled["finished_at"]


def test_janitor_removes_expired_invocations_and_nothing_else(tmp_path: Path) -> None:
    with running_gateway(tmp_path, JOBGATE_JANITOR_INTERVAL_S="0.5") as gw, gw.client() as c:
        short = invoke(c, profile=PY, ttl_s=1,
                       code="open('artifacts/a.txt','w').write('x'); print(1)").json()
        keep = invoke(c, profile=PY, code="print(2)", ttl_s=3600).json()
        objects = gw.data_dir / "objects" / "tenant-a"
        assert (objects / short["id"] / "artifacts" / "a.txt").exists()
        wait_until(lambda: c.get(f"/v1/invocations/{short['id']}").status_code == 404,
                   timeout_s=90, message="expired invocation deleted")
        assert not (objects / short["id"]).exists()
        assert c.get(f"/v1/invocations/{keep['id']}").json()["stdout"] == "2\n"
        assert (objects / keep["id"] / "record.json").exists()
        assert "jobgate_janitor_deleted_objects_total" in c.get("/metrics").text


def test_accepted_async_work_survives_a_gateway_crash(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data", env={"JOBGATE_MAX_CONCURRENCY": "1"}).start()
    try:
        with gw.client() as c:
            # One attempt only: lost with the gateway, it is not run again.
            running = invoke(c, profile="bash", code="sleep 30", mode="async",
                             max_attempts=1).json()["id"]
            wait_until(lambda: c.get(f"/v1/invocations/{running}").json()["status"]
                       == "running")
            queued = [invoke(c, profile="bash", code=f"echo recovered-{i}",
                             mode="async").json()["id"] for i in range(3)]
        gw.kill()  # SIGKILL: no drain, no goodbye
        gw.start()
        with gw.client() as c:
            for i, inv in enumerate(queued):
                body = c.get(f"/v1/invocations/{inv}", params={"wait": 20}).json()
                assert body["status"] == "succeeded", body
                assert body["stdout"] == f"recovered-{i}\n"
            lost = c.get(f"/v1/invocations/{running}", params={"wait": 20}).json()
            assert (lost["status"], lost["reason"]) == ("error", "WorkerLost")
            assert "restarted" in lost["message"]
            assert (lost["attempts"], lost["max_attempts"]) == (1, 1)
    finally:
        gw.stop()


def test_sigterm_drains_in_flight_sync_calls(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data").start()
    results: list[httpx.Response] = []

    async def call() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30,
                                     headers={"Authorization": f"Bearer {KEY_A}"}) as c:
            results.append(await c.post("/v1/invocations", json={
                "profile": PY, "code": "import time; time.sleep(1.5); print('drained')"}))

    async def main() -> None:
        task = asyncio.create_task(call())
        await asyncio.sleep(0.7)
        stopper = asyncio.create_task(asyncio.to_thread(gw.stop))
        await task
        await stopper

    started = time.monotonic()
    asyncio.run(main())
    assert results[0].status_code == 200
    assert results[0].json()["stdout"] == "drained\n"
    assert time.monotonic() - started < 15
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the status is -15.
    assert gw.proc is not None and gw.proc.returncode in (0, -15)
    assert "Application shutdown complete" in gw.log()


def test_sigterm_answers_a_sync_call_still_running_at_the_grace_with_202(
        tmp_path: Path) -> None:
    # The call outlives the grace: the stopping gateway answers 202 and the invocation's
    # Location within the grace instead of leaving uvicorn to cancel the request (a 500),
    # and the next start finishes what it left.
    gw = GatewayProcess(tmp_path / "data", env={"JOBGATE_SHUTDOWN_GRACE_S": "2"}).start()
    results: list[tuple[float, httpx.Response]] = []

    async def call() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30,
                                     headers={"Authorization": f"Bearer {KEY_A}"}) as c:
            r = await c.post("/v1/invocations", json={
                "profile": PY, "code": "import time; time.sleep(8); print('late')"})
            results.append((time.monotonic(), r))

    async def main() -> float:
        task = asyncio.create_task(call())
        await asyncio.sleep(1.0)
        signalled = time.monotonic()
        stopper = asyncio.create_task(asyncio.to_thread(gw.stop))
        await task
        await stopper
        return signalled

    signalled = asyncio.run(main())
    answered_at, r = results[0]
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] in ("queued", "running")
    assert r.headers["location"].endswith(f"/v1/invocations/{body['id']}")
    assert answered_at - signalled < 2 + 3  # the grace, and time to answer
    assert "Application shutdown complete" in gw.log()
    gw.start()
    try:
        with gw.client() as c:
            done = wait_until(lambda: (b := c.get(f"/v1/invocations/{body['id']}",
                                                  params={"wait": 20}).json())["status"]
                              not in ("queued", "running") and b, timeout_s=60,
                              message="the invocation ended after the restart")
            assert done["status"] in ("succeeded", "error"), done
    finally:
        gw.stop()
