"""Session fixtures: one gateway per configuration (local, s3, kubernetes), shared by the
invocation suite, which runs once against each. Tests that depend on how the local
executor works inside (processes, uids) carry the ``local_only`` marker and run only
against the configurations using it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.backends import kubernetes_env, local_profiles_env, selected_configs
from tests.support import KEY_A, KEY_B, CallbackReceiver, GatewayProcess, free_port

pytest_plugins = ["tests.servers.seaweedfs", "tests.cluster.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_only: needs the local executor's internals")


# Fixtures parametrized by configuration (selected_configs()): the shared ``gateway`` and
# the gateways of a module's own settings (``configured_gateway``).
CONFIG_FIXTURES = ("gateway", "configured_gateway")


def _config_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    return next((callspec.params[name] for name in CONFIG_FIXTURES
                 if name in callspec.params), None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """local_only tests are deselected (not skipped) for the Kubernetes configuration."""
    keep, drop = [], []
    for item in items:
        if _config_of(item) == "kubernetes" and item.get_closest_marker("local_only"):
            drop.append(item)
        else:
            keep.append(item)
            if _config_of(item) == "kubernetes":
                item.add_marker(pytest.mark.cluster)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    """The Kubernetes configuration needs the test cluster: its packages, binaries and
    images are made (cold cache) before the first test, outside any test's timeout."""
    if session.config.option.collectonly:
        return
    if any(_config_of(item) == "kubernetes" for item in session.items):
        from tests.cluster.fixtures import prepare_cluster

        prepare_cluster(session.config)


def start_configured(request: pytest.FixtureRequest, config: str, work: Path,
                     env: dict[str, str] | None = None, *,
                     bucket: str | None = None) -> GatewayProcess:
    """A gateway of one configuration (local, s3, kubernetes), its data and profiles in
    ``work``, with ``env`` added: the shared ``gateway``, and any module's own."""
    settings: dict[str, str] = local_profiles_env(work)
    if config in ("s3", "kubernetes"):
        seaweedfs = request.getfixturevalue("seaweedfs")
        settings.update(seaweedfs.gateway_env(bucket=bucket or f"suite-{config}",
                                              prefix="jobgate"))
    port = free_port()
    if config == "kubernetes":
        cluster = request.getfixturevalue("k8s_cluster")
        k8s, _namespace = kubernetes_env(cluster, work, s3_port=seaweedfs.ports["s3"],
                                         gateway_port=port)
        settings.update(k8s)
    settings.update(env or {})
    gw = GatewayProcess(work / "data", env=settings, port=port).start(timeout_s=120)
    gw.config = config  # type: ignore[attr-defined]
    return gw


@pytest.fixture(scope="session", params=selected_configs())
def gateway(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config: str = request.param
    gw = start_configured(request, config, tmp_path_factory.mktemp(f"gw-{config}"))
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with gateway.client(KEY_A) as c:
        yield c


@pytest.fixture
def client_b(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with gateway.client(KEY_B) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as r:
        yield r


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(params=selected_configs())
def configured_gateway(request: pytest.FixtureRequest, tmp_path: Path
                       ) -> Iterator[Callable[[dict[str, str]], GatewayProcess]]:
    """Start gateways of this configuration with a test's own settings: ``start(env)``.
    Each is stopped at the end of the test."""
    config: str = request.param
    started: list[GatewayProcess] = []

    def start(env: dict[str, str]) -> GatewayProcess:
        work = tmp_path / f"gw-{len(started)}"
        work.mkdir()
        gw = start_configured(request, config, work, env,
                              bucket=f"own-{config}-{uuid.uuid4().hex[:8]}")
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
