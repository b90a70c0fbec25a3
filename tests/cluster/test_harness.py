"""Tests of the test cluster itself: the API is real, the node is real, Jobs really run
in containers from the images built from the repository.

Each test works in its own namespace. On an external cluster (JOBGATE_TEST_KUBECONFIG),
the tests that look at this machine's processes and cgroups are skipped; the rest run
unchanged (the image must then be in a registry that cluster pulls from).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.cluster.binaries import read_versions
from tests.cluster.handle import K8sCluster
from tests.cluster.images import RUNTIME_IMAGES
from tests.cluster.kube_client import JSON, KubeClient, KubeError
from tests.cluster.node import NODE_IP, POD_CIDR, SERVICE_CIDR

pytestmark = pytest.mark.cluster

T = TypeVar("T")
WAIT_S = 60.0
# The python3.11 runtime image: it has sh, coreutils and python3; commands override its
# entrypoint. Never pulled: there is no registry, and nothing may go to one.
IMAGE = RUNTIME_IMAGES[0].tag


async def eventually(what: str, check: Callable[[], Awaitable[T | None]],
                     within: float = WAIT_S, interval: float = 0.2) -> T:
    """Polls `check` until it returns something other than None (or False)."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last is not None and last is not False:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what} (last: {last!r})")


def job(name: str, command: list[str], **spec: Any) -> JSON:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                                "command": command}],
            }},
        },
    }


def condition(obj: JSON, kind: str) -> JSON | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind and cond["status"] == "True":
            return dict(cond)
    return None


def process_alive(pid: int, needle: bytes) -> bool:
    """True if pid is still the process whose command line holds `needle`."""
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def host_pids(needle: bytes) -> list[int]:
    """Host pids of the processes whose command line holds `needle` (containers' included:
    the node is this machine)."""
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and process_alive(int(p.name), needle)]


@pytest.fixture
async def kube(k8s_cluster: K8sCluster) -> AsyncIterator[KubeClient]:
    async with await KubeClient.from_kubeconfig(k8s_cluster.kubeconfig) as client:
        yield client


@pytest.fixture
async def ns(kube: KubeClient) -> AsyncIterator[str]:
    name = f"harness-{uuid.uuid4().hex[:8]}"
    await kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": name}})
    # Pods need the namespace's default ServiceAccount, made by its controller.
    async def account() -> JSON | None:
        try:
            return await kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
        except KubeError:
            return None
    await eventually("the default ServiceAccount", account, within=30)
    yield name
    await kube.delete(f"/api/v1/namespaces/{name}")


def local_only(cluster: K8sCluster) -> None:
    if not cluster.local:
        pytest.skip("looks at this machine's processes: only meaningful on the test node")


async def get_or_none(kube: KubeClient, path: str) -> JSON | None:
    try:
        return await kube.get(path)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


async def job_pods(kube: KubeClient, ns: str, job_name: str) -> list[JSON]:
    listed = await kube.get(f"/api/v1/namespaces/{ns}/pods",
                            labelSelector=f"job-name={job_name}")
    return list(listed["items"])


async def test_job_completes_and_its_log_reads_through_the_api(
    kube: KubeClient, ns: str
) -> None:
    await kube.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job("hello", ["sh", "-c", "echo hi"]))

    async def complete() -> JSON | None:
        found = await kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/hello")
        assert condition(found, "Failed") is None, found["status"]
        return condition(found, "Complete")
    await eventually("the Job to complete", complete)

    pods = await job_pods(kube, ns, "hello")
    assert len(pods) == 1
    pod = pods[0]
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    log = await kube.text(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}/log")
    assert log == "hi\n"


async def test_job_past_its_deadline_fails_and_its_process_is_gone(
    k8s_cluster: K8sCluster, kube: KubeClient, ns: str
) -> None:
    local_only(k8s_cluster)
    # The odd duration makes the container's process recognizable on the host.
    await kube.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job(
        "slow", ["sleep", "3171"], activeDeadlineSeconds=3))

    async def running() -> list[int] | None:
        return host_pids(b"3171") or None
    [pid] = await eventually("the Job's process to run", running)

    async def failed() -> JSON | None:
        return condition(await kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/slow"), "Failed")
    assert (await eventually("the Job to fail", failed))["reason"] == "DeadlineExceeded"

    async def gone() -> bool:
        return not process_alive(pid, b"3171")
    await eventually("the process to be killed", gone, within=30)


async def test_ttl_deletes_the_finished_job_and_gc_its_pods(kube: KubeClient, ns: str) -> None:
    await kube.create(f"/apis/batch/v1/namespaces/{ns}/jobs",
                      job("short", ["sh", "-c", "true"], ttlSecondsAfterFinished=1))

    async def ran() -> bool:
        return any(p["status"].get("phase") == "Succeeded"
                   for p in await job_pods(kube, ns, "short"))
    await eventually("the Job's pod to succeed", ran)

    async def job_gone() -> bool:
        return await get_or_none(kube, f"/apis/batch/v1/namespaces/{ns}/jobs/short") is None
    await eventually("the TTL controller to delete the Job", job_gone)

    async def pods_gone() -> bool:
        return not await job_pods(kube, ns, "short")
    await eventually("the garbage collector to delete the pods", pods_gone)


async def test_a_pod_process_is_reachable_on_its_pod_ip(
    k8s_cluster: K8sCluster, kube: KubeClient, ns: str
) -> None:
    local_only(k8s_cluster)
    await kube.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
            "name": "web", "image": IMAGE, "imagePullPolicy": "Never",
            "command": ["python3", "-m", "http.server", "8080", "--directory", "/etc"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        }]},
    })

    async def ready() -> JSON | None:
        pod = await kube.get(f"/api/v1/namespaces/{ns}/pods/web")
        return pod if condition(pod, "Ready") else None
    pod = await eventually("the pod to be Ready", ready)
    pod_ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(POD_CIDR), pod_ip
    assert pod["status"]["hostIP"] == NODE_IP
    assert pod["status"]["containerStatuses"][0]["ready"] is True

    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"http://{pod_ip}:8080/hostname")
    assert answer.status_code == 200 and answer.text.strip() == "web"


async def test_a_service_routes_to_its_pod_through_kube_proxy(
    k8s_cluster: K8sCluster, kube: KubeClient, ns: str
) -> None:
    local_only(k8s_cluster)
    await kube.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "svc-web",
                                                       "labels": {"app": "svc-web"}},
        "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
            "name": "web", "image": IMAGE, "imagePullPolicy": "Never",
            "command": ["python3", "-m", "http.server", "8080", "--directory", "/etc"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        }]},
    })
    service = await kube.create(f"/api/v1/namespaces/{ns}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "svc-web"},
                 "ports": [{"port": 80, "targetPort": "http"}]}})
    cluster_ip = service["spec"]["clusterIP"]

    async def answers() -> str | None:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                reply = await client.get(f"http://{cluster_ip}/hostname")
        except httpx.HTTPError:
            return None
        return reply.text.strip() if reply.status_code == 200 else None
    assert await eventually("the Service to route", answers) == "svc-web"


IN_CLUSTER = r"""
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
request = urllib.request.Request(f"https://{host}:{port}/version", headers={
    "Authorization": "Bearer " + open(f"{sa}/token").read()})
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
print(host, json.load(urllib.request.urlopen(request, context=context, timeout=10))["gitVersion"])
"""


async def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(
    kube: KubeClient, ns: str
) -> None:
    await kube.create(f"/api/v1/namespaces/{ns}/pods",
                      pod("in-cluster", ["python3", "-c", IN_CLUSTER]))
    found = await wait_phase(kube, ns, "in-cluster", "Succeeded", "Failed")
    log = await kube.text(f"/api/v1/namespaces/{ns}/pods/in-cluster/log")
    assert found["status"]["phase"] == "Succeeded", log
    host, version = log.split()
    assert ipaddress.ip_address(host) in ipaddress.ip_network(SERVICE_CIDR)
    assert version == read_versions()["KUBERNETES_VERSION"]


async def test_the_node_is_a_real_kubelet_on_containerd(
    k8s_cluster: K8sCluster, kube: KubeClient
) -> None:
    local_only(k8s_cluster)
    node = await kube.get(f"/api/v1/nodes/{k8s_cluster.node_name}")
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == read_versions()["KUBERNETES_VERSION"]
    assert info["containerRuntimeVersion"] == \
        f"containerd://{read_versions()['CONTAINERD_VERSION'].lstrip('v')}"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP
    assert condition(node, "Ready") and not node["spec"].get("taints")

    async def images() -> set[str] | None:  # the kubelet reports them a little later
        found = await kube.get(f"/api/v1/nodes/{k8s_cluster.node_name}")
        names = {n for image in found["status"].get("images") or []
                 for n in image.get("names") or []}
        return names if {image.tag for image in RUNTIME_IMAGES} <= names else None
    await eventually("the node to report the runtime images", images)


async def test_field_validation_rejects_a_malformed_job(kube: KubeClient, ns: str) -> None:
    bad = job("bad", ["true"])
    bad["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1
    with pytest.raises(KubeError) as unknown:
        await kube.create(f"/apis/batch/v1/namespaces/{ns}/jobs", bad, fieldValidation="Strict")
    assert unknown.value.status == 400
    assert 'unknown field "spec.template.spec.containers[0].bogusField"' in str(unknown.value)

    invalid = job("invalid", ["true"])
    invalid["spec"]["template"]["spec"]["restartPolicy"] = "Always"  # Jobs forbid it
    with pytest.raises(KubeError) as rejected:
        await kube.create(f"/apis/batch/v1/namespaces/{ns}/jobs", invalid)
    assert (rejected.value.status, rejected.value.reason) == (422, "Invalid")


# -- What the Kubernetes executor relies on beyond the issue's five ---------------------------


def pod(name: str, command: list[str], labels: dict[str, str] | None = None,
        **spec: Any) -> JSON:
    container = {"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                 "command": command, **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                     "containers": [container], **spec}}


async def wait_phase(kube: KubeClient, ns: str, name: str, *phases: str) -> JSON:
    async def reached() -> JSON | None:
        found = await kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        return found if found["status"].get("phase") in phases else None
    return await eventually(f"pod {name} to reach {phases}", reached)


async def test_missing_image_waits_and_never_starts(kube: KubeClient, ns: str) -> None:
    # Pull policy Never: the kubelet must not reach out to any registry to find it.
    await kube.create(f"/api/v1/namespaces/{ns}/pods",
                      pod("missing", ["sh", "-c", "echo must-not-run"],
                          container={"image": "docker.io/jobgate/runtime-missing:0.1.0"}))

    async def never_pull() -> bool:
        found = await kube.get(f"/api/v1/namespaces/{ns}/pods/missing")
        state = (found["status"].get("containerStatuses") or [{}])[0].get("state", {})
        assert "running" not in state and "terminated" not in state, state
        return bool(state.get("waiting", {}).get("reason") == "ErrImageNeverPull")
    await eventually("ErrImageNeverPull", never_pull)
    assert (await kube.get(f"/api/v1/namespaces/{ns}/pods/missing"))["status"]["phase"] \
        == "Pending"


async def test_failure_reports_exit_code_and_reason(kube: KubeClient, ns: str) -> None:
    await kube.create(f"/api/v1/namespaces/{ns}/pods", pod("fails", ["sh", "-c", "exit 3"]))
    found = await wait_phase(kube, ns, "fails", "Succeeded", "Failed")
    assert found["status"]["phase"] == "Failed"
    terminated = found["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert terminated["startedAt"] and terminated["finishedAt"]


async def test_memory_limit_is_enforced_as_oomkilled(
    k8s_cluster: K8sCluster, kube: KubeClient, ns: str
) -> None:
    hog = "x = bytearray(300 * 1024 * 1024); import time; time.sleep(60)"
    await kube.create(f"/api/v1/namespaces/{ns}/pods", pod(
        "hog", ["python3", "-c", hog],
        container={"resources": {"limits": {"memory": "64Mi"}}}))
    found = await wait_phase(kube, ns, "hog", "Succeeded", "Failed")
    terminated = found["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")


async def test_readiness_waits_for_the_probe_and_volumes_are_materialized(
    kube: KubeClient, ns: str
) -> None:
    await kube.create(f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
        "data": {"greeting": "hello from a configmap"}})
    await kube.create(f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"TOKEN": "s3cret"}})
    script = (
        'cat /etc/settings/greeting; echo; echo "token=$TOKEN name=$MY_NAME ip=$MY_IP"; '
        "cat /etc/info/labels; echo; touch /tmp/scratch && echo tmp-writable; "
        "sleep 1.5; touch /workspace/ready; exec sleep 300"
    )
    await kube.create(f"/api/v1/namespaces/{ns}/pods", pod(
        "vols", ["sh", "-c", script], labels={"app": "vols"},
        volumes=[
            {"name": "work", "emptyDir": {}},
            {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
            {"name": "settings", "configMap": {"name": "settings"}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ],
        container={
            "envFrom": [{"secretRef": {"name": "creds"}}],
            "env": [
                {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ],
            "volumeMounts": [
                {"name": "work", "mountPath": "/workspace"},
                {"name": "scratch", "mountPath": "/tmp"},
                {"name": "settings", "mountPath": "/etc/settings"},
                {"name": "info", "mountPath": "/etc/info"},
            ],
            "readinessProbe": {"exec": {"command": ["test", "-f", "/workspace/ready"]},
                               "periodSeconds": 1},
        },
    ))

    running = await wait_phase(kube, ns, "vols", "Running")
    assert condition(running, "Ready") is None, "Ready before its probe passed"

    async def ready() -> JSON | None:
        found = await kube.get(f"/api/v1/namespaces/{ns}/pods/vols")
        return found if condition(found, "Ready") else None
    found = await eventually("the readiness probe to pass", ready)
    log = await kube.text(f"/api/v1/namespaces/{ns}/pods/vols/log")
    assert log.splitlines()[:4] == [
        "hello from a configmap", f"token=s3cret name=vols ip={found['status']['podIP']}",
        'app="vols"', "tmp-writable"]


async def test_pod_deletion_kills_the_whole_process_tree(
    k8s_cluster: K8sCluster, kube: KubeClient, ns: str
) -> None:
    local_only(k8s_cluster)
    # The background sleep starts its own session, out of reach of a process-group kill.
    await kube.create(f"/api/v1/namespaces/{ns}/pods", pod(
        "tree", ["sh", "-c", "setsid sleep 3172 & echo started; exec sleep 3173"]))
    await wait_phase(kube, ns, "tree", "Running")

    async def both_started() -> bool:
        return bool(host_pids(b"3172")) and bool(host_pids(b"3173"))
    await eventually("both processes", both_started)
    await kube.delete(f"/api/v1/namespaces/{ns}/pods/tree")

    async def deleted() -> bool:
        return await get_or_none(kube, f"/api/v1/namespaces/{ns}/pods/tree") is None
    await eventually("the pod object to go", deleted, within=30)
    assert not host_pids(b"3172") and not host_pids(b"3173")


async def test_service_account_kubeconfig_has_exactly_its_role(
    k8s_cluster: K8sCluster, kube: KubeClient, ns: str
) -> None:
    await kube.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    await kube.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    await kube.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})

    path = k8s_cluster.kubeconfig_for_service_account(ns, "reader")
    async with await KubeClient.from_kubeconfig(path) as reader:
        assert (await reader.get(f"/api/v1/namespaces/{ns}/pods"))["items"] == []
        for forbidden in (f"/api/v1/namespaces/{ns}/secrets", "/api/v1/namespaces/default/pods"):
            with pytest.raises(KubeError) as denied:
                await reader.get(forbidden)
            assert denied.value.status == 403


def test_the_by_hand_check_in_docs_testing_md_works_as_printed(
    k8s_cluster: K8sCluster
) -> None:
    """The kubectl lines of docs/testing.md's `make cluster-up` section, run as printed."""
    local_only(k8s_cluster)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "testing.md").read_text()
    section = doc.split("## By hand: `make cluster-up`", 1)[1].split("```sh", 1)[1]
    block = section.split("```", 1)[0]
    lines = [line.split("   #")[0].strip() for line in block.splitlines()
             if line.startswith("kubectl")]
    expected = [line.split("   #", 1)[1].strip() for line in block.splitlines()
                if line.startswith("kubectl") and "   #" in line][-1]
    assert lines and expected, block
    env = {**os.environ, "KUBECONFIG": str(k8s_cluster.kubeconfig),
           "PATH": f"{k8s_cluster.bin_dir}:{os.environ.get('PATH', '')}"}
    try:
        out = subprocess.run(["bash", "-ec", "\n".join(lines)], env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == expected, out.stdout
    finally:
        subprocess.run(["bash", "-c", "kubectl delete job hello --wait=false"], env=env,
                       capture_output=True, timeout=60, check=False)
