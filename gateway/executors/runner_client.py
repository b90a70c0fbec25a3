"""The gateway's side of the runner protocol (see runtimes/runner.py): one POST with the
assignment, one JSON report back. The same client talks to a local runner on a loopback
port and to a worker pod on its pod IP."""

from __future__ import annotations

import httpx
import orjson
from pydantic import ValidationError

from gateway.errors import WorkerLost
from gateway.executors.base import Worker
from gateway.models import Assignment, WorkerReport

RUN_PATH = "/v1/run"


class WorkerUnreachable(WorkerLost):
    """The worker could not be reached at all: the code never started, so the call may
    safely go to another worker."""


class RunnerClient:
    def __init__(self, *, grace_s: float = 30.0):
        # One pooled client per process. The runner answers once and closes, so keep-alive
        # buys nothing; the timeout is per call (the invocation's own timeout + grace).
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=4096, max_keepalive_connections=0),
            trust_env=False,
        )
        self._grace_s = grace_s

    async def close(self) -> None:
        await self._client.aclose()

    async def run(self, worker: Worker, assignment: Assignment) -> WorkerReport:
        timeout = httpx.Timeout(assignment.timeout_s + self._grace_s, connect=5.0)
        body = orjson.dumps(assignment.model_dump(mode="json"))
        try:
            resp = await self._client.post(
                worker.address + RUN_PATH,
                content=body,
                headers={"Authorization": f"Bearer {worker.token}",
                         "Content-Type": "application/json"},
                timeout=timeout,
            )
        except httpx.ConnectError as e:
            raise WorkerUnreachable(f"worker {worker.id} unreachable: {e}") from e
        except httpx.TimeoutException as e:
            raise WorkerLost(f"worker {worker.id} did not answer in time") from e
        except httpx.HTTPError as e:
            raise WorkerLost(f"worker {worker.id} went away mid-run: {e!r}") from e
        if resp.status_code != 200:
            raise WorkerUnreachable(
                f"worker {worker.id} refused the assignment: HTTP {resp.status_code}"
            )
        try:
            return WorkerReport.model_validate_json(resp.content)
        except ValidationError as e:
            raise WorkerLost(f"worker {worker.id} sent an unreadable report: {e}") from e
