"""A gateway on the Kubernetes executor for the Kubernetes suites (test_kubernetes.py,
test_kubernetes_node.py): its own namespace with exactly helm/rbac.yaml's Role, S3 storage
on SeaweedFS, over real HTTP. Import the fixtures into a module to use them there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.backends import kubectl, kubernetes_env, local_profiles_env
from tests.support import GatewayProcess, free_port

PY = "python3.11"


@pytest.fixture(scope="module")
def k8s_env(k8s_cluster: Any, seaweedfs: Any,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("k8s-exec")
    env = local_profiles_env(work)
    env.update(seaweedfs.gateway_env(bucket="k8s-exec", prefix="jobgate"))
    port = free_port()
    k8s, namespace = kubernetes_env(k8s_cluster, work, s3_port=seaweedfs.ports["s3"],
                                    gateway_port=port)
    env.update(k8s)
    return {"env": env, "namespace": namespace, "cluster": k8s_cluster, "work": work,
            "port": port}


@pytest.fixture(scope="module")
def gw(k8s_env: dict[str, Any]) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(k8s_env["work"] / "gw1", env=k8s_env["env"],
                             port=k8s_env["port"]).start(timeout_s=120)
    yield gateway
    gateway.stop()


@pytest.fixture
def c(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with gw.client() as client:
        yield client


def another_gateway(k8s_env: dict[str, Any], name: str) -> GatewayProcess:
    """One more replica in the same namespace and store, with its own worker address."""
    port = free_port()
    env = dict(k8s_env["env"])
    cluster = k8s_env["cluster"]
    if cluster.local:
        env["JOBGATE_WORKER_GATEWAY_URL"] = f"http://{cluster.expose_to_pods(port)}"
    return GatewayProcess(k8s_env["work"] / name, env=env, port=port)


def get_json(k8s_env: dict[str, Any], *args: str) -> Any:
    return json.loads(kubectl(k8s_env["cluster"], "-n", k8s_env["namespace"], "get", *args,
                              "-o", "json"))


def pool(client: httpx.Client, profile: str = PY) -> dict[str, Any]:
    return next(p for p in client.get("/v1/pools").json()["items"] if p["profile"] == profile)


def worker_pod(k8s_env: dict[str, Any], invocation_id: str) -> dict[str, Any]:
    pods = get_json(k8s_env, "pods", "-l", f"jobgate.io/invocation={invocation_id}")["items"]
    assert pods, f"no pod labelled with {invocation_id}"
    return dict(pods[0])
