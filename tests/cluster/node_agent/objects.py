"""What a pod's spec refers to and the agent must read: fields, quantities, ConfigMaps,
Secrets, ServiceAccount tokens (test node agent)."""

from __future__ import annotations

import base64
import math
import re
from decimal import Decimal
from typing import Any

from tests.cluster.kube_client import JSON, KubeClient, KubeError

_SUFFIXES: dict[str, Decimal] = {
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity ("500m", "64Mi", "2") as a number."""
    match = _QUANTITY.match(str(text).strip())
    if not match or (match.group(2) and match.group(2) not in _SUFFIXES):
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    return Decimal(number) * (_SUFFIXES[suffix] if suffix else Decimal(1))


def field_value(pod: JSON, path: str, pod_ip: str, host_ip: str) -> str:
    """The downward API's fieldRef paths, as the kubelet resolves them."""
    meta = pod["metadata"]
    subscript = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if subscript:
        return str((meta.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "".join(f'{k}="{v}"\n' for k, v in items)
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path not in simple:
        raise ValueError(f"unsupported fieldRef {path!r}")
    return str(simple[path])


def resource_value(
    pod: JSON, container_name: str, resource: str, divisor: str | None, capacity: JSON
) -> str:
    """resourceFieldRef: the container's limit (or request), the node's capacity if unset."""
    container: JSON = next(
        (c for c in pod["spec"]["containers"] if c["name"] == container_name), {}
    )
    kind, _, name = resource.partition(".")  # "limits.memory" -> ("limits", "memory")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (resources.get("limits") or {}).get(name)
    value = parse_quantity(raw if raw is not None else capacity.get(name, "0"))
    div = parse_quantity(divisor or "1")
    return str(math.ceil(value / div))


class ObjectSource:
    """ConfigMaps, Secrets and tokens, read through the agent's API client."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube

    async def _get(self, path: str) -> JSON | None:
        try:
            return await self.kube.get(path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        obj = await self._get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        if obj is None:
            return None
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    async def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        obj = await self._get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if obj is None:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    async def service_account_token(
        self, pod: JSON, audience: str | None, expiration_seconds: int
    ) -> str:
        """A token bound to the pod, like the kubelet requests for projected volumes."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": max(expiration_seconds, 600),
            "boundObjectRef": {
                "kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"],
            },
        }
        if audience:
            spec["audiences"] = [audience]
        answer = await self.kube.create(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(answer["status"]["token"])
