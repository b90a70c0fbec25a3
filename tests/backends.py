"""The configurations the invocation suite runs against, and how to set each one up:

    local       local executor, local storage (the embedded default)
    s3          local executor, S3 storage on SeaweedFS
    kubernetes  Kubernetes executor on the test cluster (a real node), S3 storage on SeaweedFS

JOBGATE_TEST_CONFIGS selects them (default: all three)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.support import ROOT

ALL_CONFIGS = ("local", "s3", "kubernetes")
# The profiles the tests run on, each as its table of a profiles.toml; a test's
# catalogue is some of them (``write_profiles``).
PROFILES = {
    "python3.11": """
[profiles."python3.11"]
image = "jobgate/runtime-python3.11:0.1.0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
inprocess = true
max_timeout_s = 120
pool = { min = 2, max = 6 }
""",
    "bash": """
[profiles.bash]
image = "jobgate/runtime-bash:0.1.0"
language = "bash"
command = ["bash", "{entrypoint}"]
default_entrypoint = "main.sh"
max_timeout_s = 120
pool = { min = 1, max = 4 }
""",
    "node20": """
[profiles.node20]
image = "jobgate/runtime-node20:0.1.0"
language = "javascript"
command = ["node", "{entrypoint}"]
default_entrypoint = "main.js"
memory_mode = "data"
default_memory_mb = 512
max_memory_mb = 2048
max_timeout_s = 120
pool = { min = 0, max = 2 }
""",
    # An image no node can pull (the Kubernetes executor).
    "broken": """
[profiles.broken]
image = "jobgate/runtime-unpullable:0.1.0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
pool = { min = 0, max = 1 }
""",
    # For the real node's tests (test_kubernetes_node.py): a container limit lower than any
    # rlimit, so the kernel's OOM killer is what stops a hog; and a profile with network.
    "hog": """
[profiles.hog]
image = "jobgate/runtime-python3.11:0.1.0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
memory_mode = "none"
default_memory_mb = 96
max_memory_mb = 96
pool = { min = 0, max = 1 }
""",
    "online": """
[profiles.online]
image = "jobgate/runtime-python3.11:0.1.0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
network = true
pool = { min = 0, max = 1 }
""",
    # An interpreter that is not there (the local executor): every call is StartFailed.
    "ghost": """
[profiles.ghost]
image = "jobgate/runtime-ghost:0"
language = "none"
command = ["/nonexistent/interpreter", "{entrypoint}"]
default_entrypoint = "main.x"
pool = { min = 1, max = 1 }
""",
}
# What the shared gateways run: every executor runs these code profiles.
RUNNING = ("python3.11", "bash", "node20")


def write_profiles(work: Path, *names: str, settings: str = "") -> Path:
    """A profiles.toml in ``work`` with the profiles ``names`` (and ``settings``, TOML
    lines, added to each); its path."""
    path = work / "profiles.toml"
    text = "".join(PROFILES[name] for name in names)
    path.write_text(text.replace("\npool = ", f"\n{settings}pool = ") if settings else text)
    return path


def selected_configs() -> list[str]:
    chosen = os.environ.get("JOBGATE_TEST_CONFIGS", ",".join(ALL_CONFIGS))
    configs = [c.strip() for c in chosen.split(",") if c.strip()]
    unknown = set(configs) - set(ALL_CONFIGS)
    if unknown:
        raise ValueError(f"JOBGATE_TEST_CONFIGS: unknown {sorted(unknown)}; "
                         f"known {ALL_CONFIGS}")
    return configs


def kubectl(cluster: object, *args: str, stdin: str | None = None) -> str:
    bin_dir = getattr(cluster, "bin_dir", None)
    exe = str(Path(bin_dir) / "kubectl") if bin_dir else "kubectl"
    proc = subprocess.run([exe, "--kubeconfig", str(cluster.kubeconfig), *args],  # type: ignore[attr-defined]
                          input=stdin, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc.stdout


# Test-only pod requests: 250 pods fit the 2-core test node (requests count, limits do not).
K8S_REQUESTS = "request_cpu = 0.005\nrequest_memory_mb = 48\n"
# What the Kubernetes gateways run.
K8S_RUNNING = (*RUNNING, "broken", "hog", "online")


def kubernetes_env(cluster: Any, work: Path, *, s3_port: int, gateway_port: int,
                   namespace: str | None = None) -> tuple[dict[str, str], str]:
    """A namespace with the gateway's Role (helm/rbac.yaml), and the environment that runs
    a gateway in it as that ServiceAccount: a verb missing from the Role fails the tests.

    The gateway (on gateway_port) and S3 (on s3_port) listen on loopback; workers reach
    them through forwarders on the node's services address, the one address their
    default-deny NetworkPolicy lets them reach."""
    namespace = namespace or f"jobgate-{uuid.uuid4().hex[:8]}"
    kubectl(cluster, "create", "namespace", namespace)
    kubectl(cluster, "apply", "-n", namespace, "-f", str(ROOT / "helm" / "rbac.yaml"))
    sa_kubeconfig = cluster.kubeconfig_for_service_account(namespace, "jobgate")
    profiles = write_profiles(work, *K8S_RUNNING, settings=K8S_REQUESTS)
    env = {
        "JOBGATE_EXECUTOR": "kubernetes",
        "JOBGATE_K8S_NAMESPACE": namespace,
        "JOBGATE_K8S_KUBECONFIG": str(sa_kubeconfig),
        "JOBGATE_PROFILES": str(profiles),
        "JOBGATE_K8S_IMAGE_PULL_GRACE_S": "3",
        "JOBGATE_K8S_JOB_TTL_S": "5",
        "JOBGATE_K8S_LEASE_DURATION_S": "6",
        # The images are imported on the node. Never pull: there is no registry, and a
        # missing image must not send the kubelet out to one.
        "JOBGATE_K8S_IMAGE_PULL_POLICY": "Never",
        # The test cluster has no DNS: the node's resolver, not a MissingClusterDNS warning.
        "JOBGATE_K8S_WORKER_DNS_POLICY": "Default",
        # 200 workers cold-starting on a 2-core test node take longer than the default.
        "JOBGATE_SYNC_WAIT_S": "300",
    }
    env.update(cluster.worker_reach_env(gateway_port, s3_port))
    return env, namespace


def local_profiles_env(work: Path) -> dict[str, str]:
    return {"JOBGATE_PROFILES": str(write_profiles(work, *RUNNING))}
