"""The chart installed the way users install it (`helm install`), on the test cluster's
real node, with the gateway and runtime images built from the repository's Dockerfiles and
S3 on SeaweedFS; then used over its Service (kube-proxy), as a client in the cluster
would. The gateway runs under the chart's ServiceAccount, so a verb missing from its Role
fails here."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import kubectl
from tests.support import KEY_A, key_entry, wait_until

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[1] / "helm" / "jobgate"
# A Service address of our choosing in the test cluster's range: the workers are told the
# gateway's URL by address, since the test cluster has no DNS (workers use dnsPolicy Default).
SERVICE_IP = "10.0.0.200"
TINY = {"request_cpu": 0.005, "request_memory_mb": 48}


def helm(cluster: Any, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([str(Path(cluster.bin_dir) / "helm"), "--kubeconfig",
                           str(cluster.kubeconfig), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])}: {proc.stderr}\n{proc.stdout}")
    return proc.stdout


@pytest.fixture(scope="module")
def release(k8s_cluster: Any, seaweedfs: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not k8s_cluster.local:
        pytest.skip("installs the locally built images: only on the suite's own cluster")
    namespace = f"helm-{uuid.uuid4().hex[:6]}"
    s3 = k8s_cluster.expose_to_pods(seaweedfs.ports["s3"])
    values = {
        "image": {"pullPolicy": "Never"},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
        "auth": {"apiKeys": [key_entry("tenant-a", KEY_A)]},
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
    try:
        yield {"namespace": namespace, "cluster": k8s_cluster,
               "url": f"http://{SERVICE_IP}:8080"}
    finally:
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
