"""The two baselines every gateway figure is compared with, measured on the same machine
with the same interpreter and the same runner code:

* **raw**: ``python3 -c 'print(1)'`` started directly (fork + exec + interpreter start +
  print + exit), timed from the driver around ``subprocess.run``; and the same with
  ``-S`` (no ``site``): the interpreter's own start, without what an installation's
  ``.pth`` files add to every start.
* **cold runner** (the naive gateway path without a pool): for every call a brand-new
  ``runtimes/runner.py serve`` process is started, polled on ``/healthz`` until it
  answers, sent the assignment for ``print(1)`` that the gateway itself would build
  (``gateway.dispatch.plan``) through the gateway's own runner client, and its report
  read. That is the runner protocol with a cold interpreter per call and nothing else:
  no HTTP front, no authentication, no storage, so a naive gateway costs at least this.
  Its runner does not preload modules (``JOBGATE_RUNNER_PRELOAD=0``): preloading only
  pays off in a pool, so the baseline is given its cheapest form.

    python -m loadtests.baselines --calls 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from loadtests.stats import summary

HEALTH_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0


@dataclass
class BaselineResult:
    name: str
    description: str
    samples_ms: list[float] = field(default_factory=list)
    phases_ms: dict[str, list[float]] = field(default_factory=dict)
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, error: str) -> None:
        self.failures += 1
        if len(self.errors) < 10:
            self.errors.append(error)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "requests": len(self.samples_ms) + self.failures, "failures": self.failures,
                **summary(self.samples_ms),
                "phases": {k: summary(v) for k, v in self.phases_ms.items()},
                "errors": self.errors}


def resolve_interpreter(command: str = "python3") -> tuple[str, str]:
    """The interpreter the local executor runs for ``command``: found on PATH the way the
    gateway finds it (skipping its virtualenv), then resolved through wrappers such as
    pyenv shims, which are shell scripts that would add their own start-up to the raw
    figure. Returns (resolved binary, what PATH gave)."""
    from gateway.config.profiles import interpreter_path

    found = interpreter_path(command) or sys.executable
    out = subprocess.run([found, "-c", "import sys; print(sys.executable)"],
                         capture_output=True, text=True, timeout=CALL_TIMEOUT_S, check=True)
    return out.stdout.strip() or found, found


def raw_python(interpreter: str, calls: int, warmup: int = 3,
               flags: tuple[str, ...] = ()) -> BaselineResult:
    """``flags=("-S",)`` is the bare interpreter: no ``site`` import, so none of the
    ``.pth`` files an installation may run at every start (machine clutter, not Python)."""
    shown = " ".join(("python3", *flags))
    result = BaselineResult(f"raw {shown} -c 'print(1)'",
                            f"{' '.join((interpreter, *flags))} -c 'print(1)' started "
                            "directly, per call")
    for i in range(warmup + calls):
        t0 = time.perf_counter()
        try:
            out = subprocess.run([interpreter, *flags, "-c", "print(1)"], capture_output=True,
                                 timeout=CALL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            result.fail("timed out")
            continue
        elapsed = (time.perf_counter() - t0) * 1000
        if out.returncode != 0 or out.stdout != b"1\n":
            result.fail(f"exit {out.returncode}, stdout {out.stdout[:80]!r}")
        elif i >= warmup:
            result.samples_ms.append(elapsed)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_healthy(client: httpx.AsyncClient, url: str,
                        proc: asyncio.subprocess.Process) -> None:
    """Poll every millisecond: a gateway waiting for its worker would poll about as hard,
    and a slower poll would charge the baseline for our sleeping, not for its start."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"runner exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(url, timeout=1.0)).status_code == 200:
                return
        await asyncio.sleep(0.001)
    raise RuntimeError("runner not healthy in time")


async def _cold_runner(interpreter: str, calls: int, warmup: int, root: Path
                       ) -> BaselineResult:
    from gateway.config.profiles import load_profiles
    from gateway.config.settings import Settings
    from gateway.dispatch.plan import make_assignment, make_plan
    from gateway.executors.base import WorkerHandle
    from gateway.executors.runner_client import RunnerClient
    from gateway.models import InvocationCreate

    result = BaselineResult(
        "cold runner per call",
        "a new `runner.py serve` process per call (no pool, no zygote), readiness "
        "polled on /healthz, assignment and report over the runner protocol")
    # Defaults only: the driver's environment must not configure the baseline.
    settings = Settings.model_construct()
    profile = load_profiles(None).get("python3.11")
    request = InvocationCreate(profile=profile.name, code="print(1)")
    plan = make_plan(request, profile, settings)
    runner = str(resources.files("runtimes").joinpath("runner.py"))
    runner_client = RunnerClient()
    phases: dict[str, list[float]] = {"start_to_ready": [], "assignment_to_report": []}
    async with httpx.AsyncClient(trust_env=False) as health:
        for i in range(warmup + calls):
            port, token = _free_port(), os.urandom(16).hex()
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                   "JOBGATE_RUNNER_BIND": f"127.0.0.1:{port}",
                   "JOBGATE_RUNNER_TOKEN": token, "JOBGATE_WORKSPACE_ROOT": str(root),
                   "JOBGATE_RUNNER_PRELOAD": "0"}
            assignment = make_assignment(plan, request, f"inv_baseline{i:06d}", settings)
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                interpreter, "-I", runner, "serve", env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                address = f"http://127.0.0.1:{port}"
                await _wait_healthy(health, address + "/healthz", proc)
                t_ready = time.perf_counter()
                worker = WorkerHandle(id=f"baseline-{i}", profile=profile.name,
                                      address=address, token=token,
                                      ready_at=time.monotonic(), start_latency_s=0.0,
                                      pid=proc.pid)
                report = await runner_client.run(worker, assignment)
                t_done = time.perf_counter()
            except Exception as e:  # noqa: BLE001 - any failure of a call is counted
                result.fail(f"{type(e).__name__}: {e}")
                continue
            finally:
                # The runner exits by itself after its one report; a stuck one is killed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), HEALTH_TIMEOUT_S)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            if report.exit_code != 0 or report.stdout != "1\n":
                result.fail(f"report {report.reason} exit {report.exit_code} "
                            f"stdout {report.stdout[:80]!r}")
            elif i >= warmup:
                result.samples_ms.append((t_done - t0) * 1000)
                phases["start_to_ready"].append((t_ready - t0) * 1000)
                phases["assignment_to_report"].append((t_done - t_ready) * 1000)
    await runner_client.close()
    result.phases_ms = phases
    return result


def cold_runner(interpreter: str, calls: int, warmup: int = 2) -> BaselineResult:
    with tempfile.TemporaryDirectory(prefix="jobgate-baseline-") as root:
        return asyncio.run(_cold_runner(interpreter, calls, warmup, Path(root)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    interpreter, found = resolve_interpreter()
    print(f"interpreter: {interpreter} (PATH gives {found})")
    for result in (raw_python(interpreter, args.calls),
                   raw_python(interpreter, args.calls, flags=("-S",)),
                   cold_runner(interpreter, args.calls)):
        print(json.dumps(result.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def spawn_rate(interpreter: str, seconds: float, parallel: int) -> dict[str, Any]:
    """How many ``python3 -S -c 'print(1)'`` processes the machine starts and finishes per
    second with ``parallel`` spawners at once (one per core): the rate a gateway that
    spawned a bare interpreter per call could not beat. Bounded by ``seconds``."""
    import threading

    from bench.cpu import machine_cpu_s

    done: list[int] = []
    failures: list[int] = []
    stop = time.monotonic() + seconds

    def spawner() -> None:
        while time.monotonic() < stop:
            out = subprocess.run([interpreter, "-S", "-c", "print(1)"], capture_output=True,
                                 timeout=CALL_TIMEOUT_S, check=False)
            (done if out.returncode == 0 and out.stdout == b"1\n" else failures).append(1)

    cpu0, t0 = machine_cpu_s(), time.monotonic()
    threads = [threading.Thread(target=spawner) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.monotonic() - t0, machine_cpu_s() - cpu0
    return {"name": f"{interpreter} -S -c 'print(1)' spawned by {parallel} at once",
            "processes": len(done), "failures": len(failures),
            "rate_per_s": round(len(done) / wall, 1) if wall else None,
            "cpu_ms_per_process": round(cpu / len(done) * 1000, 2) if done else None}
