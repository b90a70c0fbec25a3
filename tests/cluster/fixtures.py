"""pytest plugin: the session's Kubernetes cluster (test infrastructure).

Registered by ``pytest_plugins = ["tests.cluster.fixtures"]`` in tests/conftest.py.

* ``k8s_cluster`` (session): starts the test control plane once, or, when
  JOBGATE_TEST_KUBECONFIG names a kubeconfig, uses that cluster (kind, k3d, a real one).
* Every test using it is marked ``cluster`` (so ``-m "not cluster"`` skips them).
* The binaries are built, when the cache is cold, right after collection: outside any
  test's timeout, and never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.binaries import BinariesError, find_bin_dir
from tests.cluster.control_plane import TestControlPlane
from tests.cluster.handle import K8sCluster

EXTERNAL_ENV = "JOBGATE_TEST_KUBECONFIG"
IMAGE_MAP_ENV = "JOBGATE_TEST_IMAGE_MAP"
FIXTURE = "k8s_cluster"


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
    """Builds the binaries before the first test when a selected test needs the cluster."""
    config = session.config
    if config.option.collectonly or os.environ.get(EXTERNAL_ENV):
        return
    if not _needs_cluster(session.items):
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    try:
        find_bin_dir(build=False)
        return
    except BinariesError:
        pass
    _say(config, "test control plane: building the Kubernetes binaries "
                 "(cold cache: about 8 min on 2 cores; see docs/testing.md)")
    # Show the build's progress live instead of holding it in pytest's capture.
    guard = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with guard:
        find_bin_dir(build=True)


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

    image_map = os.environ.get(IMAGE_MAP_ENV)
    plane = TestControlPlane.start(
        find_bin_dir(build=True), image_map_path=Path(image_map) if image_map else None
    )
    _say(request.config, f"test control plane: started in {plane.started_in_s:.1f}s "
                         f"at {plane.server}")
    try:
        yield K8sCluster.from_plane(plane)
    finally:
        plane.stop()
