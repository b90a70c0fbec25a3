"""gateway.client against a real gateway over HTTP (the session ``gateway``, one per
configuration), and its retries and log stream against small loopback HTTP servers written
here, where the gateway cannot be made to answer what the test needs (a 503, a dropped
event stream). Nothing of the client is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.client import (
    ApiError,
    AsyncClient,
    Client,
    Conflict,
    InvalidInput,
    LogChunk,
    LogEnd,
    NotFound,
    RateLimited,
    RetryPolicy,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    UnsafeArtifactName,
    WaitTimeout,
    safe_target,
)
from gateway.client.logstream import ServerSentEvent, SSEDecoder
from gateway.client.retries import NO_RETRIES, retry_after_s
from gateway.models import Status
from tests.support import (
    KEY_A,
    KEY_B,
    ROOT,
    GatewayProcess,
    free_port,
    running_gateway,
)

PY = "python3.11"


@pytest.fixture
def jg(gateway: GatewayProcess) -> Iterator[Client]:
    with Client(gateway.url, KEY_A) as c:
        yield c


# -- importing it ------------------------------------------------------------------------


def test_the_client_imports_without_the_server() -> None:
    probe = ("import sys, gateway.client, jobgate.client; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, check=True)
    loaded = set(p.stdout.split())
    assert {"httpx", "pydantic", "gateway"} <= loaded
    assert not loaded & {"starlette", "uvicorn", "prometheus_client", "pydantic_settings",
                         "aioboto3", "kubernetes_asyncio"}, loaded


def test_url_and_key_come_from_the_environment(gateway: GatewayProcess) -> None:
    env = {**os.environ, "JOBGATE_URL": gateway.url + "/", "JOBGATE_API_KEY": KEY_B}
    probe = ("from gateway.client import Client; c = Client(); "
             "print(c.config.endpoint.url, len(c.profiles()) > 0)")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=env)
    assert p.stdout.split() == [gateway.url, "True"], p.stderr


# -- invocations -------------------------------------------------------------------------


def test_invoke_answers_the_ended_invocation(jg: Client) -> None:
    done = jg.invoke(PY, "import json; print(json.load(open('input.json'))['n'] * 2)",
                     input={"n": 21}, args=["x"])
    assert done.status is Status.succeeded and done.stdout == "42\n"
    assert done.exit_code == 0 and done.id.startswith("inv_")
    failed = jg.invoke("bash", "echo oops >&2; exit 3")
    assert failed.status is Status.failed and failed.exit_code == 3
    assert failed.stderr == "oops\n"


def test_invoke_follows_a_202_until_it_ends(gateway: GatewayProcess) -> None:
    seen: list[Status] = []
    with Client(gateway.url, KEY_A, poll_s=0.3) as jg:
        # wait_s: the gateway answers 202 after 0.2 s; the client follows the Location.
        done = jg.invoke("bash", "sleep 1.5; echo late", wait_s=0.2,
                         progress=lambda inv: seen.append(inv.status))
    assert done.status is Status.succeeded and done.stdout == "late\n"
    assert seen and set(seen) <= {Status.queued, Status.running}


def test_a_wait_that_runs_out_raises_wait_timeout(jg: Client) -> None:
    with pytest.raises(WaitTimeout) as caught:
        jg.invoke("bash", "sleep 20", wait_s=0.2, wait=0.5)
    cancelled = jg.cancel(caught.value.invocation_id)
    assert cancelled.status is Status.cancelled
    with pytest.raises(Conflict) as again:
        jg.cancel(caught.value.invocation_id)
    assert again.value.code == "AlreadyFinished" and again.value.status == 409


def test_submit_then_wait_get_and_logs(jg: Client) -> None:
    accepted = jg.submit("bash", "echo out; echo err >&2", idempotency_key="same-key-1")
    assert accepted.status is Status.queued
    # The same key and body: the same invocation, not a second run.
    assert jg.submit("bash", "echo out; echo err >&2", idempotency_key="same-key-1"
                     ).id == accepted.id
    done = jg.wait(accepted.id, 30)
    assert done.status is Status.succeeded
    assert jg.get(accepted.id).stdout == "out\n"
    logs = jg.logs(accepted.id)
    assert (logs.stdout, logs.stderr, logs.stdout_truncated) == ("out\n", "err\n", False)


def test_list_walks_every_page(jg: Client) -> None:
    mine = {jg.submit("bash", f"echo {i}").id for i in range(5)}
    newest = list(jg.list(limit=5, page_size=2))  # three pages
    assert {item.id for item in newest} == mine
    assert len(list(jg.list(limit=3, page_size=2))) == 3
    for inv_id in mine:
        jg.wait(inv_id, 30)
    succeeded = list(jg.list(status="succeeded", profile="bash", limit=5, page_size=2))
    assert {i.id for i in succeeded} == mine
    assert {(i.status, i.profile) for i in succeeded} == {(Status.succeeded, "bash")}


def test_artifacts_list_download_and_download_all(jg: Client, tmp_path: Path) -> None:
    code = ("import os; os.makedirs('artifacts/sub', exist_ok=True)\n"
            "open('artifacts/a.txt', 'w').write('alpha')\n"
            "open('artifacts/sub/b.bin', 'wb').write(bytes(range(256)) * 1000)\n")
    done = jg.invoke(PY, code)
    listed = {a.name: a for a in jg.artifacts(done.id)}
    assert set(listed) == {"a.txt", "sub/b.bin"} and listed["sub/b.bin"].size == 256_000
    one = jg.download_artifact(done.id, "a.txt", tmp_path / "one" / "a.txt")
    assert one.read_text() == "alpha"
    paths = jg.download_artifacts(done.id, tmp_path / "all")
    assert sorted(p.relative_to(tmp_path / "all").as_posix() for p in paths) == \
        ["a.txt", "sub/b.bin"]
    assert (tmp_path / "all" / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 1000
    assert not list((tmp_path / "all").rglob("*.part"))
    with pytest.raises(NotFound) as missing:
        jg.download_artifact(done.id, "nope.txt", tmp_path / "nope.txt")
    assert missing.value.code == "ArtifactNotFound"
    assert not (tmp_path / "nope.txt").exists()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a/./b", "", "a//b",
                                  "a\\..\\x", "nul\x00byte", "..", "sub/.."])
def test_a_hostile_artifact_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeArtifactName):
        safe_target(tmp_path, name)


def test_an_artifact_name_through_a_link_out_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "link").symlink_to(outside)
    with pytest.raises(UnsafeArtifactName):
        safe_target(tmp_path / "dest", "link/x")
    assert safe_target(tmp_path / "dest", "sub/x") == (tmp_path / "dest" / "sub" / "x"
                                                        ).resolve()


def test_profiles(jg: Client) -> None:
    profiles = {p.name: p for p in jg.profiles()}
    assert {"bash", PY} <= set(profiles)
    assert profiles["bash"].max_timeout_s > 0


# -- errors ------------------------------------------------------------------------------


def test_api_errors_are_typed_with_code_status_and_message(gateway: GatewayProcess,
                                                           jg: Client) -> None:
    with pytest.raises(NotFound) as nf:
        jg.get("inv_0000000000aaaaaaaaaa")
    assert (nf.value.status, nf.value.code) == (404, "InvocationNotFound")
    with Client(gateway.url, "jg_wrong_key_0123456789") as wrong, \
            pytest.raises(Unauthorized) as unauthorized:
        wrong.profiles()
    assert unauthorized.value.status == 401 and unauthorized.value.code == "Unauthorized"
    with pytest.raises(InvalidInput) as bad:
        jg.invoke("bash", "true", timeout_s=-1)
    assert bad.value.code == "InvalidInput" and bad.value.details[0]["loc"] == ["timeout_s"]
    with pytest.raises(InvalidInput) as unknown:
        jg.invoke("cobol", "DISPLAY 'HI'.")
    assert unknown.value.code == "ProfileNotFound" and "bash" in unknown.value.details["known"]
    assert isinstance(unknown.value, ApiError) and "ProfileNotFound" in str(unknown.value)


def test_an_unreachable_gateway_is_a_transport_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", KEY_A) as nowhere, \
            pytest.raises(TransportError, match="cannot reach the gateway"):
        nowhere.get("inv_0000000000aaaaaaaaaa")


# -- retries -----------------------------------------------------------------------------


def test_a_full_queue_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    """A real 429 (QueueFull): one worker busy and no queue room; the submit is retried
    after each Retry-After until the worker is free."""
    with running_gateway(tmp_path, JOBGATE_MAX_CONCURRENCY="1",
                         JOBGATE_QUEUE_SIZE="0") as gw:
        patient = Client(gw.url, KEY_A, retry=RetryPolicy(attempts=20, max_total_s=40))
        with patient, Client(gw.url, KEY_A, retry=NO_RETRIES) as impatient:
            busy = patient.submit("bash", "sleep 2")
            deadline = time.monotonic() + 30
            while patient.get(busy.id).status is not Status.running:
                assert time.monotonic() < deadline, "the first never ran"
                time.sleep(0.05)
            with pytest.raises(RateLimited) as refused:
                impatient.submit("bash", "echo refused")
            assert refused.value.code == "QueueFull" and refused.value.retry_after >= 1
            started = time.monotonic()
            accepted = patient.submit("bash", "echo admitted")
            assert time.monotonic() - started >= 1  # waited at least one Retry-After
            assert patient.wait(accepted.id, 30).stdout == "admitted\n"
            assert patient.get(busy.id).status is Status.succeeded


class ScriptedServer:
    """A loopback HTTP server that answers each request with the next scripted answer
    (a function of the handler) and records what it was sent."""

    def __init__(self, answers: list[Callable[[BaseHTTPRequestHandler], None]]):
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server.requests.append({"method": self.command, "path": self.path,
                                        "headers": {k.lower(): v for k, v in
                                                    self.headers.items()},
                                        "body": self.rfile.read(length),
                                        "at": time.monotonic()})
                server.answers.pop(0)(self)

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


def answer(status: int, body: bytes = b"", content_type: str = "application/json",
           **headers: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def send(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            h.send_header(name.replace("_", "-"), value)
        h.end_headers()
        h.wfile.write(body)
    return send


def queue_full(**headers: str) -> Callable[[BaseHTTPRequestHandler], None]:
    return answer(429, b'{"error": {"code": "QueueFull", "message": "full", "details": null}}',
                  **headers)


PROFILES = b'{"items": []}'
ACCEPTED = (b'{"id": "inv_0000000000aaaaaaaaaa", "status": "queued", "links": {"self": "s",'
            b' "logs": "l", "artifacts": "a", "cancel": "c"}}')


def test_retry_after_as_seconds_and_as_an_http_date() -> None:
    now = time.time()
    assert retry_after_s("3") == 3.0
    assert retry_after_s(formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10, abs=1)
    assert retry_after_s(formatdate(now - 10, usegmt=True), now=now) == 0.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def queue_full_until(seconds: float) -> Callable[[BaseHTTPRequestHandler], None]:
    """Retry-After as an HTTP-date (whole seconds: between seconds - 1 and seconds ahead)."""
    def send(h: BaseHTTPRequestHandler) -> None:
        queue_full(Retry_After=formatdate(time.time() + seconds, usegmt=True))(h)
    return send


def test_429_and_503_are_retried_honouring_retry_after() -> None:
    with ScriptedServer([queue_full(Retry_After="1"), queue_full_until(2),
                         answer(503, b"{}"), answer(200, PROFILES)]) as server, \
            Client(server.url, KEY_A, retry=RetryPolicy(backoff_s=0.1)) as c:
        assert c.profiles() == []
    at = [r["at"] for r in server.requests]
    assert len(at) == 4
    assert at[1] - at[0] >= 0.95  # Retry-After: 1
    assert at[2] - at[1] >= 0.9   # the HTTP-date
    assert 0.09 <= at[3] - at[2] < 1  # no Retry-After: the backoff


def test_fields_a_newer_gateway_added_are_ignored_and_a_wrong_answer_is_refused() -> None:
    newer = (b'{"id": "inv_0000000000aaaaaaaaaa", "status": "queued", "region": "eu",'
             b' "links": {"self": "s", "logs": "l", "artifacts": "a", "cancel": "c",'
             b' "events": "e"}}')
    wrong = b'{"id": "inv_0000000000aaaaaaaaaa", "status": 7, "extra": 1}'
    with ScriptedServer([answer(202, newer), answer(202, wrong)]) as server, \
            Client(server.url, KEY_A) as c:
        accepted = c.submit("bash", "true")
        assert accepted.id == "inv_0000000000aaaaaaaaaa" and accepted.links.logs == "l"
        with pytest.raises(UnexpectedAnswer):
            c.submit("bash", "true")


def test_an_invoke_is_retried_with_the_same_key_and_body() -> None:
    with ScriptedServer([queue_full(Retry_After="0"), answer(202, ACCEPTED)]) as server, \
            Client(server.url, KEY_A) as c:
        assert c.submit("bash", "echo hi", env={"A": "1"}).id == "inv_0000000000aaaaaaaaaa"
    first, second = server.requests
    assert first["headers"]["idempotency-key"] == second["headers"]["idempotency-key"]
    assert first["headers"]["idempotency-key"].startswith("jgc-")
    assert first["body"] == second["body"]


def test_retries_are_bounded_and_unsafe_requests_not_retried() -> None:
    with ScriptedServer([queue_full(Retry_After="0")] * 3) as server, \
            Client(server.url, KEY_A, retry=RetryPolicy(attempts=3)) as c, \
            pytest.raises(RateLimited):
        c.profiles()
    assert len(server.requests) == 3
    with ScriptedServer([queue_full(Retry_After="3600")]) as server, \
            Client(server.url, KEY_A) as c, pytest.raises(RateLimited) as long_wait:
        c.profiles()  # past max_delay_s: not waited for, raised with the wait asked
    assert len(server.requests) == 1 and long_wait.value.retry_after == 3600
    with ScriptedServer([answer(503, b'{"error": {"code": "ShuttingDown", "message": "m"}}',
                                Retry_After="0")]) as server, \
            Client(server.url, KEY_A) as c, pytest.raises(Unavailable) as down:
        c.cancel("inv_0000000000aaaaaaaaaa")  # a POST without a key: never repeated
    assert len(server.requests) == 1 and down.value.code == "ShuttingDown"


# -- live logs (server-sent events) ------------------------------------------------------


def test_sse_decoder_gives_the_same_events_however_the_bytes_are_cut() -> None:
    stream = ("\ufeff: ping\r\nevent: output\r\nid: 3.0\r\ndata: {\"a\": 1}\r\n\r\n"
              "event: output\rid: 3.2\rdata: line1\rdata: line2\r\r"
              "id: 9.9\n\n"  # no data: not dispatched, but the id counts
              "data: plain é\n\n"
              "event: end\ndata:{\"status\": \"succeeded\"}\n\n").encode()
    expected = [ServerSentEvent("output", '{"a": 1}', "3.0"),
                ServerSentEvent("output", "line1\nline2", "3.2"),
                ServerSentEvent("message", "plain é", "9.9"),
                ServerSentEvent("end", '{"status": "succeeded"}', "9.9")]
    whole = SSEDecoder()
    assert whole.feed(stream) == expected
    for cut in range(1, len(stream)):
        decoder = SSEDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == expected, cut
    byte_by_byte = SSEDecoder()
    assert [e for i in range(len(stream)) for e in byte_by_byte.feed(stream[i:i + 1])] \
        == expected
    assert byte_by_byte.last_event_id == "9.9"


def sse(*events: tuple[str, str, str]) -> bytes:
    return b"".join(f": ping\nevent: {e}\nid: {i}\ndata: {d}\n\n".encode()
                    for e, i, d in events)


OUT1 = ("output", "4.0", '{"stream": "stdout", "offset": 0, "data": "one\\n"}')
OUT2 = ("output", "4.4", '{"stream": "stderr", "offset": 0, "data": "err\\n"}')
OUT3 = ("output", "8.4", '{"stream": "stdout", "offset": 4, "data": "two\\n"}')
END = ("end", "8.4", '{"status": "failed", "exit_code": 3, "stdout_truncated": false,'
                     ' "stderr_truncated": false}')


def event_stream(body: bytes, *, cut: bool = False) -> Callable[[BaseHTTPRequestHandler], None]:
    """Chunked SSE; ``cut``: the connection is dropped mid-chunk (a broken transfer)."""
    def send(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.write(f"{len(body) + (100 if cut else 0):x}\r\n".encode() + body)
        if not cut:
            h.wfile.write(b"\r\n0\r\n\r\n")
        h.wfile.flush()
        h.close_connection = True
    return send


def test_follow_logs_resumes_from_the_last_event_after_a_drop() -> None:
    with ScriptedServer([event_stream(sse(OUT1), cut=True),       # broken mid-transfer
                         event_stream(sse(OUT2)),                  # ends without `end`
                         event_stream(sse(OUT3, END))]) as server, \
            Client(server.url, KEY_A) as c:
        got = list(c.follow_logs("inv_0000000000aaaaaaaaaa"))
    assert got == [LogChunk(stream="stdout", offset=0, data="one\n"),
                   LogChunk(stream="stderr", offset=0, data="err\n"),
                   LogChunk(stream="stdout", offset=4, data="two\n"),
                   LogEnd(status=Status.failed, exit_code=3)]
    first, second, third = server.requests
    assert first["path"] == "/v1/invocations/inv_0000000000aaaaaaaaaa/logs?follow=true"
    assert first["headers"]["accept"] == "text/event-stream"
    assert "last-event-id" not in first["headers"]
    assert second["headers"]["last-event-id"] == "4.0"
    assert third["headers"]["last-event-id"] == "4.4"


def test_follow_logs_gives_up_after_its_reconnections() -> None:
    with ScriptedServer([event_stream(b": ping\n\n")] * 3) as server, \
            Client(server.url, KEY_A) as c, pytest.raises(TransportError, match="ended"):
        list(c.follow_logs("inv_0000000000aaaaaaaaaa", reconnects=2))
    assert len(server.requests) == 3


async def test_async_follow_logs_resumes_too() -> None:
    with ScriptedServer([event_stream(sse(OUT1), cut=True),
                         event_stream(sse(OUT3, END))]) as server:
        async with AsyncClient(server.url, KEY_A) as c:
            got = [item async for item in c.follow_logs("inv_0000000000aaaaaaaaaa")]
    assert [type(g) for g in got] == [LogChunk, LogChunk, LogEnd]
    assert server.requests[1]["headers"]["last-event-id"] == "4.0"


def test_follow_logs_from_the_gateway(gateway: GatewayProcess, jg: Client) -> None:
    """End to end: GET …/logs?follow=true as the gateway streams it."""
    accepted = jg.submit("bash", "for i in 1 2 3; do echo out $i; echo err $i >&2; "
                         "sleep 0.3; done; exit 4")
    arrived: list[tuple[float, LogChunk | LogEnd]] = []
    started = time.monotonic()
    for item in jg.follow_logs(accepted.id):
        arrived.append((time.monotonic() - started, item))
    *chunks, (_, end) = arrived
    assert end == LogEnd(status=Status.failed, exit_code=4)
    text = {s: "".join(c.data for _, c in chunks if isinstance(c, LogChunk) and c.stream == s)
            for s in ("stdout", "stderr")}
    assert text == {"stdout": "out 1\nout 2\nout 3\n", "stderr": "err 1\nerr 2\nerr 3\n"}
    assert chunks[0][0] < chunks[-1][0] - 0.3  # live: the first came well before the last
    # Followed again after the end: all of it from the start, then the end.
    again = list(jg.follow_logs(accepted.id))
    assert again[-1] == end and "".join(
        c.data for c in again if isinstance(c, LogChunk) and c.stream == "stdout"
    ) == jg.logs(accepted.id).stdout


# -- the async client --------------------------------------------------------------------


async def test_async_client_invokes_lists_and_downloads(gateway: GatewayProcess,
                                                        tmp_path: Path) -> None:
    async with AsyncClient(gateway.url, KEY_A, poll_s=0.3) as jg:
        done = await jg.invoke("bash", "mkdir -p artifacts; echo -n z > artifacts/z.txt; "
                               "echo async")
        assert done.status is Status.succeeded and done.stdout == "async\n"
        followed = await jg.invoke("bash", "sleep 1; echo later", wait_s=0.2)
        assert followed.stdout == "later\n"
        accepted = await jg.submit(PY, "print('submitted')")
        assert (await jg.wait(accepted.id, 30)).stdout == "submitted\n"
        assert (await jg.logs(accepted.id)).stdout == "submitted\n"
        newest = [item.id async for item in jg.list(limit=3, page_size=1)]
        assert newest[:2] == [accepted.id, followed.id]
        paths = await jg.download_artifacts(done.id, tmp_path)
        assert [p.read_text() for p in paths] == ["z"]
        with pytest.raises(NotFound):
            await jg.get("inv_0000000000aaaaaaaaaa")
        with pytest.raises(InvalidInput):
            await jg.submit("bash", "true", env={"JOBGATE_X": "reserved"})
