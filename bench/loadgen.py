"""One scenario = one headless locust run (a subprocess, so gevent's monkey patching stays
out of the driver), plus what the driver watches while it runs: CPU time of the gateway,
of locust and of the whole machine, and the warm pool's state."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.cpu import machine_cpu_s, proc_cpu_s
from bench.services import API_KEY, Gateway
from loadtests.receiver import CallbackCounter

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
CALLBACK_SECRET = "jobgate-bench-callback-secret-0001"


@dataclass(frozen=True)
class Scenario:
    name: str  # unique in a run, e.g. "print-16u"
    title: str  # what a reader sees
    user_class: str  # a class of loadtests/locustfile.py
    users: int
    duration_s: float
    primary: str  # the request name whose latency is its figure ("prefix *": several)
    gateway: str = "pooled"  # "pooled" | "nopool"
    user_rps: float | None = None  # SteadyUser only
    rate_of_max: float | None = None  # SteadyUser: total rate as a share of max_rps_local
    total_rps: float | None = None  # SteadyUser: a fixed total rate instead
    warmup_s: float = 1.0  # samples that start earlier are not in the percentiles
    watch_pool: bool = False  # sample /v1/pools during the run
    sweep: bool = False  # part of the throughput-against-concurrency sweep


@dataclass
class RunResult:
    scenario: Scenario
    samples: list[dict[str, Any]]
    started: float
    ended: float
    exit_code: int | None
    log_path: Path
    cpu: dict[str, float] = field(default_factory=dict)
    pools_before: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools_after: dict[str, dict[str, Any]] = field(default_factory=dict)
    pool_samples: list[dict[str, Any]] = field(default_factory=list)
    callbacks: dict[str, int] | None = None
    user_rps: float | None = None


class PoolWatcher:
    """Samples ``/v1/pools`` for one profile at a fixed interval in a thread."""

    def __init__(self, gateway: Gateway, profile: str, interval_s: float = 0.1) -> None:
        self.gateway = gateway
        self.profile = profile
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pool-watch")

    def _run(self) -> None:
        with self.gateway.client(timeout=5) as c:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    items = c.get("/v1/pools").json()["items"]
                    for p in items:
                        if p["profile"] == self.profile:
                            self.samples.append({"t": time.time(), **p})
                self._stop.wait(self.interval_s)

    def __enter__(self) -> PoolWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def py_spy() -> str | None:
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def _start_profiler(pid: int, seconds: float, path: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the gateway, samples only while it holds the GIL (what it spends CPU on,
    not where it waits), as collapsed stacks: flamegraph.pl and speedscope read them."""
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", f"{seconds:.0f}",
                             "--rate", "200", "--gil", "--nonblocking", "--format", "raw",
                             "--output", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _reap_with_cpu(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> float:
    """Waits for ``proc`` (bounded) and returns the CPU seconds it used, so they can be
    kept apart from the load generator's."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        time.sleep(0.05)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return float(usage.ru_utime + usage.ru_stime)


def run_scenario(scenario: Scenario, gateway: Gateway, out_dir: Path,
                 receiver: CallbackCounter | None, *, processes: int = 1,
                 user_rps: float | None = None, profile: bool = False) -> RunResult:
    samples_path = out_dir / f"samples-{scenario.name}.json"
    log_path = out_dir / f"locust-{scenario.name}.log"
    for stale in glob.glob(f"{samples_path}*"):
        os.unlink(stale)
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", gateway.url, "-u", str(scenario.users),
            # All users at once (locust caps a sane spawn rate at 100/s per process).
            "-r", str(min(scenario.users, 100)),
            "-t", f"{scenario.duration_s:g}s", "--stop-timeout", "30",
            "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
            "--jobgate-key", API_KEY, "--jobgate-samples", str(samples_path),
            "--jobgate-callback-secret", CALLBACK_SECRET]
    if receiver is not None:
        argv += ["--jobgate-callback-url", receiver.base_url]
    if user_rps is not None:
        argv += ["--jobgate-user-rps", f"{user_rps:.4f}"]
    if processes > 1:
        argv += ["--processes", str(processes)]
    argv.append(scenario.user_class)

    pools_before = gateway.pools()
    callbacks_before = receiver.stats() if receiver else None
    gw_cpu0, machine0 = proc_cpu_s(gateway.pid), machine_cpu_s()
    tree0 = gateway.cpu_group.usage_s() if gateway.cpu_group else None
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    watcher = PoolWatcher(gateway, "python3.11") if scenario.watch_pool else None
    started = time.time()
    # Bounded: the run time, locust's own stop timeout, and its start-up.
    deadline = scenario.duration_s + 30 + 60
    with log_path.open("wb") as log, watcher or contextlib.nullcontext():
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        profiler = _start_profiler(gateway.pid, max(1.0, scenario.duration_s - 1),
                                   out_dir / f"profile-{scenario.name}.txt") \
            if profile else None
        try:
            exit_code: int | None = proc.wait(deadline)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            exit_code = None
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): locust and py-spy must not outlive the run.
            for child in (proc, profiler):
                if child is not None and child.poll() is None:
                    child.kill()
                    child.wait(10)
            raise
        profiler_cpu = _reap_with_cpu(profiler) if profiler is not None else 0.0
    ended = time.time()
    wall = max(ended - started, 1e-6)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    gateway_cpu = proc_cpu_s(gateway.pid) - gw_cpu0
    locust_cpu = (children1.ru_utime + children1.ru_stime
                  - children0.ru_utime - children0.ru_stime) - profiler_cpu
    driver_cpu = self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime
    machine_cpu = machine_cpu_s() - machine0
    cpu = {"wall_s": round(wall, 2), "machine_cores": round(machine_cpu / wall, 2),
           "gateway_cores": round(gateway_cpu / wall, 2),
           "locust_cores": round(locust_cpu / wall, 2),
           "driver_cores": round(driver_cpu / wall, 2),
           "rest_cores": round((machine_cpu - gateway_cpu - locust_cpu - driver_cpu) / wall, 2),
           "gateway_cpu_s": round(gateway_cpu, 3)}
    if profile:
        cpu["profiler_cores"] = round(profiler_cpu / wall, 2)
    local = gateway.env.get("JOBGATE_EXECUTOR", "local") == "local"
    if gateway.cpu_group is not None and tree0 is not None and local:
        # The gateway's cgroup: the gateway, its zygotes and every worker, exactly (pods
        # of the Kubernetes executor are the node's processes, not the gateway's).
        workers = gateway.cpu_group.usage_s() - tree0 - gateway_cpu
        cpu["workers_cores"] = round(workers / wall, 2)
        cpu["workers_cpu_s"] = round(workers, 3)
        cpu["other_cores"] = round(cpu["rest_cores"] - workers / wall, 2)

    samples: list[dict[str, Any]] = []
    for path in sorted(glob.glob(f"{samples_path}*")):
        if path.endswith(".tmp"):
            continue
        with contextlib.suppress(OSError, ValueError):
            samples.extend(json.loads(Path(path).read_text())["samples"])
    callbacks = None
    if receiver is not None and callbacks_before is not None:
        after = receiver.stats()
        callbacks = {k: after[k] - callbacks_before.get(k, 0) for k in after}
    return RunResult(scenario, samples, started, ended, exit_code, log_path, cpu,
                     pools_before, gateway.pools(), watcher.samples if watcher else [],
                     callbacks, user_rps)
