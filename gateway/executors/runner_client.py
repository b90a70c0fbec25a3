"""The gateway's side of the runner protocol (see runtimes/runner.py): one POST with the
assignment, one JSON report back. The same client talks to a local runner on a loopback
port and to a worker pod on its pod IP."""

from __future__ import annotations

import httpx
import orjson
from pydantic import ValidationError

from gateway.errors import BadWorkerReport, WorkerLost
from gateway.executors.base import WorkerHandle
from gateway.models import RUNNER_PROTOCOL, Assignment, WorkerReport

RUN_PATH = "/v1/run"


class WorkerUnreachable(WorkerLost):
    """The worker could not be reached at all: the code never started, so the call may
    safely go to another worker."""


def parse_report(raw: bytes, source: str) -> WorkerReport:
    """A worker's report, validated where it arrives (the answer to the assignment, or
    the report.json a worker stored): BadWorkerReport when it does not validate or is of
    another runner protocol. ``source`` names where it came from, for the message."""
    try:
        report = WorkerReport.model_validate_json(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'report'}: {err['msg']}"
                             for err in e.errors()[:5])
        raise BadWorkerReport(f"{source} sent a report that does not validate "
                              f"({problems})") from None
    if report.protocol != RUNNER_PROTOCOL:
        raise BadWorkerReport(
            f"{source} speaks runner protocol {report.protocol}; this gateway speaks "
            f"{RUNNER_PROTOCOL} (the runtime and the gateway are of different versions)")
    return report


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

    async def run(self, worker: WorkerHandle, assignment: Assignment) -> WorkerReport:
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
        return parse_report(resp.content, f"worker {worker.id}")
