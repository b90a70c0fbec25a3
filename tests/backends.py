"""The configurations the invocation suite runs against, and how to set each one up:

    local       local executor, local storage (the embedded default)
    s3          local executor, S3 storage on SeaweedFS
    kubernetes  Kubernetes executor on the test control plane, S3 storage on SeaweedFS

JOBGATE_TEST_CONFIGS selects them (default: all three)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

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


def write_profiles(work: Path, *names: str) -> Path:
    """A profiles.toml in ``work`` with the profiles ``names``; its path."""
    path = work / "profiles.toml"
    path.write_text("".join(PROFILES[name] for name in names))
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


def kubernetes_env(cluster: object, work: Path, namespace: str | None = None
                   ) -> tuple[dict[str, str], str]:
    """A namespace with the gateway's Role (helm/rbac.yaml), and the environment that runs
    a gateway in it as that ServiceAccount: a verb missing from the Role fails the tests."""
    namespace = namespace or f"jobgate-{uuid.uuid4().hex[:8]}"
    kubectl(cluster, "create", "namespace", namespace)
    kubectl(cluster, "apply", "-n", namespace, "-f", str(ROOT / "helm" / "rbac.yaml"))
    sa_kubeconfig = cluster.kubeconfig_for_service_account(namespace, "jobgate")  # type: ignore[attr-defined]
    profiles = write_profiles(work, *RUNNING, "broken")
    return {
        "JOBGATE_EXECUTOR": "kubernetes",
        "JOBGATE_K8S_NAMESPACE": namespace,
        "JOBGATE_K8S_KUBECONFIG": str(sa_kubeconfig),
        "JOBGATE_PROFILES": str(profiles),
        "JOBGATE_K8S_IMAGE_PULL_GRACE_S": "3",
        "JOBGATE_K8S_JOB_TTL_S": "5",
        "JOBGATE_K8S_LEASE_DURATION_S": "6",
        # 200 workers cold-starting on a 2-core test node take longer than the default.
        "JOBGATE_SYNC_WAIT_S": "300",
    }, namespace


def local_profiles_env(work: Path) -> dict[str, str]:
    return {"JOBGATE_PROFILES": str(write_profiles(work, *RUNNING))}
