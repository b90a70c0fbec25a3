"""Session fixtures: one gateway per storage backend, shared by the invocation suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import KEY_A, KEY_B, CallbackReceiver, GatewayProcess


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway on its embedded default: local executor, local storage."""
    gw = GatewayProcess(tmp_path_factory.mktemp("gw") / "data").start()
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
