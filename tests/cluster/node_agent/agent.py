"""The test node agent: a Node that runs its pods as local processes (test infrastructure).

It registers a Ready Node, keeps its Lease fresh, serves the kubelet port, and watches
the pods bound to it (list, then watch from the list's resourceVersion; re-list on 410
Gone), handing each pod to a PodWorker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from tests.cluster.kube_client import JSON, MERGE_PATCH, KubeError
from tests.cluster.node_agent.context import AgentContext
from tests.cluster.node_agent.kubelet_server import KubeletServer
from tests.cluster.node_agent.pod import PodWorker

LEASE_DURATION_S = 40
LEASE_RENEW_S = 10.0
NODE_STATUS_EVERY_S = 60.0
WATCH_TIMEOUT_S = 60
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
SHUTDOWN_WAIT_S = 15.0
NODE_LABEL = "jobgate.test/node-agent"


def micro_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeAgent:
    def __init__(self, ctx: AgentContext, kubelet_version: str) -> None:
        self.ctx = ctx
        self.kubelet_version = kubelet_version
        self.workers: dict[str, PodWorker] = {}
        self.by_name: dict[tuple[str, str], PodWorker] = {}
        self.kubelet = KubeletServer(self.find_pod, ctx.state_dir)
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()

    def find_pod(self, namespace: str, name: str) -> PodWorker | None:
        return self.by_name.get((namespace, name))

    async def run(self, stop: asyncio.Event) -> None:
        port = await self.kubelet.start()
        await self._register(port)
        self._tasks = [
            asyncio.create_task(self._keep_lease(stop)),
            asyncio.create_task(self._keep_node_status(stop, port)),
            asyncio.create_task(self._watch_pods(stop)),
        ]
        self.ctx.log.info("node %s ready; kubelet port %d", self.ctx.node_name, port)
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Kills every container (the workers do, on cancellation) within a time bound."""
        for task in self._tasks:
            task.cancel()
        workers = [w for w in self.workers.values() if w.task is not None]
        for worker in workers:
            assert worker.task is not None
            worker.task.cancel()
        pending = [w.task for w in workers if w.task is not None] + self._tasks
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_WAIT_S)
        await self.kubelet.stop()

    # -- the Node and its Lease --------------------------------------------------------------

    def _node_status(self, port: int) -> JSON:
        capacity = self.ctx.capacity
        heartbeat = now()

        def condition(kind: str, status: str, reason: str, message: str) -> JSON:
            return {"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": heartbeat, "lastTransitionTime": heartbeat}

        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                condition("Ready", "True", "KubeletReady", "test node agent is ready"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.ctx.host_ip},
                {"type": "Hostname", "address": self.ctx.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                "machineID": "jobgate-test", "systemUUID": "jobgate-test",
                "bootID": f"jobgate-test-{os.getpid()}",
                "kernelVersion": platform.release(), "osImage": "jobgate test node agent",
                "containerRuntimeVersion": "jobgate-test://1", "kubeletVersion":
                self.kubelet_version, "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def _register(self, port: int) -> None:
        name = self.ctx.node_name
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", NODE_LABEL: "true",
            }},
        }
        try:
            await self.ctx.kube.create("/api/v1/nodes", node)
        except KubeError as exc:
            if exc.status != 409:  # left by an earlier agent of the same name: reuse it
                raise
        await self.ctx.kube.patch(f"/api/v1/nodes/{name}/status",
                                  {"status": self._node_status(port)}, MERGE_PATCH)
        # The TaintNodesByCondition admission plugin taints a new node not-ready; the node
        # lifecycle controller would lift it, but it is not run (it would also evict pods).
        await self.ctx.kube.patch(f"/api/v1/nodes/{name}", {"spec": {"taints": None}})

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        name = self.ctx.node_name
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S}
        while not stop.is_set():
            try:
                try:
                    await self.ctx.kube.patch(path, {"spec": {**spec, "renewTime": micro_time()}})
                except KubeError as exc:
                    if exc.status != 404:
                        raise
                    await self.ctx.kube.create(path.rsplit("/", 1)[0], {
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name},
                        "spec": {**spec, "renewTime": micro_time()},
                    })
            except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
                self.ctx.log.warning("lease renewal failed: %s", exc)
            await _wait(stop, LEASE_RENEW_S)

    async def _keep_node_status(self, stop: asyncio.Event, port: int) -> None:
        while not await _wait(stop, NODE_STATUS_EVERY_S):
            with contextlib.suppress(KubeError, aiohttp.ClientError, TimeoutError):
                await self.ctx.kube.patch(f"/api/v1/nodes/{self.ctx.node_name}/status",
                                          {"status": self._node_status(port)}, MERGE_PATCH)

    # -- pods --------------------------------------------------------------------------------

    async def _watch_pods(self, stop: asyncio.Event) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.ctx.node_name}"}
        version: str | None = None
        retry = RETRY_MIN_S
        while not stop.is_set():
            try:
                if version is None:
                    listed = await self.ctx.kube.get("/api/v1/pods", **selector)
                    version = listed["metadata"]["resourceVersion"]
                    self._sync(listed["items"])
                query = dict(selector, resourceVersion=version, allowWatchBookmarks=True)
                async for event in self.ctx.kube.watch("/api/v1/pods", query, WATCH_TIMEOUT_S):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # too old: list again
                            version = None
                            break
                        raise KubeError(int(obj.get("code", 500)), obj)
                    version = obj["metadata"]["resourceVersion"]
                    if kind == "DELETED":
                        self._on_deleted(obj)
                    elif kind in ("ADDED", "MODIFIED"):
                        self._on_pod(obj)
                retry = RETRY_MIN_S
            except KubeError as exc:
                if exc.status == 410:
                    version = None
                self.ctx.log.warning("pod watch: %s", exc)
                await _wait(stop, retry)
                retry = min(RETRY_MAX_S, retry * 2)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.ctx.log.warning("pod watch: %s", exc)
                await _wait(stop, retry)
                retry = min(RETRY_MAX_S, retry * 2)

    def _sync(self, pods: list[JSON]) -> None:
        """After a (re-)list: feed every pod; those no longer listed are gone."""
        listed = {p["metadata"]["uid"] for p in pods}
        for uid, worker in list(self.workers.items()):
            if uid not in listed:
                worker.mark_gone()
        for pod in pods:
            self._on_pod(pod)

    def _on_pod(self, pod: JSON) -> None:
        meta = pod["metadata"]
        worker = self.workers.get(meta["uid"])
        if worker is not None:
            worker.update(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            # Finished before this agent started (an earlier agent's): only finalize.
            if "deletionTimestamp" in meta:
                self._spawn(self._force_delete(pod))
            return
        self._start_worker(pod)

    def _on_deleted(self, pod: JSON) -> None:
        worker = self.workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.mark_gone()

    def _start_worker(self, pod: JSON) -> None:
        meta = pod["metadata"]
        worker = PodWorker(self.ctx, pod, self.ctx.pod_ips.allocate())
        key = (meta["namespace"], meta["name"])
        self.workers[worker.uid] = worker
        self.by_name[key] = worker
        worker.task = asyncio.create_task(worker.run())
        worker.task.add_done_callback(self._forget(worker, key))
        self.ctx.log.info("pod %s/%s: started worker, podIP %s", *key, worker.pod_ip)

    def _forget(self, worker: PodWorker, key: tuple[str, str]) -> Callable[[object], None]:
        def done(_task: object) -> None:
            self.workers.pop(worker.uid, None)
            if self.by_name.get(key) is worker:
                del self.by_name[key]
            self.ctx.pod_ips.release(worker.pod_ip)
        return done

    async def _force_delete(self, pod: JSON) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(KubeError, aiohttp.ClientError, TimeoutError):
            await self.ctx.kube.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps up to `seconds`; True when stop was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
