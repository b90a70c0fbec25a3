"""The call shapes the load tests send, and what a correct answer to each looks like.

Shared by the locustfile, the sequential latency script and the benchmark. Plain Python
(no locust, no gevent), so it can be imported anywhere. A check returns ``None`` when the
answer is right and a short reason when it is not: a wrong result is a failure exactly
like an HTTP error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PYTHON = "python3.11"
ARTIFACT_NAME = "blob.bin"
ARTIFACT_BYTES = 1024 * 1024
# 32-byte digest repeated: 1 MiB of content the client can predict without sending it.
_ARTIFACT_REPEAT = ARTIFACT_BYTES // 32
CPU_WORK_S = 0.1

Json = dict[str, Any]
Check = Callable[[int, Json], str | None]


@dataclass(frozen=True)
class Call:
    """One request body and the check of its answer."""

    name: str  # the request name in locust's statistics
    body: Json
    check: Check


def nonce() -> str:
    """A per-call token the code echoes back: proves each answer belongs to its call."""
    return os.urandom(8).hex()


def _succeeded(status: int, body: Json, expected_status: int = 200) -> str | None:
    if status != expected_status:
        error = body.get("error") if isinstance(body, dict) else None
        return f"HTTP {status}: {error or str(body)[:200]}"
    if body.get("status") != "succeeded":
        return (f"invocation {body.get('id')} ended {body.get('status')}/"
                f"{body.get('reason')}: {body.get('message')}")
    if body.get("exit_code") != 0:
        return f"exit code {body.get('exit_code')}"
    return None


def stdout_is(expected: str) -> Check:
    def check(status: int, body: Json) -> str | None:
        problem = _succeeded(status, body)
        if problem is None and body.get("stdout") != expected:
            problem = f"stdout {body.get('stdout')!r}, expected {expected!r}"
        return problem
    return check


def print_one() -> Call:
    """The reference call of every latency figure: ``print(1)``, nothing else."""
    return Call("sync print(1)", {"profile": PYTHON, "code": "print(1)"}, stdout_is("1\n"))


def cpu_100ms() -> Call:
    """About 100 ms of CPU time (measured by the code itself with process_time, so a busy
    machine stretches the wall time but not the work), then a result with the nonce."""
    token = nonce()
    code = (
        "import json, time\n"
        "start = time.process_time()\n"
        "n = 0\n"
        f"while time.process_time() - start < {CPU_WORK_S}:\n"
        "    n += sum(i * i for i in range(200))\n"
        "cpu_ms = (time.process_time() - start) * 1000\n"
        f"json.dump({{'nonce': {token!r}, 'cpu_ms': cpu_ms}}, open('result.json', 'w'))\n"
    )

    def check(status: int, body: Json) -> str | None:
        problem = _succeeded(status, body)
        if problem is not None:
            return problem
        result = body.get("result")
        if not isinstance(result, dict) or result.get("nonce") != token:
            return f"result {result!r} is not this call's"
        if float(result.get("cpu_ms", 0)) < CPU_WORK_S * 1000:
            return f"only {result.get('cpu_ms')} ms of CPU work"
        return None

    return Call("sync cpu 100ms", {"profile": PYTHON, "code": code}, check)


def artifact_content(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest() * _ARTIFACT_REPEAT


def artifact_1mb() -> tuple[Call, str, str]:
    """Writes a 1 MiB artifact derived from the nonce. Returns the call, the artifact's
    expected sha256, and the nonce (the download is checked against the same digest)."""
    token = nonce()
    code = (
        "import hashlib\n"
        f"seed = hashlib.sha256({token!r}.encode()).digest()\n"
        f"with open('artifacts/{ARTIFACT_NAME}', 'wb') as f:\n"
        f"    f.write(seed * {_ARTIFACT_REPEAT})\n"
    )
    expected = hashlib.sha256(artifact_content(token)).hexdigest()

    def check(status: int, body: Json) -> str | None:
        problem = _succeeded(status, body)
        if problem is not None:
            return problem
        arts = body.get("artifacts") or []
        if len(arts) != 1 or arts[0].get("name") != ARTIFACT_NAME:
            return f"artifacts {[a.get('name') for a in arts]}, expected [{ARTIFACT_NAME!r}]"
        if arts[0].get("size") != ARTIFACT_BYTES or arts[0].get("sha256") != expected:
            return f"artifact size {arts[0].get('size')} sha256 {arts[0].get('sha256')}"
        return None

    return Call("sync 1MB artifact", {"profile": PYTHON, "code": code}, check), expected, token


def async_with_callback(url: str, secret: str) -> tuple[Call, str]:
    """An async call whose result is POSTed to ``url``; the check covers the 202 only, the
    delivery is checked by the receiver (signature) and by the caller (content)."""
    token = nonce()
    body = {"profile": PYTHON, "code": f"print({token!r})", "mode": "async",
            "callback": {"url": url, "secret": secret}}

    def check(status: int, answer: Json) -> str | None:
        if status != 202:
            return f"HTTP {status}: {str(answer)[:200]}"
        if answer.get("status") not in ("queued", "running") or not answer.get("id"):
            return f"unexpected 202 body {str(answer)[:200]}"
        return None

    return Call("async submit", body, check), f"{token}\n"


def delivered_check(expected_stdout: str) -> Callable[[Json], str | None]:
    """The receiver's account of one delivery (see loadtests.receiver)."""
    def check(seen: Json) -> str | None:
        if not seen.get("received"):
            return "no callback delivered in time"
        if not seen.get("signature_ok"):
            return "callback signature did not verify"
        if seen.get("event") != "invocation.completed":
            return f"callback event {seen.get('event')!r}"
        if seen.get("status") != "succeeded" or seen.get("stdout") != expected_stdout:
            return f"callback body {seen.get('status')} {seen.get('stdout')!r}"
        return None
    return check


# -- a mix of profiles ------------------------------------------------------------------


def _python_input() -> Call:
    token = nonce()
    code = ("import json\n"
            "data = json.load(open('input.json'))\n"
            "json.dump({'sum': sum(data['numbers']), 'nonce': data['nonce']},"
            " open('result.json', 'w'))\n")

    def check(status: int, body: Json) -> str | None:
        problem = _succeeded(status, body)
        if problem is None and body.get("result") != {"sum": 6, "nonce": token}:
            problem = f"result {body.get('result')!r}"
        return problem

    return Call("mix python3.11 input", {"profile": PYTHON, "code": code,
                                         "input": {"numbers": [1, 2, 3], "nonce": token}},
                check)


def _bash() -> Call:
    token = nonce()
    return Call("mix bash", {"profile": "bash", "code": f"echo $((6 * 7)) {token}"},
                stdout_is(f"42 {token}\n"))


def _node() -> Call:
    token = nonce()
    return Call("mix node20", {"profile": "node20",
                               "code": f"console.log(6 * 7, {token!r})"},
                stdout_is(f"42 {token}\n"))


# Profile -> (weight, call factory). Python dominates, as it does in real use.
MIX: dict[str, tuple[int, Callable[[], Call]]] = {
    PYTHON: (6, _python_input),
    "bash": (3, _bash),
    "node20": (1, _node),
}


def mix_profiles(available: list[str]) -> dict[str, tuple[int, Callable[[], Call]]]:
    """The part of the mix this gateway serves (node20 only where node is installed)."""
    return {name: spec for name, spec in MIX.items() if name in available}
