"""The real ``KubeApi`` (``gateway.kube.base``): a thin layer over kubernetes-asyncio, only
the calls jobgate makes, objects as plain dicts (parsed with orjson — deserializing every
pod of a watch stream into models would cost more than the warm path itself), errors as
types, and every call counted by verb."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from gateway.errors import ExecutorUnavailable
from gateway.kube.base import Conflict, Gone, Missing, Refused, WatchEvent, answered
from gateway.kube.objects import Obj

MERGE_PATCH = "application/merge-patch+json"


def _raise_for_status(verb: str, status: int, data: bytes) -> None:
    """kubernetes-asyncio raises on an error status only when it parses the body itself;
    with raw responses (``_preload_content=False``) that is ours to do. Without it, a 409 on
    a claim would read as a successful claim."""
    if 200 <= status < 300:
        return
    try:
        reason = str(orjson.loads(data).get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        reason = data[:200].decode(errors="replace")
    raise _translate(verb, ApiException(status=status, reason=reason))


# Refusals that pass: throttled, overloaded or restarting, a token being rotated or a Role
# being (re)applied, as in a rollout. The call may be made again later.
TRANSIENT = {401, 403, 429, 500, 502, 503, 504}


def _translate(verb: str, e: ApiException) -> Exception:
    reason = str(e.reason or "")
    if e.status == 409:
        return Conflict(reason)
    if e.status == 410:
        return Gone(reason)
    if e.status == 404:
        return Missing(reason)
    if e.status in TRANSIENT:
        return ExecutorUnavailable(answered(verb, e.status, reason), retry_after=5)
    return Refused(verb, e.status, reason)


async def load_api_client(kubeconfig: str) -> client.ApiClient:
    """In-cluster config inside a pod, else the kubeconfig file (or ~/.kube/config)."""
    cfg = client.Configuration()
    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(config_file=kubeconfig or None,
                                      client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


async def connect(kubeconfig: str, namespace: str) -> KubeClient:
    """The client of ``namespace``, configured as ``load_api_client`` finds it."""
    try:
        return KubeClient(await load_api_client(kubeconfig), namespace)
    except Exception as e:
        raise ExecutorUnavailable(f"cannot configure the Kubernetes client: {e}") from e


class KubeClient:
    def __init__(self, api: client.ApiClient, namespace: str):
        self.api = api
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.networking = client.NetworkingV1Api(api)
        self.calls: dict[str, int] = {}

    async def close(self) -> None:
        await self.api.close()

    def _count(self, verb: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1

    async def _call(self, verb: str, fn: Any, *args: Any, **kwargs: Any) -> Obj:
        self._count(verb)
        try:
            resp = await fn(*args, _preload_content=False, **kwargs)
            data = await resp.read()
            _raise_for_status(verb, resp.status, data)
        except ApiException as e:
            raise _translate(verb, e) from None
        except (TimeoutError, OSError) as e:
            raise ExecutorUnavailable(f"the Kubernetes API is unreachable: {e!r}",
                                      retry_after=5) from e
        result: Obj = orjson.loads(data) if data else {}
        return result

    # -- pods ---------------------------------------------------------------------------

    async def list_pods(self, selector: str) -> Obj:
        return await self._call("list pods", self.core.list_namespaced_pod, self.namespace,
                                label_selector=selector)

    async def watch_pods(self, selector: str, resource_version: str,
                         timeout_s: int) -> AsyncIterator[WatchEvent]:
        """Watch events (dicts with ``type`` and ``object``) from ``resource_version``;
        raises Gone when it is too old. Ends after ``timeout_s`` (the server closes)."""
        self._count("watch pods")
        try:
            resp: Any = await self.core.list_namespaced_pod(
                self.namespace, label_selector=selector, watch=True,
                resource_version=resource_version, allow_watch_bookmarks=True,
                timeout_seconds=timeout_s, _preload_content=False,
                _request_timeout=timeout_s + 30)
        except ApiException as e:
            raise _translate("watch pods", e) from None
        except OSError as e:
            raise ExecutorUnavailable(f"the Kubernetes API is unreachable: {e!r}") from e
        if resp.status != 200:
            data = await resp.read()
            resp.release()
            _raise_for_status("watch pods", resp.status, data)
        try:
            while line := await resp.content.readline():
                event: WatchEvent = orjson.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    if status.get("code") == 410:
                        raise Gone(status.get("message", "gone"))
                    raise _translate("watch pods", ApiException(
                        status=status.get("code"), reason=status.get("message")))
                yield event
        finally:
            resp.release()

    async def patch_pod(self, name: str, patch: Obj) -> Obj:
        return await self._call("patch pods", self.core.patch_namespaced_pod, name,
                                self.namespace, patch, _content_type=MERGE_PATCH)

    # -- config maps ----------------------------------------------------------------------

    async def get_config_map(self, name: str) -> Obj:
        return await self._call("get configmaps", self.core.read_namespaced_config_map, name,
                                self.namespace)

    # -- jobs ---------------------------------------------------------------------------

    async def create_job(self, manifest: Obj) -> Obj:
        return await self._call("create jobs", self.batch.create_namespaced_job,
                                self.namespace, manifest)

    async def delete_job(self, name: str) -> None:
        with contextlib.suppress(Missing):
            await self._call("delete jobs", self.batch.delete_namespaced_job, name,
                             self.namespace, propagation_policy="Background")

    # -- leases ---------------------------------------------------------------------------

    async def get_lease(self, name: str) -> Obj:
        return await self._call("get leases", self.coordination.read_namespaced_lease, name,
                                self.namespace)

    async def create_lease(self, manifest: Obj) -> Obj:
        return await self._call("create leases", self.coordination.create_namespaced_lease,
                                self.namespace, manifest)

    async def replace_lease(self, name: str, manifest: Obj) -> Obj:
        return await self._call("replace leases", self.coordination.replace_namespaced_lease,
                                name, self.namespace, manifest)

    async def list_leases(self, selector: str) -> Obj:
        return await self._call("list leases", self.coordination.list_namespaced_lease,
                                self.namespace, label_selector=selector)

    async def delete_lease(self, name: str) -> None:
        with contextlib.suppress(Missing):
            await self._call("delete leases", self.coordination.delete_namespaced_lease, name,
                             self.namespace)

    # -- network policies -----------------------------------------------------------------

    async def apply_network_policy(self, manifest: Obj) -> None:
        name = manifest["metadata"]["name"]
        try:
            await self._call("create networkpolicies",
                             self.networking.create_namespaced_network_policy,
                             self.namespace, manifest)
        except Conflict:
            await self._call("patch networkpolicies",
                             self.networking.patch_namespaced_network_policy, name,
                             self.namespace, manifest, _content_type=MERGE_PATCH)
