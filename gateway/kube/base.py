"""The Kubernetes API seam: the calls jobgate makes (``KubeApi``), the errors they raise,
and the shape of a watch event. ``gateway.kube.api.KubeClient`` is the real one, over
kubernetes-asyncio; a fake stands in for it in the unit tests (``tests/fakes.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol, TypedDict

from gateway.kube.objects import Obj


class Conflict(Exception):
    """409: a precondition (resourceVersion) failed, or the object exists."""


class Gone(Exception):
    """410: the watch's resourceVersion is too old; list again."""


class Missing(Exception):
    """404."""


def answered(verb: str, status: int | None, message: str) -> str:
    """How a refusal of the API server is told: the call, the status, the server's word."""
    return f"{verb}: the Kubernetes API answered {status}: {message}"


class Refused(Exception):
    """Any other refusal (400, 422: a request the API server will never accept as it is),
    with the status and the server's message: a bug to report, not a state to wait out."""

    def __init__(self, verb: str, status: int | None, message: str):
        super().__init__(answered(verb, status, message))
        self.status = status


class WatchEvent(TypedDict):
    type: str  # ADDED, MODIFIED, DELETED or BOOKMARK (an ERROR is raised, never yielded)
    object: Obj


class KubeApi(Protocol):
    """The namespaced calls of the Kubernetes executor (pods, Jobs, NetworkPolicies) and the
    Lease membership. Errors: Conflict, Gone, Missing; ExecutorUnavailable when the API
    server cannot be reached."""

    @property
    def namespace(self) -> str: ...

    @property
    def calls(self) -> Mapping[str, int]:
        """Calls made so far, by verb and resource ("patch pods")."""

    async def close(self) -> None: ...

    # -- pods: the workers (a claim is a pod patch with a resourceVersion precondition)

    async def list_pods(self, selector: str) -> Obj: ...

    def watch_pods(self, selector: str, resource_version: str,
                   timeout_s: int) -> AsyncIterator[WatchEvent]:
        """Events from ``resource_version``; raises Gone when it is too old. Ends after
        ``timeout_s``."""

    async def patch_pod(self, name: str, patch: Obj) -> Obj:
        """A JSON merge patch; a ``metadata.resourceVersion`` in it is a precondition
        (Conflict when the pod has changed since)."""

    # -- the owner of what the gateway creates

    async def get_config_map(self, name: str) -> Obj: ...

    # -- jobs: one per worker

    async def create_job(self, manifest: Obj) -> Obj: ...

    async def delete_job(self, name: str) -> None:
        """Delete the Job and, in the background, its pod. A missing Job is no error."""

    # -- leases: replica presence and the leader

    async def get_lease(self, name: str) -> Obj: ...

    async def create_lease(self, manifest: Obj) -> Obj: ...

    async def replace_lease(self, name: str, manifest: Obj) -> Obj: ...

    async def list_leases(self, selector: str) -> Obj: ...

    async def delete_lease(self, name: str) -> None: ...

    # -- network policies

    async def apply_network_policy(self, manifest: Obj) -> None:
        """Create it, or bring the existing one up to date."""
