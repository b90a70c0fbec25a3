"""Every failure reason, produced by real misbehaving code, with the gateway still healthy
afterwards."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.backends import write_profiles
from tests.cluster.node import PODS_PIDS_LIMIT
from tests.support import (
    GatewayProcess,
    ancestors,
    code_pid,
    invoke,
    running_gateway,
    wait_until,
)

PY = "python3.11"


@pytest.fixture(autouse=True)
def gateway_stays_healthy(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """After each test on the shared gateway: still ready, still running code. (Asked for
    lazily, so tests that start their own gateway are not run once per configuration.)"""
    client = request.getfixturevalue("client") if "client" in request.fixturenames else None
    yield
    if client is None:
        return
    assert client.get("/readyz").status_code == 200
    body = invoke(client, profile=PY, code="print('still here')").json()
    assert body["status"] == "succeeded" and body["stdout"] == "still here\n"


def test_endless_loop_times_out(client: httpx.Client) -> None:
    started = time.monotonic()
    body = invoke(client, profile=PY, code="while True: pass", timeout_s=1).json()
    assert (body["status"], body["reason"]) == ("timeout", "Timeout")
    assert "timeout of 1s" in body["message"]
    assert time.monotonic() - started < 10


def test_sleeping_code_times_out(client: httpx.Client) -> None:
    body = invoke(client, profile="bash", code="sleep 30", timeout_s=1).json()
    assert (body["status"], body["reason"]) == ("timeout", "Timeout")


def test_memory_hog_hits_the_memory_limit(client: httpx.Client) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))"
    body = invoke(client, profile=PY, code=code, resources={"memory": "128Mi"},
                  timeout_s=20).json()
    assert (body["status"], body["reason"]) == ("failed", "MemoryLimit")


# Locally a fork bomb meets the worker's cgroup and RLIMIT_NPROC; on Kubernetes the pod's
# pids limit too (tests/test_kubernetes_node.py checks the gateway stays healthy).
def test_fork_bomb_is_contained(client: httpx.Client, gateway: GatewayProcess) -> None:
    code = "bomb() { bomb | bomb & }; bomb; sleep 5"
    started = time.monotonic()
    body = invoke(client, profile="bash", code=code, timeout_s=3).json()
    assert body["status"] in ("timeout", "failed", "succeeded")
    assert time.monotonic() - started < 20
    # Nothing of it survives: no process of a worker uid (200000+) or bash bomb remains.
    def leftovers() -> list[str]:
        out = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.stat(f"/proc/{pid}").st_uid >= 200000:
                        out.append(pid)
                except FileNotFoundError:
                    pass
        return out

    if os.geteuid() == 0 and getattr(gateway, "config", "local") != "kubernetes":
        wait_until(lambda: not leftovers(), timeout_s=10, message="fork bomb cleaned up")
    assert client.get("/readyz").status_code == 200


def test_fork_bomb_in_python_is_limited(client: httpx.Client, gateway: GatewayProcess
                                        ) -> None:
    code = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped after", n, "forks:", e.strerror)
"""
    body = invoke(client, profile=PY, code=code, timeout_s=10).json()
    on_kubernetes = getattr(gateway, "config", "local") == "kubernetes"
    assert body["status"] == "succeeded", {k: body.get(k) for k in (
        "status", "reason", "message", "exit_code", "stdout", "stderr")}
    assert "stopped after" in body["stdout"]
    # Locally the profile's max_processes (64); in a worker pod the node's pids limit.
    assert int(body["stdout"].split()[2]) < (PODS_PIDS_LIMIT if on_kubernetes else 100)


def test_python_code_starts_with_the_runners_objects_frozen(client: httpx.Client) -> None:
    """The collector of the code (and of every process it forks) walks only what the code
    made: the runner's preloaded objects are frozen (gc.freeze), so a fork does not copy
    them page by page. Unfrozen, a fork bomb's children took 2.4 MB each in a worker pod
    and filled its memory before the pids limit stopped them."""
    body = invoke(client, profile=PY, code="import gc\nprint(len(gc.get_objects()))").json()
    assert body["status"] == "succeeded", body
    assert int(body["stdout"]) < 50, body["stdout"]  # 8 seen; 90 unfrozen (local)


def test_huge_stdout_hits_the_output_limit(client: httpx.Client) -> None:
    code = "import sys\nchunk = 'y' * 1048576\nfor _ in range(100):\n    sys.stdout.write(chunk)"
    body = invoke(client, profile=PY, code=code, timeout_s=30).json()
    assert (body["status"], body["reason"]) == ("failed", "OutputLimit")
    assert body["stdout_truncated"] is True
    assert len(body["stdout"]) == 1024 * 1024


def test_huge_stdout_from_bash_hits_the_output_limit(client: httpx.Client) -> None:
    body = invoke(client, profile="bash", code="head -c 104857600 /dev/zero | tr '\\0' z",
                  timeout_s=30).json()
    assert (body["status"], body["reason"]) == ("failed", "OutputLimit")


def test_non_zero_exit(client: httpx.Client) -> None:
    body = invoke(client, profile="bash", code="echo bye; exit 42").json()
    assert (body["status"], body["reason"], body["exit_code"]) == ("failed", "NonZeroExit", 42)
    assert body["message"] == "the code exited with code 42"


def test_killed_by_a_signal(client: httpx.Client) -> None:
    body = invoke(client, profile="bash", code="kill -SEGV $$").json()
    assert (body["status"], body["reason"]) == ("failed", "NonZeroExit")
    assert body["exit_code"] == 128 + signal.SIGSEGV


def test_cancel_while_running_kills_the_code(client: httpx.Client) -> None:
    r = invoke(client, profile="bash", mode="async", code="sleep 60")
    inv_id = r.json()["id"]
    pid = wait_until(lambda: code_pid(inv_id), timeout_s=10, message="code is running")
    body = client.post(f"/v1/invocations/{inv_id}/cancel").json()
    assert (body["status"], body["reason"]) == ("cancelled", "Cancelled")
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout_s=5,
               message="cancelled code is gone")


def test_cancel_while_queued(tmp_path: Path) -> None:
    with running_gateway(tmp_path, JOBGATE_MAX_CONCURRENCY="1") as gw, gw.client() as c:
        first = invoke(c, profile="bash", code="sleep 30", mode="async").json()["id"]
        wait_until(lambda: c.get(f"/v1/invocations/{first}").json()["status"] == "running")
        queued = invoke(c, profile="bash", code="echo never", mode="async").json()["id"]
        assert c.get(f"/v1/invocations/{queued}").json()["status"] == "queued"
        body = c.post(f"/v1/invocations/{queued}/cancel").json()
        assert (body["status"], body["reason"]) == ("cancelled", "Cancelled")
        assert c.post(f"/v1/invocations/{first}/cancel").json()["status"] == "cancelled"


@pytest.mark.local_only  # on Kubernetes: test_kubernetes.py deletes the worker pod
def test_worker_lost_when_the_worker_dies(client: httpx.Client,
                                          gateway: GatewayProcess) -> None:
    r = invoke(client, profile="bash", mode="async", code="sleep 60")
    inv_id = r.json()["id"]
    pid = wait_until(lambda: code_pid(inv_id), timeout_s=10, message="code is running")
    # Kill the worker (the runner), not the code: the gateway's zygote's child.
    assert gateway.proc is not None
    chain = ancestors(pid)
    runner = chain[chain.index(gateway.proc.pid) - 2]
    os.kill(runner, signal.SIGKILL)
    body = client.get(f"/v1/invocations/{inv_id}", params={"wait": 15}).json()
    assert (body["status"], body["reason"]) == ("error", "WorkerLost")


def test_start_failed_leaves_no_workspace_behind(tmp_path: Path) -> None:
    """A StartFailed report carries the worker's directory like any other, so it is
    removed after the call: none piles up under the data dir's workspaces/ (the pool's
    one idle worker has its own)."""
    catalogue = write_profiles(tmp_path, "ghost")
    workspaces = tmp_path / "data" / "workspaces"

    def worker_dirs() -> list[str]:
        return sorted(n for n in os.listdir(workspaces) if n.startswith("w-"))

    with running_gateway(tmp_path, JOBGATE_PROFILES=str(catalogue)) as gw, gw.client() as c:
        # The command cannot be executed; a file cannot be written (the runner fails
        # before the code starts): both are StartFailed.
        calls = [{"code": "anything"}] + [
            {"files": {"main.x": "a", "main.x/b": "c"}, "entrypoint": "main.x"}] * 3
        for call in calls:
            body = invoke(c, profile="ghost", **call).json()
            assert (body["status"], body["reason"]) == ("error", "StartFailed"), body
        wait_until(lambda: len(worker_dirs()) <= 1, timeout_s=15,
                   message="no workspace left behind by the failed calls")


def test_start_failed_when_the_runtime_is_missing(tmp_path: Path) -> None:
    catalogue = write_profiles(tmp_path, "ghost", PY)
    with running_gateway(tmp_path, JOBGATE_PROFILES=str(catalogue)) as gw, gw.client() as c:
        body = invoke(c, profile="ghost", code="anything").json()
        assert (body["status"], body["reason"]) == ("error", "StartFailed")
        assert "/nonexistent/interpreter" in body["message"]
        assert invoke(c, profile="python3.11", code="print(1)").json()["status"] == "succeeded"
