"""What a benchmark run starts: the gateway (a real ``jobgate serve`` subprocess, through
the test suite's ``GatewayProcess``), SeaweedFS for ``--storage s3``, and the profile
catalogue that sizes the pools. The Kubernetes control plane is in ``bench.cluster``."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from bench.cpu import CpuGroup
from tests.support import KEY_A, GatewayProcess

API_KEY = KEY_A  # tenant-a, configured by GatewayProcess
PYTHON = "python3.11"

# The gateway as tuned for load: every knob that differs from the defaults is here, and
# is copied into the report.
LOAD_SETTINGS = {
    # The default (32) would queue the 64-user step inside the gateway; the machine, not
    # an admission limit, should be what stops throughput.
    "JOBGATE_MAX_CONCURRENCY": "256",
    "JOBGATE_QUEUE_SIZE": "1024",
    "JOBGATE_LOG_LEVEL": "warning",
}
# Pool sizes (min idle, max idle) per profile for the pooled gateway; the catalogue's
# default python3.11 pool (2..8) is sized for a developer's laptop, not for 64 users.
POOLED = {PYTHON: (4, 32), "bash": (2, 8), "node20": (2, 8)}
# On the test control plane every idle worker is a pod (a process on this machine) and a
# start takes seconds: the pool's adaptive target (arrival rate x start latency) would
# otherwise grow to dozens of idle pods on two cores.
POOLED_K8S = {PYTHON: (4, 8), "bash": (1, 2), "node20": (1, 2)}
# The no-pool gateway: every python3.11 call waits for a worker started for it.
NO_POOL = {PYTHON: (0, 0), "bash": (0, 0), "node20": (0, 0)}


def pools_for(executor: str, gateway: str) -> dict[str, tuple[int, int]]:
    if gateway == "nopool":
        return NO_POOL
    return POOLED_K8S if executor == "kubernetes" else POOLED


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def write_profiles(path: Path, pools: dict[str, tuple[int, int]],
                   source: Path | None = None,
                   requests: tuple[float, int] | None = None) -> Path:
    """The default catalogue (or ``source``) with the pools of ``pools`` replaced, and
    with ``requests`` (cpu, memory MiB) as every pod's requests when given."""
    text = source.read_text() if source else \
        resources.files("runtimes").joinpath("profiles.toml").read_text()
    catalogue = tomllib.loads(text)["profiles"]
    lines = [f"# Written by the benchmark from {source or 'runtimes/profiles.toml'}; "
             "only the pool sizes differ."]
    for name, spec in catalogue.items():
        if name in pools:
            low, high = pools[name]
            spec = {**spec, "pool": {**spec.get("pool", {}), "min": low, "max": high}}
        if requests is not None:
            spec = {**spec, "request_cpu": requests[0], "request_memory_mb": requests[1]}
        lines.append(f"\n[profiles.{json.dumps(name)}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in spec.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def pool_sizes(path: Path) -> dict[str, dict[str, int]]:
    catalogue = tomllib.loads(path.read_text())["profiles"]
    return {name: {"min": spec.get("pool", {}).get("min", 1),
                   "max": spec.get("pool", {}).get("max", 4)}
            for name, spec in catalogue.items()}


class GatewayRefused(RuntimeError):
    """The gateway did not start with this configuration (its own words attached)."""


@dataclass
class Gateway:
    name: str
    process: GatewayProcess
    env: dict[str, str]
    cpu_group: CpuGroup | None = None  # holds the gateway and all it forks, when possible

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return self.process.client(API_KEY, timeout=timeout)

    def pools(self) -> dict[str, dict[str, Any]]:
        with self.client(timeout=10) as c:
            return {p["profile"]: p for p in c.get("/v1/pools").json()["items"]}

    def settle(self, profile: str = PYTHON, timeout_s: float = 30.0) -> None:
        """Between scenarios: wait (bounded) until nothing runs, waits or starts and the
        pool is back at its minimum, so one scenario's tail does not count against the
        next (on Kubernetes a start takes seconds)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError):
                p = self.pools()[profile]
                if p["busy"] == 0 and p["queued"] == 0 and p["starting"] == 0 \
                        and p["idle"] >= p["min_idle"]:
                    return
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.stop()
        if self.cpu_group is not None:
            self.cpu_group.close()
        # What the invocations stored (a full run writes ~2 GB, mostly 1 MiB artifacts)
        # is not a result; the gateway's log, beside it, is kept.
        shutil.rmtree(self.process.data_dir, ignore_errors=True)


def start_gateway(name: str, work: Path, env: dict[str, str],
                  timeout_s: float = 60.0, port: int = 0) -> Gateway:
    """``jobgate serve`` on a loopback port (free, unless given), ready (``/readyz``) or
    GatewayRefused."""
    full_env = {**LOAD_SETTINGS, **env}
    process = GatewayProcess(work / f"gateway-{name}" / "data", env=full_env, port=port)
    group = CpuGroup.create(name)
    try:
        with group.joined() if group else contextlib.nullcontext():
            process.start(timeout_s=timeout_s)
    except RuntimeError as e:
        if group is not None:
            group.close()
        raise GatewayRefused(str(e)) from None
    return Gateway(name, process, full_env, group)


def warm_up(gateway: Gateway, calls: int = 20) -> None:
    """A few sequential calls: connections, imports and caches are warm before the first
    measured request."""
    with gateway.client() as c:
        for _ in range(calls):
            with contextlib.suppress(httpx.HTTPError):
                c.post("/v1/invocations", json={"profile": PYTHON, "code": "print(1)"})


def start_seaweedfs(work: Path) -> Any:
    """SeaweedFS (``weed mini``) from the test suite's harness, on 127.0.0.1."""
    from tests.servers.seaweedfs import SeaweedFS

    return SeaweedFS(work / "seaweedfs").start(timeout_s=60)


def stop_seaweedfs(server: Any) -> None:
    """Stops it and drops its data (the objects of the run) and its identity file (the
    run's throwaway keys); weed.log is kept."""
    server.close()
    shutil.rmtree(server.data_dir, ignore_errors=True)
    server.config_path.unlink(missing_ok=True)
