"""Live logs over real HTTP: ``GET /v1/invocations/{id}/logs?follow=true`` as server-sent
events while the code runs, against the shared gateway of each configuration (so the
same tests run on the local and on the Kubernetes executor), plus the gateway stopping
under a follower (a gateway of its own)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import KEY_A, KEY_B, ROOT, GatewayProcess, invoke, running_gateway

PY = "python3.11"
# Prints, waits, prints: the first line is out a second before the code ends.
ONE_SLEEP_TWO = ("import sys, time\n"
                 "print('one', flush=True)\n"
                 "print('err one', file=sys.stderr, flush=True)\n"
                 "time.sleep(1)\n"
                 "print('two', flush=True)\n"
                 "print('err two', file=sys.stderr, flush=True)\n")


@dataclass
class Event:
    at: float  # monotonic, when it arrived
    event: str
    id: str | None
    data: dict[str, Any]


@dataclass
class Followed:
    events: list[Event]
    pings: int

    @property
    def output(self) -> list[Event]:
        return [e for e in self.events if e.event == "output"]

    @property
    def end(self) -> Event | None:
        return next((e for e in self.events if e.event == "end"), None)

    def text(self, stream: str) -> str:
        return "".join(e.data["data"] for e in self.output if e.data["stream"] == stream)


def read_events(response: httpx.Response, *, stop_after: int | None = None) -> Followed:
    """The stream's events as they arrive (all of them, or the first ``stop_after``
    output events: then the connection is dropped)."""
    events: list[Event] = []
    pings, fields = 0, {}  # type: ignore[var-annotated]
    for line in response.iter_lines():
        if line.startswith(":"):
            pings += 1
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif fields:
            events.append(Event(time.monotonic(), fields.get("event", "message"),
                                fields.get("id"), json.loads(fields["data"])))
            fields = {}
            if stop_after is not None and len([e for e in events
                                               if e.event == "output"]) >= stop_after:
                break
    return Followed(events, pings)


def follow(client: httpx.Client, invocation_id: str, *, stop_after: int | None = None,
           headers: dict[str, str] | None = None, **params: str) -> Followed:
    with client.stream("GET", f"/v1/invocations/{invocation_id}/logs",
                       params={"follow": "true", **params}, headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return read_events(r, stop_after=stop_after)


def start(client: httpx.Client, code: str, **body: Any) -> str:
    r = invoke(client, profile=PY, code=code, mode="async", **body)
    assert r.status_code == 202, r.text
    invocation_id: str = r.json()["id"]
    return invocation_id


def stored(client: httpx.Client, invocation_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/invocations/{invocation_id}/logs")
    assert r.status_code == 200, r.text
    logs: dict[str, Any] = r.json()
    return logs


def check_offsets(followed: Followed, start_at: tuple[int, int] = (0, 0)) -> None:
    """Each event starts where the one before it in its stream ended, and its id is both
    streams' byte offsets after it."""
    at = dict(zip(("stdout", "stderr"), start_at, strict=True))
    for e in followed.output:
        stream = e.data["stream"]
        assert e.data["offset"] == at[stream], (e, at)
        at[stream] += len(e.data["data"].encode())
        assert e.id == f"{at['stdout']}.{at['stderr']}"


def test_output_arrives_while_the_code_runs(client: httpx.Client) -> None:
    inv = start(client, ONE_SLEEP_TWO)
    followed = follow(client, inv)
    end = followed.end
    assert end is not None and followed.events[-1] is end
    assert end.data == {"status": "succeeded", "exit_code": 0, "stdout_truncated": False,
                        "stderr_truncated": False}
    first = followed.output[0]
    assert end.at - first.at >= 0.5, "the first line came with the end, not while it ran"
    # What came live is the stored logs, exactly, stdout and stderr alike.
    logs = stored(client, inv)
    assert followed.text("stdout") == logs["stdout"] == "one\ntwo\n"
    assert followed.text("stderr") == logs["stderr"] == "err one\nerr two\n"
    check_offsets(followed)


def test_resuming_after_a_dropped_connection_gets_exactly_the_rest(
        client: httpx.Client) -> None:
    code = ("import sys, time\n"
            "for i in range(4):\n"
            "    print(f'line {i}', flush=True)\n"
            "    print(f'err {i}', file=sys.stderr, flush=True)\n"
            "    time.sleep(0.4)\n")
    inv = start(client, code)
    first = follow(client, inv, stop_after=1)  # then the connection drops
    assert first.end is None and len(first.output) == 1
    last_id = first.output[0].id
    assert last_id is not None
    rest = follow(client, inv, headers={"Last-Event-ID": last_id})
    assert rest.end is not None and rest.end.data["status"] == "succeeded"
    logs = stored(client, inv)
    for stream in ("stdout", "stderr"):
        assert first.text(stream) + rest.text(stream) == logs[stream], stream
    o, e = (int(x) for x in last_id.split("."))
    check_offsets(rest, (o, e))
    # The query's offsets say the same; Last-Event-ID wins over them.
    by_query = follow(client, inv, stdout_offset=str(o), stderr_offset=str(e))
    assert by_query.text("stdout") == rest.text("stdout")
    assert by_query.text("stderr") == rest.text("stderr")
    winner = follow(client, inv, headers={"Last-Event-ID": last_id}, stdout_offset="0")
    assert winner.text("stdout") == rest.text("stdout")


def test_a_finished_invocation_replays_its_logs_then_ends(client: httpx.Client) -> None:
    r = invoke(client, profile=PY,
               code="import sys\nprint('out')\nprint('bad', file=sys.stderr)\nsys.exit(3)")
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text
    inv = r.json()["id"]
    followed = follow(client, inv)
    assert followed.text("stdout") == "out\n" and followed.text("stderr") == "bad\n"
    assert followed.end is not None
    assert followed.end.data == {"status": "failed", "exit_code": 3,
                                 "stdout_truncated": False, "stderr_truncated": False}
    check_offsets(followed)
    # One stream only; and from an offset, only what lies past it.
    only_err = follow(client, inv, stream="stderr")
    assert {e.data["stream"] for e in only_err.output} == {"stderr"}
    assert only_err.text("stderr") == "bad\n" and only_err.end is not None
    tail = follow(client, inv, stdout_offset="2", stderr_offset="4")
    assert (tail.text("stdout"), tail.text("stderr")) == ("t\n", "")
    assert tail.output[0].id == "4.4"
    # Without follow, the JSON answer is what it was.
    assert stored(client, inv)["stdout"] == "out\n"


def test_output_past_the_cap_is_cut_as_the_stored_logs_are(client: httpx.Client) -> None:
    """Over a MiB in pieces while followed (past the default cap of any configuration's
    gateway); the follower gets what the stored logs keep, not a byte more."""
    code = ("import sys, time\n"
            "for i in range(12):\n"
            "    sys.stdout.write(str(i % 10) * 100_000)\n"
            "    sys.stdout.flush()\n"
            "    time.sleep(0.05)\n")
    inv = start(client, code)
    followed = follow(client, inv)
    logs = stored(client, inv)
    assert logs["stdout_truncated"] is True
    assert followed.end is not None and followed.end.data["stdout_truncated"] is True
    assert followed.text("stdout") == logs["stdout"]
    assert len(logs["stdout"]) < 1_200_000
    check_offsets(followed)


def test_multibyte_characters_are_never_split(client: httpx.Client) -> None:
    """The code writes each character a byte at a time, slowly enough that the runner
    streams the pieces apart; every event still holds whole characters only."""
    text = "aé€😀z"
    code = ("import sys, time\n"
            f"for b in {text.encode()!r}:\n"
            "    sys.stdout.buffer.write(bytes([b]))\n"
            "    sys.stdout.buffer.flush()\n"
            "    time.sleep(0.15)\n")
    inv = start(client, code)
    followed = follow(client, inv)
    assert followed.end is not None and followed.end.data["status"] == "succeeded"
    assert followed.text("stdout") == text == stored(client, inv)["stdout"]
    assert len(followed.output) > 1, "the output came in one piece: nothing was tested"
    for e in followed.output:
        assert "\ufffd" not in e.data["data"]
    check_offsets(followed)
    # An offset inside a character moves on to the next whole one.
    inside_euro = len("aé".encode()) + 1
    tail = follow(client, inv, stdout_offset=str(inside_euro))
    assert tail.text("stdout") == "😀z"


def test_another_tenants_invocation_is_not_found(gateway: GatewayProcess,
                                                 client: httpx.Client) -> None:
    inv = invoke(client, profile=PY, code="print(1)").json()["id"]
    with gateway.client(KEY_B) as other:
        r = other.get(f"/v1/invocations/{inv}/logs", params={"follow": "true"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "InvocationNotFound"


def test_bad_follow_parameters_are_refused(client: httpx.Client) -> None:
    inv = invoke(client, profile=PY, code="print(1)").json()["id"]
    for params, headers in (({"follow": "yes"}, {}),
                            ({"follow": "true", "stdout_offset": "-1"}, {}),
                            ({"follow": "true", "stream": "both"}, {}),
                            ({"follow": "true"}, {"Last-Event-ID": "12"})):
        r = client.get(f"/v1/invocations/{inv}/logs", params=params, headers=headers)
        assert r.status_code == 422, (params, headers, r.text)
        assert r.json()["error"]["code"] == "InvalidInput"


def test_followers_are_limited_and_their_slots_come_back(client: httpx.Client) -> None:
    inv = start(client, "import time\ntime.sleep(30)")
    try:
        # A HEAD answers the stream's head at once, and holds no slot.
        head = client.head(f"/v1/invocations/{inv}/logs", params={"follow": "true"})
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        with contextlib.ExitStack() as streams:
            opened, refused = 0, None
            for _ in range(64):  # the per-invocation limit is far below this
                r = streams.enter_context(client.stream(
                    "GET", f"/v1/invocations/{inv}/logs", params={"follow": "true"}))
                if r.status_code != 200:
                    refused = r
                    break
                opened += 1
            assert refused is not None and opened >= 1
            assert refused.status_code == 429
            refused.read()
            assert refused.json()["error"]["code"] == "TooManyFollowers"
            assert int(refused.headers["Retry-After"]) >= 1
        # Every follower hung up: their slots are free again.
        deadline = time.monotonic() + 10
        while True:
            with client.stream("GET", f"/v1/invocations/{inv}/logs",
                               params={"follow": "true"}) as r:
                if r.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the slots of gone followers stayed taken"
            time.sleep(0.2)
    finally:
        client.post(f"/v1/invocations/{inv}/cancel")


def _doc_example() -> list[str]:
    """The curl commands of docs/api.md's live logs example, as printed."""
    text = (ROOT / "docs" / "api.md").read_text()
    after = text.split("<!-- follow-example -->", 1)[1]
    return re.findall(r"```sh\n(.*?)```", after, re.S)[:2]


def test_the_curl_example_of_the_docs_runs_as_printed(gateway: GatewayProcess) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    follow_cmd, resume_cmd = _doc_example()
    env = {"PATH": "/usr/bin:/bin", "JOBGATE_URL": gateway.url, "JOBGATE_KEY": KEY_A}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", follow_cmd + "\necho \"$ID\" >&2"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'data: {"stream":"stdout","offset":0,"data":"one\\n"}' in out.stdout
    assert "id: 4.0" in out.stdout and "event: end" in out.stdout
    assert '"status":"succeeded"' in out.stdout
    env["ID"] = out.stderr.strip().splitlines()[-1]
    rest = subprocess.run(["bash", "-euo", "pipefail", "-c", resume_cmd], env=env,
                          capture_output=True, text=True, timeout=60)
    assert rest.returncode == 0, rest.stderr
    assert '"offset":4,"data":"two\\n"' in rest.stdout and '"data":"one' not in rest.stdout


# -- a gateway of its own ------------------------------------------------------------------


@pytest.fixture
def stopping_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path, JOBGATE_SHUTDOWN_GRACE_S="1") as gw:
        yield gw


@pytest.mark.local_only
def test_a_stopping_gateway_ends_its_followers_streams(
        stopping_gateway: GatewayProcess) -> None:
    """SIGTERM: the stream closes (without an end: the follower reconnects elsewhere with
    its Last-Event-ID) within the shutdown grace, and the gateway exits cleanly."""
    gw = stopping_gateway
    with gw.client(KEY_A) as c:
        inv = start(c, "import time\nprint('started', flush=True)\ntime.sleep(60)")
        with c.stream("GET", f"/v1/invocations/{inv}/logs", params={"follow": "true"}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            stopped_at = time.monotonic()
            assert gw.proc is not None
            gw.proc.terminate()
            rest = list(lines)
        assert time.monotonic() - stopped_at < 10
        assert not any(line.startswith("event: end") for line in rest)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the status is -15.
    assert gw.proc.wait(30) in (0, -15)
    assert "Application shutdown complete" in gw.log()
    assert "Traceback" not in gw.log() and " ERROR " not in gw.log(), gw.log()[-3000:]
