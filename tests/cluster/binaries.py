"""Where the test control plane's binaries come from (test infrastructure).

Search order:
1. ``$JOBGATE_K8S_BIN_DIR``: must hold every cluster binary (an explicit choice, so a
   missing one is an error, not a silent fallback);
2. ``$KUBEBUILDER_ASSETS`` (envtest), when it holds all of them (envtest's usually lacks
   kube-controller-manager and kube-scheduler, so it is skipped then);
3. the per-version cache ``~/.cache/jobgate/k8s/<version>/``, built by hack/k8s/build.sh
   when cold. The build script owns the cache layout, the lock and the completeness check,
   so this module only asks it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "k8s" / "build.sh"
VERSIONS_FILE = REPO_ROOT / "hack" / "k8s" / "versions.env"

CLUSTER_BINARIES = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
)
# A cold build takes ~30-40 min on 2 cores; CI gives the whole suite 90.
BUILD_TIMEOUT_S = float(os.environ.get("JOBGATE_K8S_BUILD_TIMEOUT", 75 * 60))


class BinariesError(RuntimeError):
    pass


def read_versions() -> dict[str, str]:
    """The pinned versions (KEY=value lines of hack/k8s/versions.env)."""
    versions: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def missing_in(directory: Path) -> list[str]:
    return [b for b in CLUSTER_BINARIES if not os.access(directory / b, os.X_OK)]


def find_bin_dir(*, build: bool = True) -> Path:
    """The directory holding the cluster binaries; builds them into the cache if needed."""
    explicit = os.environ.get("JOBGATE_K8S_BIN_DIR")
    if explicit:
        directory = Path(explicit)
        missing = missing_in(directory)
        if missing:
            raise BinariesError(f"JOBGATE_K8S_BIN_DIR={directory} lacks {', '.join(missing)}")
        return directory
    envtest = os.environ.get("KUBEBUILDER_ASSETS")
    if envtest and not missing_in(Path(envtest)):
        return Path(envtest)
    return run_build(check_only=not build)


def run_build(*, check_only: bool = False) -> Path:
    """Runs hack/k8s/build.sh (a no-op on a warm cache) and returns the cache directory.

    The build's progress goes to stderr and to the cache's build.log. With check_only, a
    cold cache raises instead of building.
    """
    if check_only:
        checked = subprocess.run(["bash", str(BUILD_SCRIPT), "--check"], check=False)
        if checked.returncode != 0:
            raise BinariesError("the Kubernetes binaries are not built: run `make k8s-bins`")
    # Its own session: on timeout or Ctrl-C the whole build (go and its compilers) stops,
    # not just the script; the script's trap then removes its temp dir.
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT), "--print-dir"],
        stdout=subprocess.PIPE, stderr=None, text=True,  # stderr: inherited fd 2
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except BaseException as exc:
        _stop_group(proc)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BinariesError(f"{BUILD_SCRIPT} ran over {BUILD_TIMEOUT_S:.0f}s") from exc
        raise
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BinariesError(f"{BUILD_SCRIPT} failed (exit {proc.returncode}); see its build.log")
    directory = Path(lines[-1])
    missing = missing_in(directory)
    if missing:
        raise BinariesError(f"{directory} lacks {', '.join(missing)} after the build")
    return directory


def _stop_group(proc: subprocess.Popen[str]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
