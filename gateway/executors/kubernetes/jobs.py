"""Worker Jobs made and ended: a new worker for a pool, the deletion of one (its pod goes
with it), now or in the background, where nobody waits for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from gateway.config.settings import Settings
from gateway.executors.kubernetes.pools import ProfilePool
from gateway.executors.kubernetes.spec import worker_job
from gateway.ids import new_token
from gateway.kube.base import KubeApi
from gateway.kube.names import dns_name

log = logging.getLogger("jobgate.k8s")


class WorkerJobs:
    def __init__(self, api: KubeApi, settings: Settings, identity: str):
        self.api = api
        self.settings = settings
        self.identity = identity
        self._background: set[asyncio.Task[Any]] = set()

    async def create(self, pool: ProfilePool) -> str | None:
        """A new worker Job of the pool (its name), or None when the API refused it."""
        name = f"jg-{dns_name(pool.profile.name)}-{new_token(5)}"
        manifest = worker_job(pool.profile, self.settings, name=name, token=new_token(),
                              created_by=self.identity)
        pool.creating += 1
        try:
            await self.api.create_job(manifest)
        except Exception as e:  # noqa: BLE001 - the controller tries again; a waiter waits on
            log.warning("creating worker %s failed: %r", name, e)
            return None
        finally:
            pool.creating -= 1
        return name

    async def delete(self, job: str) -> None:
        await self.api.delete_job(job)

    def create_soon(self, pool: ProfilePool) -> None:
        self._spawn(self.create(pool))

    def delete_soon(self, job: str) -> None:
        self._spawn(self.delete(job))

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.warning("a worker Job call failed: %r", e)

    async def settle(self) -> None:
        """Until what was started in the background is done."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
