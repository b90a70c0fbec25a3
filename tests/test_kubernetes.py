"""The Kubernetes executor on the test control plane (or the cluster named by
JOBGATE_TEST_KUBECONFIG), with S3 storage on SeaweedFS, over real HTTP. The gateway runs
with exactly the Role in helm/rbac.yaml, through a ServiceAccount token."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import kubectl
from tests.k8s_gateway import (
    PY,
    another_gateway,
    c,
    get_json,
    gw,
    k8s_env,
    pool,
    worker_pod,
)
from tests.support import KEY_A, GatewayProcess, invoke, wait_until

pytestmark = pytest.mark.cluster
__all__ = ["c", "gw", "k8s_env"]  # fixtures
# Calls racing for workers through two replicas: past both pools and into cold starts (the
# real 2-core node starts about 0.7 pods/s with the suite running).
CALLS = 40


def test_worker_job_and_pod_are_hardened(c: httpx.Client, k8s_env: dict[str, Any]) -> None:
    body = invoke(c, profile=PY, code="print('hardened')").json()
    assert body["status"] == "succeeded", body
    pod = worker_pod(k8s_env, body["id"])
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "jobgate"
    assert labels["jobgate.io/profile"] == PY
    assert labels["jobgate.io/state"] == "claimed"
    assert labels["jobgate.io/invocation"] == body["id"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    [container] = spec["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]
    workspace = next(v for v in spec["volumes"] if v["name"] == "workspace")
    assert workspace["emptyDir"]["sizeLimit"]
    # Per-call settings never reach the pod spec: the code is not in it.
    assert "hardened" not in json.dumps(spec)
    job_name = labels.get("job-name") or labels.get("batch.kubernetes.io/job-name")
    job = get_json(k8s_env, "job", job_name)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert job["spec"]["ttlSecondsAfterFinished"] == 5
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "jobgate"


def test_default_deny_network_policy(c: httpx.Client, k8s_env: dict[str, Any]) -> None:
    policy = get_json(k8s_env, "networkpolicy", "jobgate-workers-default-deny")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    [ingress] = spec["ingress"]
    assert ingress["from"][0]["podSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "gateway"
    assert all("ipBlock" not in peer or peer["ipBlock"]["cidr"] != "0.0.0.0/0"
               for rule in spec["egress"] for peer in rule.get("to", []))
    allowed = get_json(k8s_env, "networkpolicy", "jobgate-workers-network-allowed")
    assert allowed["spec"]["podSelector"]["matchLabels"]["jobgate.io/network"] == "allowed"


def test_warm_claim_then_the_pool_refills(c: httpx.Client) -> None:
    wait_until(lambda: pool(c)["idle"] >= pool(c)["min_idle"], timeout_s=60,
               message="pool at its minimum")
    first = invoke(c, profile=PY, code="print(1)").json()
    second = invoke(c, profile=PY, code="print(2)").json()
    assert first["warm"] is True and second["warm"] is True
    assert first["worker"] != second["worker"]
    wait_until(lambda: pool(c)["idle"] >= pool(c)["min_idle"], timeout_s=60,
               message="pool refilled")


def test_worker_pod_deleted_mid_run_is_worker_lost(c: httpx.Client,
                                                   k8s_env: dict[str, Any]) -> None:
    inv = invoke(c, profile=PY, code="import time; time.sleep(60)", mode="async",
                 max_attempts=1).json()["id"]
    wait_until(lambda: c.get(f"/v1/invocations/{inv}").json()["status"] == "running")
    pod = worker_pod(k8s_env, inv)["metadata"]["name"]
    kubectl(k8s_env["cluster"], "-n", k8s_env["namespace"], "delete", "pod", pod,
            "--grace-period=0", "--force", "--wait=false")
    body = wait_until(lambda: (r := c.get(f"/v1/invocations/{inv}").json())["status"]
                      not in ("queued", "running") and r, timeout_s=30)
    assert (body["status"], body["reason"], body["attempts"]) == ("error", "WorkerLost", 1), \
        body


def test_worker_pod_deleted_mid_run_runs_again_once_it_is_gone(
        c: httpx.Client, k8s_env: dict[str, Any]) -> None:
    code = ("import os, time\nattempt = os.environ['JOBGATE_ATTEMPT']\nprint(attempt)\n"
            "if attempt == '1':\n    time.sleep(60)\n")
    inv = invoke(c, profile=PY, code=code, mode="async").json()["id"]
    wait_until(lambda: c.get(f"/v1/invocations/{inv}").json()["status"] == "running")
    first = worker_pod(k8s_env, inv)["metadata"]["name"]
    kubectl(k8s_env["cluster"], "-n", k8s_env["namespace"], "delete", "pod", first,
            "--wait=false")  # a graceful delete: the runner is sent SIGTERM
    body = wait_until(lambda: (r := c.get(f"/v1/invocations/{inv}").json())["status"]
                      not in ("queued", "running") and r, timeout_s=90, interval_s=0.5)
    assert (body["status"], body["attempts"], body["stdout"]) == ("succeeded", 2, "2\n"), body
    [lost] = body["attempt_history"]
    assert (lost["attempt"], lost["reason"], lost["worker"]) == (1, "WorkerLost", first)
    assert body["worker"] != first
    # The second attempt started only once the first one's pod was gone.
    assert body["started_at"] >= lost["ended_at"]
    pods = get_json(k8s_env, "pods", "-l", f"jobgate.io/invocation={inv}")["items"]
    assert first not in [p["metadata"]["name"] for p in pods
                         if p["status"].get("phase") not in ("Succeeded", "Failed")]


def test_unpullable_image_fails_within_its_grace(c: httpx.Client) -> None:
    started = time.monotonic()
    body = invoke(c, profile="broken", code="print(1)").json()
    assert (body["status"], body["reason"]) == ("error", "ImagePullFailed"), body
    assert "could not be pulled" in body["message"]
    assert time.monotonic() - started < 30


def test_finished_jobs_disappear_after_their_ttl(c: httpx.Client,
                                                 k8s_env: dict[str, Any]) -> None:
    body = invoke(c, profile="bash", code="echo done").json()
    assert body["status"] == "succeeded"
    pod = worker_pod(k8s_env, body["id"])
    labels = pod["metadata"]["labels"]
    job = labels.get("job-name") or labels.get("batch.kubernetes.io/job-name")

    def gone() -> bool:
        jobs = get_json(k8s_env, "jobs", "-l", "app.kubernetes.io/managed-by=jobgate")
        return job not in {j["metadata"]["name"] for j in jobs["items"]}

    wait_until(gone, timeout_s=90, interval_s=1, message="finished Job deleted by its TTL")
    pods = get_json(k8s_env, "pods", "-l", f"jobgate.io/invocation={body['id']}")["items"]
    wait_until(lambda: not get_json(k8s_env, "pods", "-l",
                                    f"jobgate.io/invocation={body['id']}")["items"],
               timeout_s=60, interval_s=1, message="its pod garbage-collected")
    assert pods is not None


def test_cancel_deletes_the_worker_job(c: httpx.Client, k8s_env: dict[str, Any]) -> None:
    inv = invoke(c, profile="bash", code="sleep 60", mode="async").json()["id"]
    wait_until(lambda: c.get(f"/v1/invocations/{inv}").json()["status"] == "running")
    body = c.post(f"/v1/invocations/{inv}/cancel").json()
    assert (body["status"], body["reason"]) == ("cancelled", "Cancelled")


def test_api_writes_per_warm_invocation(c: httpx.Client) -> None:
    def calls() -> dict[str, float]:
        out = {}
        for line in c.get("/metrics").text.splitlines():
            if line.startswith("jobgate_kubernetes_api_calls{"):
                verb = line.split('verb="', 1)[1].split('"', 1)[0]
                out[verb] = float(line.rsplit(" ", 1)[1])
        return out

    def writes(snapshot: dict[str, float]) -> float:
        return sum(n for verb, n in snapshot.items()
                   if verb.split(" ")[0] in ("create", "patch", "delete", "replace")
                   and "leases" not in verb)

    wait_until(lambda: pool(c)["idle"] >= pool(c)["min_idle"], timeout_s=60)
    before = calls()
    n = 5
    for _ in range(n):
        body = invoke(c, profile=PY, code="print(1)").json()
        assert body["warm"] is True
        wait_until(lambda: pool(c)["idle"] >= pool(c)["min_idle"]
                   and pool(c)["starting"] == 0, timeout_s=60)
    after = calls()
    # The hot path writes exactly once per call: its claim. The pool's replacement worker
    # is the other write; none of them may cost more (retries, double claims, churn).
    claims = after.get("patch pods", 0) - before.get("patch pods", 0)
    assert claims == n, claims
    per_invocation = (writes(after) - writes(before)) / n
    assert 1.0 <= per_invocation <= 2.0, per_invocation


def test_two_replicas_never_share_a_worker(gw: GatewayProcess,
                                           k8s_env: dict[str, Any]) -> None:
    second = another_gateway(k8s_env, "gw2").start(timeout_s=120)
    try:
        async def main() -> list[dict[str, Any]]:
            clients = [httpx.AsyncClient(base_url=g.url, timeout=180,
                                         headers={"Authorization": f"Bearer {KEY_A}"},
                                         limits=httpx.Limits(max_connections=100))
                       for g in (gw, second)]

            async def one(i: int) -> dict[str, Any]:
                client = clients[i % 2]
                r = await client.post("/v1/invocations", json={
                    "profile": PY, "mode": "async",
                    "code": f"print({i})"})
                assert r.status_code == 202, r.text
                location = r.headers["location"]
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    body = (await client.get(location, params={"wait": 20})).json()
                    if body["status"] not in ("queued", "running"):
                        return dict(body)
                raise AssertionError(f"{location} did not finish")

            try:
                return await asyncio.gather(*(one(i) for i in range(CALLS)))
            finally:
                for client in clients:
                    await client.aclose()

        results = asyncio.run(main())
    finally:
        second.stop()
    workers = [r["worker"] for r in results]
    assert all(r["status"] == "succeeded" for r in results), [
        (r["status"], r["reason"], r["message"], r["stderr"][-300:])
        for r in results if r["status"] != "succeeded"][:3]
    assert len(set(workers)) == CALLS, "a worker served two invocations"
    assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(CALLS)]


def test_gateway_killed_mid_run_the_invocation_still_finishes(
        k8s_env: dict[str, Any], tmp_path: Path) -> None:
    gateway = another_gateway(k8s_env, "gw-crash")
    gateway.start(timeout_s=120)
    try:
        with gateway.client() as c:
            inv = invoke(c, profile=PY, mode="async",
                         code="import time, json\ntime.sleep(4)\nprint('survived')\n"
                              "json.dump({'ok': True}, open('result.json', 'w'))\n"
                              "open('artifacts/a.txt', 'w').write('kept')").json()["id"]
            wait_until(lambda: c.get(f"/v1/invocations/{inv}").json()["status"] == "running")
        gateway.kill()
        gateway.start(timeout_s=120)
        with gateway.client() as c:
            body = wait_until(
                lambda: (r := c.get(f"/v1/invocations/{inv}").json())["status"]
                not in ("queued", "running") and r, timeout_s=90, interval_s=0.5,
                message="the invocation finished after the restart")
            assert body["status"] == "succeeded", body
            assert body["stdout"] == "survived\n"
            assert body["result"] == {"ok": True}
            art = c.get(f"/v1/invocations/{inv}/artifacts/a.txt", follow_redirects=True)
            assert art.content == b"kept"
    finally:
        gateway.stop()
