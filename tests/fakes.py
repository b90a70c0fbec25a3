"""Fakes where the real part is not the point: an executor that runs nothing, and the
gateway app in this process around it (driven through httpx's ASGI transport). The real
executors have their own end-to-end suites."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.api.app import Gateway, create_app
from gateway.config.profiles import Profile
from gateway.config.settings import Settings
from gateway.executors.base import Executor, Worker
from gateway.models import Assignment, PoolState, WorkerReport

PROFILES = """
[profiles.fake]
image = "jobgate/runtime-fake:0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
pool = { min = 0, max = 1 }
"""


def report(**fields: Any) -> WorkerReport:
    """A report as a runner sends it: every field of the protocol."""
    values: dict[str, Any] = {"protocol": 1, "reason": None, "exit_code": 0, "signal": None,
                              "workspace_base": None, "timings": {"run_ms": 1.0}}
    values.update(fields)
    return WorkerReport.model_validate(values)


class FakeExecutor(Executor):
    """Workers that are always there and succeed at once; what it was asked is kept."""

    name = "fake"
    identity = "fake-replica"

    def __init__(self) -> None:
        self.runs: list[Assignment] = []
        self.released: list[tuple[Worker, WorkerReport | None]] = []
        self._ids = itertools.count(1)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def check_room(self, profile: Profile) -> None:
        pass

    async def acquire(self, profile: Profile, invocation_id: str) -> Worker:
        return Worker(id=f"fake-{next(self._ids)}", profile=profile.name,
                      address="http://fake.invalid", token="t", ready_at=time.monotonic(),
                      start_latency_s=0.0, warm=True)

    async def run(self, worker: Worker, assignment: Assignment) -> WorkerReport:
        self.runs.append(assignment)
        return report()

    async def cancel(self, worker: Worker) -> None:
        pass

    async def release(self, worker: Worker, report: WorkerReport | None) -> None:
        self.released.append((worker, report))

    async def end_attempt(self, invocation_id: str) -> bool:
        return True  # a fake worker never outlives its call

    def pools(self) -> list[PoolState]:
        return []

    async def check(self) -> None:
        pass


@dataclass
class InProcessGateway:
    client: httpx.AsyncClient
    gateway: Gateway


@contextlib.asynccontextmanager
async def inprocess_gateway(tmp: Path, executor: Executor) -> AsyncIterator[InProcessGateway]:
    """The real app (routes, dispatch, local storage) in this process, lifespan and all,
    around the given executor. No API keys: the one default tenant."""
    catalogue = tmp / "profiles.toml"
    catalogue.write_text(PROFILES)
    settings = Settings(data_dir=tmp / "data", profiles=catalogue, shutdown_grace_s=1)
    app = create_app(settings, executor=executor)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test",
                                     timeout=30) as client:
            yield InProcessGateway(client, app.state.jobgate)
