"""pytest plugin: the session's Kubernetes cluster (test infrastructure).

Registered by ``pytest_plugins = ["tests.cluster.fixtures"]`` in tests/conftest.py.

* ``k8s_cluster`` (session): starts the test cluster (control plane and a real node, with
  the images built from the repository's Dockerfiles) once, or, when
  JOBGATE_TEST_KUBECONFIG names a kubeconfig, uses that cluster (kind, k3d, a real one).
* Every test using it is marked ``cluster`` (so ``-m "not cluster"`` skips them).
* The binaries and images are built, when the cache is cold, right after collection:
  outside any test's timeout, and never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.binaries import BinariesError, find_bin_dir
from tests.cluster.control_plane import TestControlPlane
from tests.cluster.handle import K8sCluster
from tests.cluster.images import build_all
from tests.cluster.packages import ensure_node_packages

EXTERNAL_ENV = "JOBGATE_TEST_KUBECONFIG"
FIXTURE = "k8s_cluster"
IMAGES = pytest.StashKey[dict[str, Path]]()


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line(line)


def _needs_cluster(items: list[pytest.Item]) -> bool:
    return any(FIXTURE in getattr(item, "fixturenames", ()) for item in items)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Prepares the cluster before the first test when a selected test needs it."""
    if _needs_cluster(session.items):
        prepare_cluster(session.config)


def prepare_cluster(config: pytest.Config) -> None:
    """Packages, binaries and images for the test cluster, before the first test: outside
    any test's timeout, shown live on the terminal. Once per session."""
    if config.option.collectonly or os.environ.get(EXTERNAL_ENV) or IMAGES in config.stash:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    # Show a build's progress live instead of holding it in pytest's capture.
    guard = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with guard:
        ensure_node_packages()
        try:
            find_bin_dir(build=False)
        except BinariesError:
            _say(config, "test cluster: building the Kubernetes binaries "
                         "(cold cache: about 12 min on 2 cores; see docs/testing.md)")
            find_bin_dir(build=True)
        started = time.monotonic()
        config.stash[IMAGES] = build_all()
    _say(config, f"test cluster: images built from the Dockerfiles in "
                 f"{time.monotonic() - started:.1f}s")


@pytest.fixture(scope="session")
def k8s_cluster(request: pytest.FixtureRequest) -> Iterator[K8sCluster]:
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        kubectl = shutil.which("kubectl")
        try:
            bin_dir: Path | None = find_bin_dir(build=False)
        except BinariesError:
            bin_dir = Path(kubectl).parent if kubectl else None
        cluster = K8sCluster.external(Path(external), bin_dir)
        yield cluster
        shutil.rmtree(cluster.work_dir, ignore_errors=True)
        return

    prepare_cluster(request.config)
    images = request.config.stash[IMAGES]
    plane = TestControlPlane.start(find_bin_dir(build=True), images=images)
    _say(request.config, f"test cluster: started in {plane.started_in_s:.1f}s "
                         f"at {plane.server}")
    cluster = K8sCluster.from_plane(plane)
    try:
        yield cluster
    finally:
        cluster.close()
        plane.stop()
