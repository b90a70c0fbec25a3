"""Worker Jobs made and ended: a new worker for a pool, the deletion of one (its pod goes
with it), now or in the background, where nobody waits for it."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from gateway.config.settings import KubernetesSettings
from gateway.errors import ExecutorUnavailable
from gateway.executors.kubernetes.pools import ProfilePool
from gateway.executors.kubernetes.spec import worker_job
from gateway.ids import new_token
from gateway.kube.base import KubeApi, Missing
from gateway.kube.names import dns_name
from gateway.kube.objects import Obj
from gateway.supervise import TaskSet

log = logging.getLogger("jobgate.k8s")


async def owner_reference(api: KubeApi, config_map: str) -> Obj:
    """The ownerReference to ConfigMap ``config_map`` of the namespace: what the gateway
    creates with it is deleted by Kubernetes' garbage collector once the ConfigMap is
    (a chart's, on `helm uninstall`). Not a controller: nothing reconciles the Jobs."""
    try:
        found = await api.get_config_map(config_map)
    except Missing:
        raise ExecutorUnavailable(
            f"JOBGATE_K8S_OWNER_CONFIGMAP: no ConfigMap {config_map!r} in namespace "
            f"{api.namespace!r}") from None
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": config_map,
            "uid": found["metadata"]["uid"], "controller": False,
            "blockOwnerDeletion": False}


class WorkerJobs:
    def __init__(self, api: KubeApi, settings: KubernetesSettings, identity: str,
                 owner: Obj | None = None):
        """``owner``: the ownerReference each Job is made with (see ``owner_reference``)."""
        self.api = api
        self.settings = settings
        self.identity = identity
        self.owner = owner
        self._background = TaskSet("worker Job calls", log)

    async def create(self, pool: ProfilePool) -> str | None:
        """A new worker Job of the pool (its name), or None when the API refused it."""
        name = f"jg-{dns_name(pool.profile.name)}-{new_token(5)}"
        manifest = worker_job(pool.profile, self.settings, name=name, token=new_token(),
                              created_by=self.identity)
        if self.owner is not None:
            manifest["metadata"]["ownerReferences"] = [self.owner]
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
