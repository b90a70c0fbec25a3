"""The gateway's side of the runner protocol (see runtimes/runner.py): one POST with the
assignment, one JSON report back, on a connection that closes after it. The same client
talks to a local runner on a loopback port and to a worker pod on its pod IP.

A run someone follows (``LiveOutput.want``) sends the runner one more byte, WATCH, on the
same connection; the runner then answers in frames (its output as it grows, then the
report), fed to the ``LiveOutput`` as they arrive. Nobody following, nothing is sent or
read beyond the request and its one answer."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import orjson
from pydantic import ValidationError

from gateway.errors import BadWorkerReport, WorkerLost
from gateway.executors.base import WorkerHandle
from gateway.executors.live_output import STREAMS, LiveOutput
from gateway.models import RUNNER_PROTOCOL, Assignment, WorkerReport

RUN_PATH = "/v1/run"
CONNECT_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 16 * 1024
# A report carries at most the output caps' worth of text (stdout, stderr, the result),
# JSON-escaped: far below this.
MAX_REPORT_BYTES = 256 * 1024 * 1024
# The live output frames (runtimes/runner.py OutputStreamer).
WATCH = b"W"
FRAMES_TYPE = "application/x-jobgate-frames"
MAX_FRAME_BYTES = 1024 * 1024


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
    """One request per worker, on a connection of its own: the runner answers once and
    closes (``Connection: close``), so there is no pool to keep. Spoken directly on
    asyncio streams: the runner's HTTP is a fixed, tiny subset (runtimes/runner.py), and
    a general client (httpx) cost ~1.6 ms of the gateway's CPU per call, measured."""

    def __init__(self, *, grace_s: float = 30.0):
        self._grace_s = grace_s

    async def close(self) -> None:
        pass  # no connection outlives its call

    async def run(self, worker: WorkerHandle, assignment: Assignment,
                  output: LiveOutput | None = None) -> WorkerReport:
        """The worker's report; with ``output``, what it streams while the code runs,
        if someone follows, goes there."""
        host, port = _host_port(worker.address)
        body = orjson.dumps(assignment.model_dump(mode="json"))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as e:
            raise WorkerUnreachable(f"worker {worker.id} unreachable: {e!r}") from e
        try:
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (
                             RUN_PATH.encode(), host.encode(), worker.token.encode(),
                             len(body)) + body)
            if output is not None:
                output.connect(assignment.output_cap_bytes, lambda: writer.write(WATCH))
            async with asyncio.timeout(assignment.timeout_s + self._grace_s):
                await writer.drain()
                status, content = await _read_response(reader, output)
        except TimeoutError as e:
            raise WorkerLost(f"worker {worker.id} did not answer in time") from e
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
            raise WorkerLost(f"worker {worker.id} went away mid-run: {e!r}") from e
        finally:
            if output is not None:
                output.disconnect()
            writer.close()
        if status != 200:
            raise WorkerUnreachable(
                f"worker {worker.id} refused the assignment: HTTP {status}")
        return parse_report(content, f"worker {worker.id}")


def _host_port(address: str) -> tuple[str, int]:
    """``http://host:port`` (as executors make them) to its parts."""
    split = urlsplit(address)
    if split.scheme != "http" or not split.hostname or split.port is None:
        raise WorkerUnreachable(f"not a runner address: {address!r}")
    return split.hostname, split.port


async def _read_response(reader: asyncio.StreamReader, output: LiveOutput | None
                         ) -> tuple[int, bytes]:
    """Status and body of the runner's one answer: a status line, headers with a
    Content-Length, the body (bounded by MAX_REPORT_BYTES); or, from a watched runner,
    frames of output (to ``output``) and the report last."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD_BYTES:
        raise ValueError("the runner's answer has an oversized head")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {lines[0][:80]!r}")
    length, framed = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "content-type":
            framed = value.strip() == FRAMES_TYPE
    if framed:
        return int(parts[1]), await _read_frames(reader, output)
    if length is None or not 0 <= length <= MAX_REPORT_BYTES:
        raise ValueError(f"the runner's answer has no usable length ({length})")
    return int(parts[1]), await reader.readexactly(length)


async def _read_frames(reader: asyncio.StreamReader, output: LiveOutput | None) -> bytes:
    """``out <stream> <offset> <length>`` frames until ``report <length>``: the report."""
    while True:
        line = await reader.readuntil(b"\n")
        fields = line.split()
        if len(fields) == 2 and fields[0] == b"report" and fields[1].isdigit() \
                and int(fields[1]) <= MAX_REPORT_BYTES:
            return await reader.readexactly(int(fields[1]))
        if len(fields) != 4 or fields[0] != b"out" or not fields[2].isdigit() \
                or not fields[3].isdigit() or int(fields[3]) > MAX_FRAME_BYTES:
            raise ValueError(f"not a frame of the runner: {line[:80]!r}")
        stream = fields[1].decode("latin-1")
        if stream not in STREAMS:
            raise ValueError(f"a frame of an unknown stream: {line[:80]!r}")
        data = await reader.readexactly(int(fields[3]))
        if output is not None:
            output.feed(stream, int(fields[2]), data)
