"""The runner protocol at both ends: the runner (a real ``runner.py serve`` process)
refuses an assignment of a protocol it does not speak, and every report it sends carries
what the gateway needs; the gateway validates a report where it arrives."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import BadWorkerReport, WorkerFailure, WorkerLost
from gateway.executors.base import WorkerHandle
from gateway.executors.live_output import LiveOutput
from gateway.executors.runner_client import RunnerClient, parse_report
from gateway.models import ArtifactLimits, Assignment, Reason, RunLimits, WorkerReport
from tests.support import ROOT, free_port, wait_until

TOKEN = "runner-test-token"


def assignment(**fields: Any) -> dict[str, Any]:
    values = Assignment(
        invocation_id="inv_test", files={"main.sh": "echo hi"}, argv=["bash", "main.sh"],
        timeout_s=10,
        limits=RunLimits(memory_bytes=256 << 20, cpu_seconds=10, nofile=64, nproc=64,
                         fsize_bytes=1 << 20),
        output_cap_bytes=1 << 20, result_cap_bytes=1 << 20,
        artifacts=ArtifactLimits(max_count=1, max_file_bytes=1024, max_total_bytes=1024),
    ).model_dump(mode="json")
    values.update(fields)
    return values


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """``runner.py serve`` on a loopback port, its workspaces under tmp_path/root."""
    port = free_port()
    root = tmp_path / "root"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "JOBGATE_RUNNER_BIND": f"127.0.0.1:{port}", "JOBGATE_RUNNER_TOKEN": TOKEN,
           "JOBGATE_WORKSPACE_ROOT": str(root), "JOBGATE_RUNNER_PRELOAD": "0"}
    proc = subprocess.Popen([sys.executable, "-I", str(ROOT / "runtimes" / "runner.py"),
                             "serve"], env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout_s=10, message="the runner answers /healthz")
        yield url, root, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def run(url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(url + "/v1/run", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def test_the_runner_refuses_an_assignment_of_another_protocol(
        runner: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    url, root, proc = runner
    report = run(url, assignment(protocol=2))
    assert report["reason"] == "StartFailed"
    assert "runner protocol 1, not the assignment's 2" in report["error"]
    # It still carries what the gateway needs, and validates there.
    assert report["workspace_base"] and Path(report["workspace_base"]).parent == root
    parsed = parse_report(json.dumps(report).encode(), "the runner")
    assert (parsed.reason, parsed.exit_code) == (Reason.StartFailed, None)
    # Nothing ran, and the worker left nothing behind.
    assert proc.wait(10) == 0
    assert list(root.iterdir()) == []


def test_every_runner_report_carries_what_the_gateway_needs(
        runner: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """A StartFailed from inside the run (a file that cannot be written) is as complete
    as a report of code that ran."""
    url, root, proc = runner
    report = run(url, assignment(files={"main.sh": "echo hi", "main.sh/x": "y"},
                                 keep_workspace=True))
    assert report["reason"] == "StartFailed" and "FileExistsError" in report["error"]
    assert report["workspace_base"] and Path(report["workspace_base"]).parent == root
    assert parse_report(json.dumps(report).encode(), "the runner").workspace_base == \
        report["workspace_base"]
    assert proc.wait(10) == 0


# -- the gateway's end ----------------------------------------------------------------------

GOOD = {"protocol": 1, "reason": None, "exit_code": 0, "workspace_base": "/w/w-1"}


@pytest.mark.parametrize(("report", "says"), [
    ({**GOOD, "protocol": 2}, "speaks runner protocol 2; this gateway speaks 1"),
    ({k: v for k, v in GOOD.items() if k != "workspace_base"}, "workspace_base"),
    ({k: v for k, v in GOOD.items() if k != "protocol"}, "protocol"),
    ({**GOOD, "reason": "Sideways"}, "reason"),
    ({**GOOD, "reason": "InternalError"}, "not a reason a runner reports"),
    ({**GOOD, "exit_code": "zero"}, "exit_code"),
    (["not", "a", "report"], "does not validate"),
])
def test_the_gateway_refuses_a_report_it_cannot_use(report: object, says: str) -> None:
    with pytest.raises(BadWorkerReport) as caught:
        parse_report(json.dumps(report).encode(), "worker w-1")
    assert says in str(caught.value) and "worker w-1" in str(caught.value)
    # A failure of the worker, not a crash: the invocation ends with a reason...
    assert isinstance(caught.value, WorkerFailure)
    assert caught.value.reason is Reason.WorkerLost
    # ...but not a lost answer, which another path (a stored report) may still rescue.
    assert not isinstance(caught.value, WorkerLost)


class _Answer(BaseHTTPRequestHandler):
    body = b"{}"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


async def test_the_runner_client_validates_the_answer(tmp_path: Path) -> None:
    """Where a report arrives: an answer of another protocol is refused, a good one read."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = RunnerClient(grace_s=5)
    worker = WorkerHandle(id="w-1", profile="p",
                          address=f"http://127.0.0.1:{server.server_port}", token=TOKEN,
                          ready_at=0.0, start_latency_s=0.0)
    try:
        _Answer.body = json.dumps({**GOOD, "protocol": 7}).encode()
        with pytest.raises(BadWorkerReport, match="protocol 7"):
            await client.run(worker, Assignment.model_validate(assignment()))
        _Answer.body = json.dumps(GOOD).encode()
        report = await client.run(worker, Assignment.model_validate(assignment()))
        assert (report.exit_code, report.workspace_base) == (0, "/w/w-1")
    finally:
        await client.close()
        server.shutdown()
        server.server_close()


# -- live output ----------------------------------------------------------------------------


async def _run_followed(url: str, script: str, want_after_s: float | None
                        ) -> tuple[WorkerReport, LiveOutput, float | None, float]:
    """A real runner runs ``script``; ``want_after_s`` into the run someone follows (never,
    with None). The report, the output as it arrived, when its first byte did and when
    the report did."""
    output = LiveOutput()
    worker = WorkerHandle(id="w-live", profile="bash", address=url, token=TOKEN,
                          ready_at=0.0, start_latency_s=0.0)
    call = asyncio.create_task(RunnerClient(grace_s=5).run(
        worker, Assignment.model_validate(assignment(files={"main.sh": script})), output))
    first: float | None = None
    if want_after_s is not None:
        await asyncio.sleep(want_after_s)
        output.want()
        while not output.text("stdout") and not call.done():
            await asyncio.wait({output.changed(), call}, timeout=5,
                               return_when=asyncio.FIRST_COMPLETED)
        if output.text("stdout"):
            first = time.monotonic()
    report = await call
    return report, output, first, time.monotonic()


async def test_a_followed_runner_streams_its_output_before_it_reports(
        runner: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """Asked to watch mid-run (the W byte), the runner sends what the code wrote so far
    and what it writes next, in frames, then the report; the output is the report's."""
    url, _root, _proc = runner
    report, output, first, reported = await _run_followed(
        url, "echo one; echo err >&2; sleep 1; echo two", want_after_s=0.3)
    assert report.exit_code == 0 and report.stdout == "one\ntwo\n"
    assert first is not None and reported - first >= 0.5
    assert bytes(output.text("stdout")) in (b"one\n", b"one\ntwo\n")
    assert bytes(output.text("stderr")) == b"err\n" == report.stderr.encode()


async def test_a_runner_nobody_follows_answers_as_before(
        runner: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    url, _root, _proc = runner
    report, output, _first, _ = await _run_followed(url, "echo one; sleep 0.3; echo two",
                                                    want_after_s=None)
    assert report.stdout == "one\ntwo\n"
    assert output.text("stdout") == b"" and output.text("stderr") == b""
