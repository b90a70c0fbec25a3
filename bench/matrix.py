"""The fixed matrices: which scenarios, at which concurrencies, for how long.

``smoke`` proves the harness works (a few seconds, inside ``make test``); ``quick`` gives
every figure of the report in under two minutes; ``full`` is the published run.

The Kubernetes executor gets matrices of its own: on the test control plane a worker
start takes about a second, not milliseconds, so its sweep stops at fewer users, and its
steady scenario (API writes per invocation, warm claim to result) runs first, at a fixed
rate the pool is sized for, while the pool is at rest, before the sweep churns it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.loadgen import Scenario

PRINT = "sync print(1)"


@dataclass(frozen=True)
class Matrix:
    name: str
    raw_calls: int
    cold_runner_calls: int
    background_s: float
    scenarios: tuple[Scenario, ...]
    # Alternating sync calls per runtime to a sandboxed and an unsandboxed local gateway
    # (the sandbox's cost, measured side by side; 0: not measured).
    sandbox_calls: int = 0
    # How cost grows with what is stored (bench/growth.py): the list over each number of
    # stored invocations, and the janitor's rate over this many expired ones (0: none).
    growth_sizes: tuple[int, ...] = ()
    growth_janitor: int = 0


def _print(users: int, duration_s: float, *, gateway: str = "pooled", sweep: bool = True,
           warmup_s: float = 1.0) -> Scenario:
    prefix = "nopool-" if gateway == "nopool" else ""
    title = "sync print(1), no pool" if gateway == "nopool" else "sync print(1)"
    return Scenario(f"{prefix}print-{users}u", title, "PrintUser", users, duration_s, PRINT,
                    gateway=gateway, sweep=sweep and gateway == "pooled", warmup_s=warmup_s)


def _cpu(users: int, duration_s: float) -> Scenario:
    return Scenario(f"cpu-{users}u", "sync 100 ms CPU", "CpuUser", users, duration_s,
                    "sync cpu 100ms")


def _callback(users: int, duration_s: float, warmup_s: float = 1.0) -> Scenario:
    return Scenario(f"callback-{users}u", "async + signed callback", "CallbackUser", users,
                    duration_s, "async+callback", warmup_s=warmup_s)


def _artifact(users: int, duration_s: float) -> Scenario:
    return Scenario(f"artifact-{users}u", "1 MiB artifact + download", "ArtifactUser", users,
                    duration_s, "artifact produce+download")


def _mix(users: int, duration_s: float) -> Scenario:
    return Scenario(f"mix-{users}u", "mix of profiles", "MixUser", users, duration_s, "mix *")


def _steady(users: int, duration_s: float, share: float) -> Scenario:
    return Scenario(f"steady-{users}u", f"steady print(1) at {share:.0%} of max", "SteadyUser",
                    users, duration_s, PRINT, rate_of_max=share, warmup_s=2.0,
                    watch_pool=True)


def _steady_at(users: int, duration_s: float, rps: float) -> Scenario:
    return Scenario(f"steady-{users}u", f"steady print(1) at {rps:g}/s", "SteadyUser", users,
                    duration_s, PRINT, total_rps=rps, warmup_s=2.0, watch_pool=True)


SMOKE = Matrix("smoke", raw_calls=5, cold_runner_calls=3, background_s=0.5, sandbox_calls=5,
               growth_sizes=(300,), growth_janitor=300, scenarios=(
    _print(1, 3, warmup_s=0.5),
    _callback(1, 3, warmup_s=0.5),
))

QUICK = Matrix("quick", raw_calls=30, cold_runner_calls=10, background_s=1.0,
               sandbox_calls=60, growth_sizes=(1000,), growth_janitor=1000, scenarios=(
    _print(1, 6),
    _print(4, 4),
    _print(16, 4),
    _print(32, 4),
    _cpu(2, 4),
    _callback(4, 4),
    _artifact(2, 4),
    _mix(4, 4),
    _steady(8, 6, 0.5),
    _print(1, 4, gateway="nopool"),
))

FULL = Matrix("full", raw_calls=200, cold_runner_calls=100, background_s=3.0,
              sandbox_calls=300, growth_sizes=(1000, 10_000, 100_000), growth_janitor=10_000,
              scenarios=(
    _print(1, 30),
    _print(4, 20),
    _print(16, 20),
    _print(32, 20),
    _print(64, 20),
    _cpu(1, 15),
    _cpu(2, 15),
    _cpu(4, 15),
    _callback(1, 15),
    _callback(16, 20),
    _artifact(1, 15),
    _artifact(8, 20),
    _mix(16, 20),
    _steady(16, 60, 0.5),
    _print(1, 20, gateway="nopool"),
    _print(16, 20, gateway="nopool"),
))

K8S_QUICK = Matrix("quick", raw_calls=30, cold_runner_calls=10, background_s=1.0,
                   growth_sizes=(1000,), growth_janitor=1000, scenarios=(
    _steady_at(4, 12, 2.0),
    _print(1, 8),
    _print(4, 6),
    _callback(2, 5),
    _print(1, 10, gateway="nopool"),
))

K8S_FULL = Matrix("full", raw_calls=200, cold_runner_calls=100, background_s=3.0,
                  growth_sizes=(1000, 10_000, 100_000), growth_janitor=10_000, scenarios=(
    _steady_at(4, 60, 2.0),
    _print(1, 30),
    _print(2, 20),
    _print(4, 20),
    _print(8, 20),
    _cpu(2, 15),
    _callback(4, 20),
    _artifact(2, 20),
    _mix(4, 20),
    _print(1, 30, gateway="nopool"),
))

MATRICES = {m.name: m for m in (SMOKE, QUICK, FULL)}
K8S_MATRICES = {"smoke": SMOKE, "quick": K8S_QUICK, "full": K8S_FULL}


def matrix(name: str, executor: str) -> Matrix:
    return (K8S_MATRICES if executor == "kubernetes" else MATRICES)[name]
