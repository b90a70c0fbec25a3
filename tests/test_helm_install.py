"""The chart installed the way users install it (`helm install`), on the test cluster's
real node, with the gateway and runtime images built from the repository's Dockerfiles and
S3 on SeaweedFS; then used over its Service (kube-proxy), as a client in the cluster
would. The gateway runs under the chart's ServiceAccount, so a verb missing from its Role
fails here. The tests run in file order on one release: the upgrade, the killed replica
and the uninstall come last."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.callbacks.signing import verify
from tests.backends import kubectl
from tests.support import KEY_A, CallbackReceiver, key_entry, wait_until

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[1] / "helm" / "jobgate"
# A Service address of our choosing in the test cluster's range: the workers are told the
# gateway's URL by address, since the test cluster has no DNS (workers use dnsPolicy Default).
SERVICE_IP = "10.0.0.200"
TINY = {"request_cpu": 0.005, "request_memory_mb": 48}
CALLBACK_SECRET = "the-release-callback-secret-0123456789"
TERMINAL = {"succeeded", "failed", "timeout", "cancelled", "error"}


def helm(cluster: Any, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([str(Path(cluster.bin_dir) / "helm"), "--kubeconfig",
                           str(cluster.kubeconfig), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=HELM_ENV)
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])}: {proc.stderr}\n{proc.stdout}")
    return proc.stdout


HELM_ENV: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Helm's caches and repositories in a directory of the test's, not the user's.
    home = tmp_path_factory.mktemp("helm-home")
    HELM_ENV.update({"PATH": "/usr/bin:/bin", "HOME": str(home),
                     "HELM_CACHE_HOME": str(home / "cache"),
                     "HELM_CONFIG_HOME": str(home / "config"),
                     "HELM_DATA_HOME": str(home / "data")})


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def release(k8s_cluster: Any, seaweedfs: Any, receiver: CallbackReceiver,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not k8s_cluster.local:
        pytest.skip("installs the locally built images: only on the suite's own cluster")
    namespace = f"helm-{uuid.uuid4().hex[:6]}"
    s3 = k8s_cluster.expose_to_pods(seaweedfs.ports["s3"])
    # The receiver on this machine's loopback, reached from the gateway pods through a
    # forwarder on the node's services address: the one private address let through.
    hook = k8s_cluster.expose_to_pods(receiver.server.server_address[1])
    values = {
        "image": {"pullPolicy": "Never"},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
        "auth": {"apiKeys": [key_entry("tenant-a", KEY_A)], "callbackSecret": CALLBACK_SECRET},
        "extraEnv": [{"name": "JOBGATE_CALLBACK_ALLOW", "value": f"{hook.split(':')[0]}/32"}],
        "s3": {"endpoint": f"http://{s3}", "bucket": f"helm-{namespace}", "createBucket": True,
               "credentials": {"accessKeyId": seaweedfs.access_key,
                               "secretAccessKey": seaweedfs.secret_key}},
        "workers": {"egressCidrs": [f"{s3.split(':')[0]}/32"], "imagePullPolicy": "Never",
                    "dnsPolicy": "Default"},  # the test cluster has no DNS
        "service": {"clusterIP": SERVICE_IP},
        "profiles": {
            "python3.11": {**TINY, "pool": {"min": 1, "max": 2}},
            "bash": {**TINY, "pool": {"min": 0, "max": 1}},
            "node20": {**TINY, "pool": {"min": 0, "max": 1}},
        },
    }
    work = tmp_path_factory.mktemp("helm")
    values_file = work / "values.json"  # JSON is YAML
    values_file.write_text(json.dumps(values))
    helm(k8s_cluster, "install", "jobgate", str(CHART), "--namespace", namespace,
         "--create-namespace", "--values", str(values_file), "--wait", "--timeout", "240s")
    state = {"namespace": namespace, "cluster": k8s_cluster, "installed": True,
             "url": f"http://{SERVICE_IP}:8080", "hook": f"http://{hook}/hook"}
    try:
        yield state
    finally:
        if state["installed"]:
            helm(k8s_cluster, "uninstall", "jobgate", "--namespace", namespace, "--wait",
                 "--timeout", "120s")
        kubectl(k8s_cluster, "delete", "namespace", namespace, "--wait=false")


@pytest.fixture
def client(release: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=release["url"], timeout=120, trust_env=False,
                      headers={"Authorization": f"Bearer {KEY_A}"}) as c:
        yield c


def test_the_installed_gateway_is_ready_under_its_own_service_account(
        release: dict[str, Any]) -> None:
    pods = json.loads(kubectl(release["cluster"], "-n", release["namespace"], "get", "pods",
                              "-l", "app.kubernetes.io/component=gateway", "-o", "json"))
    assert len(pods["items"]) == 2
    for pod in pods["items"]:
        assert pod["spec"]["serviceAccountName"] == "jobgate"
        assert all(s["ready"] for s in pod["status"]["containerStatuses"]), pod["status"]


def test_a_call_through_the_service_runs_in_a_worker_of_the_release(
        client: httpx.Client, release: dict[str, Any]) -> None:
    body = client.post("/v1/invocations", json={
        "profile": "python3.11", "code": "import json\nprint('from the chart')\n"
        "json.dump({'ok': 1}, open('result.json', 'w'))\n"
        "open('artifacts/a.txt', 'w').write('kept')"}).json()
    assert body["status"] == "succeeded", body
    assert body["stdout"] == "from the chart\n" and body["result"] == {"ok": 1}
    worker = json.loads(kubectl(release["cluster"], "-n", release["namespace"], "get", "pod",
                                body["worker"], "-o", "json"))
    assert worker["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    # The artifact through its presigned URL (S3 on this machine, through the forwarder).
    art = client.get(f"/v1/invocations/{body['id']}/artifacts/a.txt", follow_redirects=True)
    assert art.content == b"kept"


def test_the_chart_created_the_workers_policies(release: dict[str, Any]) -> None:
    def policies() -> set[str] | None:
        found = json.loads(kubectl(release["cluster"], "-n", release["namespace"], "get",
                                   "networkpolicies", "-o", "json"))
        names = {p["metadata"]["name"] for p in found["items"]}
        return names or None
    names = wait_until(policies, timeout_s=30, message="the workers' policies")
    assert "jobgate-workers-default-deny" in names, names


def test_an_async_call_through_the_service_calls_back_signed(
        client: httpx.Client, release: dict[str, Any], receiver: CallbackReceiver) -> None:
    r = client.post("/v1/invocations", json={
        "profile": "python3.11", "code": "print('called back')", "mode": "async",
        "callback": {"url": release["hook"]}})
    assert r.status_code == 202, r.text
    inv = r.json()["id"]
    got = receiver.wait_for(lambda cbs: any(json.loads(cb.body)["id"] == inv for cb in cbs),
                            timeout_s=120)
    [cb] = [cb for cb in got if json.loads(cb.body)["id"] == inv]
    # Signed with the release's secret (auth.callbackSecret), and only with it.
    assert verify(CALLBACK_SECRET, cb.body, cb.headers["x-jobgate-signature"])
    assert not verify("another-secret-of-some-length-0000", cb.body,
                      cb.headers["x-jobgate-signature"])
    assert cb.json()["status"] == "succeeded" and cb.json()["stdout"] == "called back\n"


# -- the chart's manifests, as the API server sees them ----------------------------------

DRY_RUN_MATRIX: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "defaults": ({"auth": {"apiKeys": [key_entry("tenant-a", KEY_A)]}}, ()),
    "external S3, existing secrets": ({
        "auth": {"existingSecret": "my-jobgate-auth"},
        "s3": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "bucket": "fns",
               "region": "eu-west-1", "credentials": {"existingSecret": "my-s3"}},
        "workers": {"egressCidrs": ["52.218.0.0/17"]}}, ()),
    "HPA on": ({"auth": {"apiKeys": [key_entry("tenant-a", KEY_A)]},
                "autoscaling": {"enabled": True, "maxReplicas": 5}},
               ("autoscaling/v2",)),
    "monitoring, ingress and the gateway's policy on": ({
        "auth": {"apiKeys": [key_entry("tenant-a", KEY_A)]},
        "metrics": {"serviceMonitor": {"enabled": True},
                    "prometheusRule": {"enabled": True}},
        "ingress": {"enabled": True, "className": "nginx"},
        "networkPolicy": {"enabled": True, "restrictEgress": True}},
        ("monitoring.coreos.com/v1",)),
}


@pytest.fixture(scope="module")
def monitoring_crds(k8s_cluster: Any) -> None:
    """The ServiceMonitor and PrometheusRule CRDs, generated from prometheus-operator's API
    types by hack/k8s/build.sh: the schema the real operator installs."""
    crds = Path(k8s_cluster.bin_dir) / "monitoring-crds.yaml"
    kubectl(k8s_cluster, "apply", "--server-side", "-f", str(crds))
    for name in ("servicemonitors", "prometheusrules"):
        kubectl(k8s_cluster, "wait", "--for", "condition=Established", "--timeout", "60s",
                f"crd/{name}.monitoring.coreos.com")


@pytest.mark.parametrize("case", list(DRY_RUN_MATRIX))
def test_the_rendered_chart_is_accepted_by_the_api_server(
        case: str, k8s_cluster: Any, monitoring_crds: None,
        tmp_path: Path) -> None:
    values, api_versions = DRY_RUN_MATRIX[case]
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    namespace = f"helm-dry-{uuid.uuid4().hex[:6]}"
    args = ["template", "jobgate", str(CHART), "--namespace", namespace, "-f",
            str(values_file)]
    for api in api_versions:
        args += ["--api-versions", api]
    rendered = helm(k8s_cluster, *args)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in docs}
    kubectl(k8s_cluster, "create", "namespace", namespace)
    try:
        out = kubectl(k8s_cluster, "apply", "--dry-run=server", "-n", namespace, "-f", "-",
                      stdin=rendered)
    finally:
        kubectl(k8s_cluster, "delete", "namespace", namespace, "--wait=false")
    assert out.count("(server dry run)") == len(docs), out
    if "monitoring" in case:
        assert {"ServiceMonitor", "PrometheusRule", "Ingress"} <= kinds, kinds
    if "HPA" in case:
        assert "HorizontalPodAutoscaler" in kinds


# -- rollouts, a lost replica, the uninstall: last, on the same release ---------------

def _steady_calls(url: str, stop: threading.Event, results: list[tuple[str, bool, str]],
                  caller: int) -> None:
    """Sync calls one after another until stopped, each on a fresh connection (as a client
    behind a load balancer would open them) with an Idempotency-Key, so a connection that
    fails before the request is sent may be retried safely."""
    n = 0
    while not stop.is_set():
        n += 1
        tag = f"c{caller}-{n}"
        try:
            with httpx.Client(base_url=url, timeout=120, trust_env=False,
                              transport=httpx.HTTPTransport(retries=3),
                              headers={"Authorization": f"Bearer {KEY_A}",
                                       "Idempotency-Key": tag}) as c:
                r = c.post("/v1/invocations",
                           json={"profile": "python3.11", "code": f"print('{tag}')"})
                body = r.json() if r.headers.get("content-type", "").startswith(
                    "application/json") else {}
                # A sync call may answer 202 + Location (its wait ran out, or the replica
                # is draining): the documented contract; the client follows it.
                while r.status_code == 202 and body.get("status") in ("queued", "running"):
                    r = c.get(r.headers["location"], params={"wait": 20})
                    body = r.json()
            ok = r.status_code in (200, 202) and body.get("status") == "succeeded" \
                and body.get("stdout") == f"{tag}\n"
            results.append((tag, ok, "" if ok else f"{r.status_code} {r.text[:300]}"))
        except httpx.HTTPError as e:
            results.append((tag, False, repr(e)))


def test_an_upgrade_and_a_rollback_under_a_steady_load_fail_no_call(
        release: dict[str, Any]) -> None:
    cluster, namespace = release["cluster"], release["namespace"]
    results: list[tuple[str, bool, str]] = []
    stop = threading.Event()
    callers = [threading.Thread(target=_steady_calls, args=(release["url"], stop, results, i))
               for i in range(2)]
    started = time.monotonic()
    for thread in callers:
        thread.start()
    try:
        time.sleep(5)
        helm(cluster, "upgrade", "jobgate", str(CHART), "--namespace", namespace,
             "--reuse-values", "--set", "podAnnotations.rollout=again", "--wait",
             "--timeout", "240s")
        helm(cluster, "rollback", "jobgate", "1", "--namespace", namespace, "--wait",
             "--timeout", "240s")
        time.sleep(5)
    finally:
        stop.set()
        for thread in callers:
            thread.join(timeout=150)
    elapsed = time.monotonic() - started
    failed = [r for r in results if not r[1]]
    print(f"upgrade + rollback under load: {len(results)} calls in {elapsed:.0f}s "
          f"({len(results) / elapsed:.2f}/s), {len(failed)} failed")
    assert len(results) >= 10 and not failed, failed[:5]
    deployment = json.loads(kubectl(cluster, "-n", namespace, "get", "deployment", "jobgate",
                                    "-o", "json"))
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert "rollout" not in annotations  # rolled back
    history = json.loads(helm(cluster, "history", "jobgate", "--namespace", namespace,
                              "--output", "json"))
    assert [h["revision"] for h in history] == [1, 2, 3]


def _gateway_pods(release: dict[str, Any]) -> list[dict[str, Any]]:
    pods = json.loads(kubectl(release["cluster"], "-n", release["namespace"], "get", "pods",
                              "-l", "app.kubernetes.io/component=gateway", "-o", "json"))
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def test_a_replica_killed_under_load_leaves_its_async_calls_to_the_survivor(
        release: dict[str, Any]) -> None:
    cluster, namespace = release["cluster"], release["namespace"]
    pods = wait_until(lambda: (p := _gateway_pods(release)) and len(p) == 2 and all(
        c["ready"] for pod in p for c in pod["status"].get("containerStatuses", [])) and p,
        timeout_s=120, message="two ready replicas")
    doomed = pods[0]
    # Straight to the doomed replica's pod IP (this machine is on the pod network), so
    # that every call below is one that replica accepted.
    url = f"http://{doomed['status']['podIP']}:8080"
    accepted: list[str] = []
    with httpx.Client(base_url=url, timeout=30, trust_env=False,
                      headers={"Authorization": f"Bearer {KEY_A}"}) as c:
        for i in range(6):
            r = c.post("/v1/invocations", json={
                "profile": "python3.11", "mode": "async",
                "max_attempts": 2,
                "code": f"import time; time.sleep(2); print('kept {i}')"})
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
    kubectl(cluster, "-n", namespace, "delete", "pod", doomed["metadata"]["name"],
            "--grace-period=0", "--force")
    # Through the Service: the survivor (or the replacement) answers for all of them.
    with httpx.Client(base_url=release["url"], timeout=60, trust_env=False,
                      headers={"Authorization": f"Bearer {KEY_A}"}) as c:
        def ended(inv: str) -> dict[str, Any] | None:
            try:
                r = c.get(f"/v1/invocations/{inv}", params={"wait": 10})
            except httpx.TransportError:
                # The killed pod stays a Service endpoint for a moment after a forced
                # delete: a connection kube-proxy sent there is dropped. Ask again.
                return None
            body: dict[str, Any] = r.json()
            return body if r.status_code == 200 and body["status"] in TERMINAL else None
        ends = {inv: wait_until(lambda inv=inv: ended(inv), timeout_s=240, interval_s=1,
                                message=f"{inv} ended") for inv in accepted}
    for i, inv in enumerate(accepted):
        body = ends[inv]
        # Finished (run again when it was lost mid-run: an attempt remains), not dropped.
        assert body["status"] == "succeeded", (body["reason"], body["message"], body)
        assert body["stdout"] == f"kept {i}\n"


def test_uninstall_leaves_no_worker_jobs_pods_or_policies(release: dict[str, Any]) -> None:
    cluster, namespace = release["cluster"], release["namespace"]

    def listed(kind: str, selector: str) -> list[dict[str, Any]]:
        found = json.loads(kubectl(cluster, "-n", namespace, "get", kind, "-l", selector,
                                   "-o", "json"))
        items: list[dict[str, Any]] = found["items"]
        return items

    workers = "app.kubernetes.io/component=worker"
    jobs = wait_until(lambda: listed("jobs", workers), timeout_s=60, message="worker Jobs")
    owners = {(o["kind"], o["name"]) for job in jobs
              for o in job["metadata"].get("ownerReferences", [])}
    assert owners == {("ConfigMap", "jobgate-profiles")}, owners
    helm(cluster, "uninstall", "jobgate", "--namespace", namespace, "--wait",
         "--timeout", "120s")
    release["installed"] = False

    def left() -> list[str]:
        return [f"{kind}/{o['metadata']['name']}"
                for kind, selector in (("jobs", workers), ("pods", workers),
                                       ("networkpolicies", "app.kubernetes.io/name=jobgate"),
                                       ("pods", "app.kubernetes.io/name=jobgate"))
                for o in listed(kind, selector)]
    wait_until(lambda: not left(), timeout_s=120, interval_s=1,
               message="nothing of the release left")
