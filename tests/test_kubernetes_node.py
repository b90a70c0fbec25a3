"""What the worker pod spec claims, proved from inside a worker on the test cluster's real
node: the kernel, runc and the kubelet enforce it, not the object read back. And the
default-deny NetworkPolicy, enforced by kube-router's firewall."""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.cluster.node import NODE_IP, SERVICE_CIDR
from tests.k8s_gateway import PY, c, get_json, gw, k8s_env, worker_pod
from tests.support import invoke, wait_until

pytestmark = pytest.mark.cluster
__all__ = ["c", "gw", "k8s_env"]  # fixtures

INSIDE = r"""
import ctypes, errno, json, os
def status(pid):
    lines = open(f"/proc/{pid}/status").read().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    keys = ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
            "Seccomp")
    return {k: " ".join(fields[k].split()) for k in keys}
facts = {"self": status("self"), "init": status(1)}
try:
    open("/etc/jobgate-probe", "w")
    facts["root_write"] = "ok"
except OSError as e:
    facts["root_write"] = e.strerror
facts["token"] = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount")
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.unshare(0x10000000)  # CLONE_NEWUSER
facts["unshare_user"] = "ok" if rc == 0 else errno.errorcode[ctypes.get_errno()]
open("probe.txt", "w").write("x")
facts["workspace_write"] = "ok"
print(json.dumps(facts))
"""
ZERO_CAPS = "0000000000000000"
KUBERNETES_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR)[1])


def test_a_worker_runs_as_its_pod_spec_says(c: httpx.Client) -> None:
    body = invoke(c, profile=PY, code=INSIDE).json()
    assert body["status"] == "succeeded", body
    facts = json.loads(body["stdout"])
    for process in ("self", "init"):  # the code, and the container's first process
        seen = facts[process]
        assert seen["Uid"] == "1000 1000 1000 1000", seen
        assert seen["Gid"] == "1000 1000 1000 1000", seen
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert seen[caps] == ZERO_CAPS, (process, caps, seen)
        assert seen["NoNewPrivs"] == "1" and seen["Seccomp"] == "2", seen
    assert facts["root_write"] == "Read-only file system"
    assert facts["token"] is False
    assert facts["unshare_user"] == "EPERM"
    assert facts["workspace_write"] == "ok"


def test_a_memory_hog_is_stopped_by_the_kernel_at_the_pod_limit(
        c: httpx.Client, k8s_env: dict[str, Any]) -> None:
    # No rlimit in this profile: the container's 96 MiB cgroup limit is all there is.
    code = "import time\nhog = b'x' * (400 * 1024 * 1024)\ntime.sleep(30)\n"
    body = invoke(c, profile="hog", code=code, timeout_s=60).json()
    assert (body["status"], body["reason"]) == ("failed", "MemoryLimit"), body
    # The single-use runner exits after its report; its container ends OOMKilled.
    def terminated() -> dict[str, Any] | None:
        pod = worker_pod(k8s_env, body["id"])
        state = pod["status"].get("containerStatuses", [{}])[0].get("state", {})
        return state.get("terminated")
    ended = wait_until(terminated, timeout_s=60, message="the worker container ended")
    assert ended["reason"] == "OOMKilled", ended


def test_a_fork_bomb_ends_at_the_pids_limit_and_the_gateway_stays_healthy(
        c: httpx.Client, k8s_env: dict[str, Any]) -> None:
    code = "bomb() { bomb | bomb & }; bomb; sleep 5"
    body = invoke(c, profile="bash", code=code, timeout_s=10).json()
    assert body["status"] in ("timeout", "failed", "succeeded"), body
    assert c.get("/readyz").status_code == 200
    # The next call gets a fresh worker and runs normally.
    after = invoke(c, profile="bash", code="echo fine").json()
    assert (after["status"], after["stdout"]) == ("succeeded", "fine\n"), after
    pod = worker_pod(k8s_env, body["id"])
    assert pod["spec"]["nodeName"]


# -- NetworkPolicy, enforced ---------------------------------------------------------------

CONNECT = r"""
import json, socket, sys
results = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        results[target] = "connected"
    except OSError as e:
        results[target] = type(e).__name__
print(json.dumps(results))
"""


def _idle_worker_ip(k8s_env: dict[str, Any]) -> str:
    def ip() -> str | None:
        pods = get_json(k8s_env, "pods", "-l", "jobgate.io/state=idle,jobgate.io/profile=bash")
        ready = [p for p in pods["items"] if p["status"].get("podIP") and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions") or [])]
        return ready[0]["status"]["podIP"] if ready else None
    found: str = wait_until(ip, timeout_s=60, message="an idle bash worker with an IP")
    return found


def _connect(c: httpx.Client, profile: str, *targets: str) -> dict[str, str]:
    body = invoke(c, profile=profile, code=CONNECT, args=list(targets), timeout_s=30).json()
    assert body["status"] == "succeeded", body
    results: dict[str, str] = json.loads(body["stdout"])
    return results


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_a_worker_reaches_neither_other_workers_nor_the_nodes_services(
        c: httpx.Client, k8s_env: dict[str, Any]) -> None:
    worker_ip = _idle_worker_ip(k8s_env)
    other, kubelet = f"{worker_ip}:8080", f"{NODE_IP}:10250"
    # Both listen: the host reaches them, so a failure below is the policy's doing.
    assert _listening(NODE_IP, 10250) and _listening(worker_ip, 8080)
    # The API server: at the `kubernetes` Service's address, and at its own port on the
    # node (it listens on the host's loopback only, which no pod reaches).
    api_port = urlsplit(k8s_env["cluster"].server).port
    api = [f"{KUBERNETES_SERVICE_IP}:443", f"{NODE_IP}:{api_port}"]
    results = _connect(c, PY, other, kubelet, *api)
    assert set(results) == {other, kubelet, *api}, results
    assert "connected" not in results.values(), results


def test_a_network_profile_reaches_out_and_the_others_still_cannot(
        c: httpx.Client, k8s_env: dict[str, Any]) -> None:
    kubelet = f"{NODE_IP}:10250"
    assert _connect(c, "online", kubelet) == {kubelet: "connected"}
    assert _connect(c, PY, kubelet)[kubelet] != "connected"
