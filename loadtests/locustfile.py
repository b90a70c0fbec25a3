"""Load tests for a running jobgate gateway (locust 2.x).

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8080 \\
        --jobgate-key jg_... -u 16 -r 16 -t 30s PrintUser

User classes (pick one or more by name; each one is a closed loop without think time):

* ``PrintUser``      sync ``print(1)``: the reference call of every latency figure
* ``CpuUser``        sync, about 100 ms of CPU time in the code
* ``CallbackUser``   async with a signed callback, end to end: submit, then wait for the
                     receiver to have the delivery (signature checked); a receiver is
                     started in this process unless ``--jobgate-callback-url`` names one
* ``ArtifactUser``   sync, the code writes a 1 MiB artifact; then it is downloaded and its
                     sha256 checked
* ``MixUser``        a weighted mix of profiles (python3.11 with input, bash, node20 when
                     the gateway has it)
* ``SteadyUser``     ``print(1)`` at a fixed rate per user (``--jobgate-user-rps``), users
                     evenly staggered: a steady load for the pool-drain check

Every answer is checked (status, stdout, result, artifact digest, callback signature): a
wrong result counts as a failure, not only an HTTP error. With ``--jobgate-samples PATH``
each request's exact latency and the server's ``timings`` are written there as JSON when
locust exits (the benchmark reads them; locust's own percentiles are rounded to whole ms).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

if __package__ in (None, ""):
    # Started as a file (`locust -f loadtests/locustfile.py`): make the repository's
    # packages importable, as they are under `python -m locust` from its root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import scenarios
from loadtests.receiver import CallbackCounter

DEFAULT_CALLBACK_SECRET = "jobgate-loadtest-callback-secret"
CALLBACK_WAIT_S = 10.0  # loopback delivery takes milliseconds; a lost one fails fast


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument("--jobgate-key", default=os.environ.get("JOBGATE_API_KEY", ""),
                        help="API key (Bearer); default $JOBGATE_API_KEY")
    parser.add_argument("--jobgate-samples", default="",
                        help="write every request's latency and timings here as JSON")
    parser.add_argument("--jobgate-callback-url", default="",
                        help="base URL of a running loadtests.receiver (default: start one)")
    parser.add_argument("--jobgate-callback-secret", default=DEFAULT_CALLBACK_SECRET,
                        help="signing secret sent with each async call")
    parser.add_argument("--jobgate-user-rps", type=float, default=2.0,
                        help="SteadyUser: calls per second per user")


# -- recording --------------------------------------------------------------------------


class Recorder:
    """Every request of this process: start, latency, outcome, and what the server said
    about it. Locust's statistics stay the source for the console summary only."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, name: str, started: float, latency_ms: float, error: str | None,
            answer: dict[str, Any] | None = None) -> None:
        sample: dict[str, Any] = {"name": name, "t": started, "ms": round(latency_ms, 3),
                                  "ok": error is None}
        if error is not None:
            sample["error"] = error[:300]
        if answer:
            sample["warm"] = answer.get("warm")
            timings = answer.get("timings")
            if isinstance(timings, dict):
                sample["timings"] = timings
        with self._lock:
            self.samples.append(sample)

    def write(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "samples": self.samples}, f)
        os.replace(tmp, path)


RECORDER = Recorder()
_receiver: CallbackCounter | None = None


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _start_receiver(environment: Environment, **_: Any) -> None:
    global _receiver
    opts = environment.parsed_options
    if isinstance(environment.runner, MasterRunner) or opts is None:
        return
    if not opts.jobgate_callback_url and _receiver is None \
            and any(u.__name__ == "CallbackUser" for u in environment.user_classes):
        _receiver = CallbackCounter(opts.jobgate_callback_secret).start()
        opts.jobgate_callback_url = _receiver.base_url


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _write_samples(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None or not opts.jobgate_samples or isinstance(environment.runner,
                                                               MasterRunner):
        return
    path = opts.jobgate_samples
    if isinstance(environment.runner, WorkerRunner):
        path = f"{path}.{os.getpid()}"  # one file per locust worker process
    RECORDER.write(path)
    if _receiver is not None:
        _receiver.stop()


# -- users ------------------------------------------------------------------------------


class JobgateUser(FastHttpUser):
    abstract = True
    # Closed loop: the next call leaves as soon as the last one is answered.
    wait_time = constant(0)
    network_timeout = 120.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        key = opts.jobgate_key if opts is not None else os.environ.get("JOBGATE_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def call(self, c: scenarios.Call) -> dict[str, Any] | None:
        """POST one invocation, check the answer; a failure is recorded either way."""
        started = time.time()
        t0 = time.perf_counter()
        with self.client.post("/v1/invocations", json=c.body, headers=self.headers,
                              name=c.name, catch_response=True) as resp:
            latency = (time.perf_counter() - t0) * 1000
            answer: dict[str, Any] = {}
            if resp.status_code:
                with contextlib.suppress(ValueError, TypeError):
                    answer = json.loads(resp.content or b"{}")
            error = (f"connection: {resp.error!r}" if not resp.status_code
                     else c.check(resp.status_code, answer))
            if error is None:
                resp.success()
            else:
                resp.failure(error)
        RECORDER.add(c.name, started, latency, error, answer)
        return answer if error is None else None

    def record(self, name: str, started: float, t0: float, error: str | None) -> None:
        """A measured step that is not one HTTP request (e.g. submit + callback)."""
        latency = (time.perf_counter() - t0) * 1000
        self.environment.events.request.fire(
            request_type="JOBGATE", name=name, response_time=latency, response_length=0,
            exception=None if error is None else AssertionError(error), context={})
        RECORDER.add(name, started, latency, error)


class PrintUser(JobgateUser):
    @task
    def print_one(self) -> None:
        self.call(scenarios.print_one())


class CpuUser(JobgateUser):
    @task
    def cpu(self) -> None:
        self.call(scenarios.cpu_100ms())


class ArtifactUser(JobgateUser):
    @task
    def artifact(self) -> None:
        c, expected, _ = scenarios.artifact_1mb()
        started, t0 = time.time(), time.perf_counter()
        answer = self.call(c)
        if answer is None:
            return
        url = answer["artifacts"][0]["url"]
        error = self._download(url, expected)
        self.record("artifact produce+download", started, t0, error)

    def _download(self, url: str, expected: str) -> str | None:
        # Local storage streams the bytes; S3 storage answers 307 to a presigned URL on
        # the object store, which is fetched as a second request (another host).
        for name in ("artifact download", "artifact download (presigned)"):
            with self.client.get(url, headers=self.headers if name == "artifact download"
                                 else {}, name=name, allow_redirects=False,
                                 catch_response=True) as resp:
                if resp.status_code in (302, 307) and resp.headers.get("location"):
                    resp.success()
                    url = resp.headers["location"]
                    continue
                if resp.status_code != 200:
                    error = f"download HTTP {resp.status_code}"
                elif hashlib.sha256(resp.content or b"").hexdigest() != expected:
                    error = f"downloaded {len(resp.content or b'')} bytes, wrong sha256"
                else:
                    error = None
                if error is None:
                    resp.success()
                else:
                    resp.failure(error)
                return error
        return "too many redirects"


class CallbackUser(JobgateUser):
    @task
    def async_with_callback(self) -> None:
        opts = self.environment.parsed_options
        base = opts.jobgate_callback_url.rstrip("/")
        c, expected_stdout = scenarios.async_with_callback(base + "/hook",
                                                           opts.jobgate_callback_secret)
        started, t0 = time.time(), time.perf_counter()
        answer = self.call(c)
        if answer is None:
            return
        with self.client.get(f"{base}/wait/{answer['id']}?timeout={CALLBACK_WAIT_S:g}",
                             name="callback wait", catch_response=True) as resp:
            seen: dict[str, Any] = {}
            with contextlib.suppress(ValueError, TypeError):
                seen = json.loads(resp.content or b"{}")
            error = (f"receiver HTTP {resp.status_code}" if resp.status_code != 200
                     else scenarios.delivered_check(expected_stdout)(seen))
            if error is None:
                resp.success()
            else:
                resp.failure(error)
        self.record("async+callback", started, t0, error)


class MixUser(JobgateUser):
    def on_start(self) -> None:
        super().on_start()
        resp = self.client.get("/v1/profiles", headers=self.headers, name="profiles")
        available = [p["name"] for p in resp.json().get("items", [])] \
            if resp.status_code == 200 else [scenarios.PYTHON]
        mix = scenarios.mix_profiles(available)
        self.factories = [factory for _, (weight, factory) in mix.items()
                          for _ in range(weight)]

    @task
    def one_of_the_mix(self) -> None:
        self.call(random.choice(self.factories)())


_steady_index = itertools.count()


class SteadyUser(JobgateUser):
    """``print(1)`` every 1/rate seconds per user. Users start staggered by 1/(total
    rate), so arrivals are evenly spread instead of arriving in bursts of one per user."""

    rate: float = 2.0
    next_at: float = 0.0

    def wait_time(self) -> float:
        now = time.monotonic()
        # On schedule, or from now when late: a late call is not made up by a burst.
        self.next_at = max(self.next_at + 1.0 / self.rate, now)
        return self.next_at - now

    def on_start(self) -> None:
        super().on_start()
        opts = self.environment.parsed_options
        self.rate = float(opts.jobgate_user_rps) if opts is not None else 2.0
        users = max(1, self.environment.runner.target_user_count
                    if self.environment.runner else 1)
        offset = next(_steady_index) % users / (users * self.rate)
        time.sleep(offset)  # gevent-patched: yields to the other users
        self.next_at = time.monotonic()

    @task
    def print_one(self) -> None:
        self.call(scenarios.print_one())


__all__ = ["ArtifactUser", "CallbackUser", "CpuUser", "MixUser", "PrintUser",
           "SteadyUser"]
