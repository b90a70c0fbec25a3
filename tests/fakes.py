"""Fakes where the real part is not the point: an executor that runs nothing, and the
gateway app in this process around it (driven through httpx's ASGI transport); a
Kubernetes API in memory (``FakeKubeApi``) and a membership that is told who leads, for
the Kubernetes executor's parts. The real executors have their own end-to-end suites."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway.api.app import create_app
from gateway.api.state import Gateway, gateway_of
from gateway.config.profiles import Profile
from gateway.config.settings import Settings
from gateway.executors.base import Executor, WorkerHandle
from gateway.executors.live_output import LiveOutput
from gateway.kube.base import Conflict, Missing, WatchEvent
from gateway.kube.objects import Obj
from gateway.membership.base import Membership
from gateway.models import Assignment, PoolState, WorkerReport

PROFILES = """
[profiles.fake]
image = "jobgate/runtime-fake:0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
pool = { min = 0, max = 1 }
"""


def report(**fields: Any) -> WorkerReport:
    """A report as a runner sends it: every field of the protocol."""
    values: dict[str, Any] = {"protocol": 1, "reason": None, "exit_code": 0, "signal": None,
                              "workspace_base": None, "timings": {"run_ms": 1.0}}
    values.update(fields)
    return WorkerReport.model_validate(values)


class FakeExecutor(Executor):
    """Workers that are always there and succeed at once; what it was asked is kept."""

    name = "fake"
    identity = "fake-replica"

    def __init__(self) -> None:
        self.runs: list[Assignment] = []
        self.released: list[tuple[WorkerHandle, WorkerReport | None]] = []
        self._ids = itertools.count(1)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def check_room(self, profile: Profile) -> None:
        pass

    async def acquire(self, profile: Profile, invocation_id: str) -> WorkerHandle:
        return WorkerHandle(id=f"fake-{next(self._ids)}", profile=profile.name,
                            address="http://fake.invalid", token="t",
                            ready_at=time.monotonic(), start_latency_s=0.0, warm=True)

    async def run(self, worker: WorkerHandle, assignment: Assignment,
                  output: LiveOutput | None = None) -> WorkerReport:
        self.runs.append(assignment)
        return report()

    async def cancel(self, worker: WorkerHandle) -> None:
        pass

    async def release(self, worker: WorkerHandle, report: WorkerReport | None) -> None:
        self.released.append((worker, report))

    async def end_attempt(self, invocation_id: str) -> bool:
        return True  # a fake worker never outlives its call

    def pools(self) -> list[PoolState]:
        return []

    async def check(self) -> None:
        pass


@dataclass
class InProcessGateway:
    client: httpx.AsyncClient
    gateway: Gateway


@contextlib.asynccontextmanager
async def inprocess_gateway(tmp: Path, executor: Executor) -> AsyncIterator[InProcessGateway]:
    """The real app (routes, dispatch, local storage) in this process, lifespan and all,
    around the given executor. No API keys: the one default tenant."""
    catalogue = tmp / "profiles.toml"
    catalogue.write_text(PROFILES)
    settings = Settings(data_dir=tmp / "data", profiles=catalogue, shutdown_grace_s=1)
    app = create_app(settings, executor=executor)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test",
                                     timeout=30) as client:
            yield InProcessGateway(client, gateway_of(app))


class FakeMembership(Membership):
    """A replica that leads when told to. Which others are gone: those in ``gone``; or,
    given ``live``, every replica not in it; or else none (it cannot tell)."""

    name = "fake"

    def __init__(self, identity: str = "replica-a", *, leads: bool = False,
                 live: set[str] | None = None, gone: frozenset[str] | None = None):
        self.identity = identity
        self.leading = leads
        self.live = {identity} if live is None else live | {identity}
        self._gone = gone if gone is not None else (None if live is not None
                                                     else frozenset())

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    @property
    def leads(self) -> bool:
        return self.leading

    async def live_replicas(self) -> set[str]:
        return set(self.live)

    async def gone(self, replicas: set[str]) -> set[str]:
        if self._gone is None:
            return replicas - self.live
        return replicas & self._gone


def _timestamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(obj: Obj, selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(key) == value for key, value in
               (term.split("=", 1) for term in selector.split(",") if term))


def _merge(target: Obj, patch: Obj) -> None:
    """A JSON merge patch (RFC 7386), in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeKubeApi:
    """The ``KubeApi`` seam in memory, with what jobgate relies on of the real one: every
    write bumps one resourceVersion counter; a patch or replace that carries a stale
    ``metadata.resourceVersion`` fails with Conflict; pods are watched from a
    resourceVersion. A created Job gets its pod at once, ready (``start_pods``) or pending
    (``make_ready`` starts it); a deleted Job's pods go with it. Every call yields to the
    event loop first, as a round trip to the API server would, so callers can race."""

    def __init__(self, namespace: str = "fake", *, start_pods: bool = True):
        self.namespace = namespace
        self.start_pods = start_pods
        self.calls: dict[str, int] = {}
        self.conflicts = 0
        self.pods: dict[str, Obj] = {}
        self.jobs: dict[str, Obj] = {}
        self.leases: dict[str, Obj] = {}
        self.network_policies: dict[str, Obj] = {}
        self.config_maps: dict[str, Obj] = {}
        self._version = 0
        self._events: list[tuple[int, WatchEvent]] = []
        self._changed = asyncio.Event()
        self._ids = itertools.count(1)

    async def _round_trip(self, verb: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1
        await asyncio.sleep(0)

    def _bump(self, obj: Obj) -> Obj:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        return obj

    def _precondition(self, current: Obj, change: Obj) -> None:
        expected = change.get("metadata", {}).get("resourceVersion")
        if expected is not None and expected != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            raise Conflict(f"the object {current['metadata']['name']} has been modified")

    def _pod_event(self, kind: str, pod: Obj) -> None:
        self._events.append((self._version, {"type": kind, "object": copy.deepcopy(pod)}))
        self._changed.set()
        self._changed = asyncio.Event()

    async def close(self) -> None:
        pass

    # -- pods ---------------------------------------------------------------------------

    async def list_pods(self, selector: str) -> Obj:
        await self._round_trip("list pods")
        return {"items": [copy.deepcopy(p) for p in self.pods.values() if _matches(p, selector)],
                "metadata": {"resourceVersion": str(self._version)}}

    async def watch_pods(self, selector: str, resource_version: str,
                         timeout_s: int) -> AsyncIterator[WatchEvent]:
        await self._round_trip("watch pods")
        since = int(resource_version or 0)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            for version, event in list(self._events):
                if version > since:
                    since = version
                    if _matches(event["object"], selector):
                        yield copy.deepcopy(event)
            try:
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
            except TimeoutError:
                return

    async def patch_pod(self, name: str, patch: Obj) -> Obj:
        await self._round_trip("patch pods")
        pod = self.pods.get(name)
        if pod is None:
            raise Missing(f"pods {name!r} not found")
        self._precondition(pod, patch)
        _merge(pod, {k: v for k, v in patch.items() if k != "metadata"})
        _merge(pod["metadata"], {k: v for k, v in patch.get("metadata", {}).items()
                                 if k != "resourceVersion"})
        self._pod_event("MODIFIED", self._bump(pod))
        return copy.deepcopy(pod)

    # -- config maps ----------------------------------------------------------------------

    async def get_config_map(self, name: str) -> Obj:
        await self._round_trip("get configmaps")
        if name not in self.config_maps:
            raise Missing(f"configmaps {name!r} not found")
        return copy.deepcopy(self.config_maps[name])

    # -- jobs ---------------------------------------------------------------------------

    async def create_job(self, manifest: Obj) -> Obj:
        await self._round_trip("create jobs")
        name = manifest["metadata"]["name"]
        if name in self.jobs:
            raise Conflict(f"jobs {name!r} already exists")
        self.add_job(manifest, ready=self.start_pods)
        return copy.deepcopy(self.jobs[name])

    async def delete_job(self, name: str) -> None:
        await self._round_trip("delete jobs")
        if self.jobs.pop(name, None) is None:
            return
        for pod_name, pod in list(self.pods.items()):
            if pod["metadata"]["labels"].get("job-name") == name:
                del self.pods[pod_name]
                self._pod_event("DELETED", self._bump(pod))

    # -- leases -------------------------------------------------------------------------

    async def get_lease(self, name: str) -> Obj:
        await self._round_trip("get leases")
        if name not in self.leases:
            raise Missing(f"leases {name!r} not found")
        return copy.deepcopy(self.leases[name])

    async def create_lease(self, manifest: Obj) -> Obj:
        await self._round_trip("create leases")
        name = manifest["metadata"]["name"]
        if name in self.leases:
            raise Conflict(f"leases {name!r} already exists")
        self.leases[name] = self._bump(copy.deepcopy(manifest))
        return copy.deepcopy(self.leases[name])

    async def replace_lease(self, name: str, manifest: Obj) -> Obj:
        await self._round_trip("replace leases")
        if name not in self.leases:
            raise Missing(f"leases {name!r} not found")
        self._precondition(self.leases[name], manifest)
        self.leases[name] = self._bump(copy.deepcopy(manifest))
        return copy.deepcopy(self.leases[name])

    async def list_leases(self, selector: str) -> Obj:
        await self._round_trip("list leases")
        return {"items": [copy.deepcopy(lease) for lease in self.leases.values()
                          if _matches(lease, selector)]}

    async def delete_lease(self, name: str) -> None:
        await self._round_trip("delete leases")
        self.leases.pop(name, None)

    # -- network policies ---------------------------------------------------------------

    async def apply_network_policy(self, manifest: Obj) -> None:
        await self._round_trip("apply networkpolicies")
        self.network_policies[manifest["metadata"]["name"]] = copy.deepcopy(manifest)

    # -- what the cluster does by itself (the tests' hands) -----------------------------

    def add_job(self, manifest: Obj, *, ready: bool = True, age_s: float = 0.0) -> str:
        """A Job is there, and the pod its controller made for it, ``age_s`` old: the
        pod's name."""
        job = self._bump(copy.deepcopy(manifest))
        self.jobs[job["metadata"]["name"]] = job
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-{next(self._ids)}"
        pod = {"metadata": {"name": name, "creationTimestamp": _timestamp(time.time() - age_s),
                            "labels": {**template["metadata"]["labels"],
                                       "job-name": job["metadata"]["name"]}},
               "spec": copy.deepcopy(template["spec"]), "status": {"phase": "Pending"}}
        self.pods[name] = pod
        self._pod_event("ADDED", self._bump(pod))
        if ready:
            self.make_ready(name)
        return name

    def make_ready(self, name: str) -> None:
        """The pod's runner is up: Running, an address, its readiness probe passing."""
        pod = self.pods[name]
        pod["status"] = {"phase": "Running", "podIP": f"10.0.0.{next(self._ids)}",
                         "conditions": [{"type": "Ready", "status": "True"}]}
        self._pod_event("MODIFIED", self._bump(pod))

    def set_age(self, name: str, age_s: float) -> None:
        pod = self.pods[name]
        pod["metadata"]["creationTimestamp"] = _timestamp(time.time() - age_s)
        self._pod_event("MODIFIED", self._bump(pod))
