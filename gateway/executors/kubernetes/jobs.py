"""Worker Jobs made and ended: a new worker for a pool, the deletion of one (its pod goes
with it), now or in the background, where nobody waits for it."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from gateway.config.settings import KubernetesSettings
from gateway.executors.kubernetes.pools import ProfilePool
from gateway.executors.kubernetes.spec import worker_job
from gateway.ids import new_token
from gateway.kube.base import KubeApi
from gateway.kube.names import dns_name
from gateway.supervise import TaskSet

log = logging.getLogger("jobgate.k8s")


class WorkerJobs:
    def __init__(self, api: KubeApi, settings: KubernetesSettings, identity: str):
        self.api = api
        self.settings = settings
        self.identity = identity
        self._background = TaskSet("worker Job calls", log)

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
        self._background.spawn(coro)

    async def settle(self) -> None:
        """Until what was started in the background is done."""
        await self._background.settle()

    async def stop(self) -> None:
        await self._background.cancel_all()
