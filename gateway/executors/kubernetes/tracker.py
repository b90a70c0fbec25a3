"""Worker pods as this replica sees them: one list, then a watch from its resourceVersion,
resumed after each stream ends, listed again on 410 Gone, with backoff on errors. Never a
polling loop. Every change is handed to a listener as it arrives."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from gateway.kube.base import Gone, KubeApi
from gateway.kube.objects import Obj

log = logging.getLogger("jobgate.k8s.tracker")
Listener = Callable[[str, Obj, Obj | None], None]  # (event type, pod, previous pod)
WATCH_TIMEOUT_S = 240


class PodTracker:
    def __init__(self, api: KubeApi, selector: str, listener: Listener):
        self.api = api
        self.selector = selector
        self.listener = listener
        self.pods: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.healthy = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="k8s:pod-tracker")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _emit(self, kind: str, pod: Obj, previous: Obj | None) -> None:
        try:
            self.listener(kind, pod, previous)
        except Exception:  # one bad event must not stop the watch
            log.exception("pod listener failed on %s %s", kind,
                          pod.get("metadata", {}).get("name"))

    async def _relist(self) -> str:
        listing = await self.api.list_pods(self.selector)
        fresh = {p["metadata"]["name"]: p for p in listing.get("items", [])}
        for name, old in list(self.pods.items()):
            if name not in fresh:
                self._emit("DELETED", old, old)
        previous = self.pods
        self.pods = fresh
        for name, pod in fresh.items():
            self._emit("MODIFIED" if name in previous else "ADDED", pod, previous.get(name))
        self.synced.set()
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    async def _run(self) -> None:
        resource_version: str | None = None
        backoff = 0.2
        failures = 0
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._relist()
                self.healthy = True
                async for event in self.api.watch_pods(self.selector, resource_version,
                                                       WATCH_TIMEOUT_S):
                    kind, pod = event["type"], event["object"]
                    resource_version = pod["metadata"].get("resourceVersion",
                                                           resource_version)
                    if kind == "BOOKMARK":
                        continue
                    name = pod["metadata"]["name"]
                    previous = self.pods.get(name)
                    if kind == "DELETED":
                        self.pods.pop(name, None)
                    else:
                        self.pods[name] = pod
                    self._emit(kind, pod, previous)
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
