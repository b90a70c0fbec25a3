"""Worker pods as this replica sees them: one list, then a watch from its resourceVersion,
resumed after each stream ends, listed again on 410 Gone, with backoff on errors. Never a
polling loop. Every change is handed to the listeners as it arrives."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.executors.kubernetes.pods import Pod
from gateway.executors.kubernetes.spec import INVOCATION, PROFILE
from gateway.kube.base import Gone, KubeApi

log = logging.getLogger("jobgate.k8s.tracker")
WATCH_TIMEOUT_S = 240
# The labels pods are looked up by (a profile's pool, an invocation's worker): indexed, so
# a lookup reads that label's pods, not every pod the watch shows.
INDEXED = (PROFILE, INVOCATION)


class Change(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class PodEvent:
    """A pod as it is now (as it was last, when deleted), and as it was before."""

    change: Change
    pod: Pod
    previous: Pod | None


Listener = Callable[[PodEvent], None]


class PodTracker:
    def __init__(self, selector: str):
        self.selector = selector
        self._pods: dict[str, Pod] = {}
        self._index: dict[tuple[str, str], dict[str, Pod]] = {}
        self._listeners: list[Listener] = []
        self.synced = asyncio.Event()
        self.healthy = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pods(self) -> Mapping[str, Pod]:
        """Every pod the watch shows, by name."""
        return self._pods

    def labelled(self, key: str, value: str) -> list[Pod]:
        """The pods whose label ``key`` (one of INDEXED) is ``value``."""
        return list(self._index.get((key, value), {}).values())

    def _put(self, pod: Pod) -> None:
        old = self._pods.get(pod.name)
        if old is not None:
            self._unindex(old)
        self._pods[pod.name] = pod
        for key in INDEXED:
            value = pod.labels.get(key)
            if value:
                self._index.setdefault((key, value), {})[pod.name] = pod

    def _drop(self, name: str) -> None:
        old = self._pods.pop(name, None)
        if old is not None:
            self._unindex(old)

    def _unindex(self, pod: Pod) -> None:
        for key in INDEXED:
            value = pod.labels.get(key)
            if not value:
                continue
            bucket = self._index.get((key, value))
            if bucket is not None:
                bucket.pop(pod.name, None)
                if not bucket:
                    del self._index[(key, value)]

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` with every change, in the order listeners were added."""
        self._listeners.append(listener)

    def saw(self, pod: Pod) -> None:
        """A newer version of a pod than the watch has shown yet (a write's answer)."""
        self._put(pod)

    def start(self, api: KubeApi) -> None:
        self._task = asyncio.create_task(self._run(api), name="k8s:pod-tracker")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _emit(self, event: PodEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # one bad event must not stop the watch
                log.exception("pod listener failed on %s %s", event.change, event.pod.name)

    async def _relist(self, api: KubeApi) -> str:
        listing = await api.list_pods(self.selector)
        fresh = {pod.name: pod for pod in map(Pod, listing.get("items", []))}
        for name, old in list(self._pods.items()):
            if name not in fresh:
                self._emit(PodEvent(Change.DELETED, old, old))
        previous = self._pods
        self._pods, self._index = {}, {}
        for pod in fresh.values():
            self._put(pod)
        for name, pod in fresh.items():
            self._emit(PodEvent(Change.MODIFIED if name in previous else Change.ADDED, pod,
                                previous.get(name)))
        self.synced.set()
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    async def _run(self, api: KubeApi) -> None:
        resource_version: str | None = None
        backoff = 0.2
        failures = 0
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._relist(api)
                self.healthy = True
                async for event in api.watch_pods(self.selector, resource_version,
                                                  WATCH_TIMEOUT_S):
                    raw = event["object"]
                    resource_version = raw["metadata"].get("resourceVersion",
                                                           resource_version)
                    if event["type"] == "BOOKMARK":
                        continue
                    change, pod = Change(event["type"]), Pod(raw)
                    previous = self._pods.get(pod.name)
                    if change is Change.DELETED:
                        self._drop(pod.name)
                    else:
                        self._put(pod)
                    self._emit(PodEvent(change, pod, previous))
                backoff, failures = 0.2, 0
            except asyncio.CancelledError:
                raise
            except Gone:
                log.info("pod watch expired (410); listing again")
                resource_version = None
            except Exception as e:  # noqa: BLE001 - the tracker outlives any API trouble
                failures += 1
                self.healthy = False
                log.warning("pod watch failed (%d in a row): %r; retrying in %.1fs",
                            failures, e, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 10.0)
                if failures >= 3:
                    resource_version = None  # start over from a fresh list
