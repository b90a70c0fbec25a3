"""A pod's volumes, materialized as directories under the pod's own directory.

Processes run on the host filesystem, so nothing is mounted: each volume is a directory
``<pod dir>/volumes/<name>``, and the agent tells the processes where it is (see
environment.py: KUBE_TEST_VOLUME_<NAME>, JOBGATE_WORKSPACE_ROOT, and mount paths rewritten
in env, command, args and workingDir). hostPath volumes are the host path itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.cluster.kube_client import JSON
from tests.cluster.node_agent.objects import ObjectSource, field_value, resource_value


class VolumeNotReady(Exception):
    """A volume cannot be made yet (missing ConfigMap/Secret) or at all (unsupported)."""


def _write_file(directory: Path, rel: str, data: bytes, mode: int | None) -> None:
    target = (directory / rel).resolve()
    if not target.is_relative_to(directory.resolve()):
        raise VolumeNotReady(f"volume item path {rel!r} escapes the volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(mode if mode is not None else 0o644)


def _project_keys(
    directory: Path, data: dict[str, bytes], source: JSON, default_mode: int | None
) -> None:
    items = source.get("items")
    if not items:
        for key, value in data.items():
            _write_file(directory, key, value, default_mode)
        return
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeNotReady(f"key {item['key']!r} not found")
        _write_file(directory, item["path"], data[item["key"]], item.get("mode", default_mode))


class VolumeBuilder:
    def __init__(
        self, objects: ObjectSource, pod: JSON, pod_ip: str, host_ip: str, capacity: JSON
    ) -> None:
        self.objects = objects
        self.pod = pod
        self.pod_ip = pod_ip
        self.host_ip = host_ip
        self.capacity = capacity
        self.namespace: str = pod["metadata"]["namespace"]

    async def materialize(self, root: Path) -> dict[str, Path]:
        """Creates every volume of the pod under root; returns name -> directory."""
        dirs: dict[str, Path] = {}
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "hostPath" in volume:
                dirs[name] = Path(volume["hostPath"]["path"])
                continue
            directory = root / name
            # Rebuilt from scratch on a retry, so a half-written volume never stays.
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            await self._fill(volume, directory)
            dirs[name] = directory
        return dirs

    async def _fill(self, volume: JSON, directory: Path) -> None:
        if "emptyDir" in volume:
            return
        if "configMap" in volume:
            await self._config_map(volume["configMap"], directory)
        elif "secret" in volume:
            await self._secret(volume["secret"], directory)
        elif "downwardAPI" in volume:
            self._downward(volume["downwardAPI"], directory)
        elif "projected" in volume:
            await self._projected(volume["projected"], directory)
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise VolumeNotReady(f"volume type {kinds} is not supported by the test node agent")

    async def _config_map(self, source: JSON, directory: Path, mode: int | None = None) -> None:
        data = await self.objects.config_map(self.namespace, source["name"])
        if data is None:
            if source.get("optional"):
                return
            raise VolumeNotReady(f'configmap "{source["name"]}" not found')
        _project_keys(directory, data, source, source.get("defaultMode", mode))

    async def _secret(self, source: JSON, directory: Path, mode: int | None = None) -> None:
        name = str(source.get("secretName") or source.get("name"))
        data = await self.objects.secret(self.namespace, name)
        if data is None:
            if source.get("optional"):
                return
            raise VolumeNotReady(f'secret "{name}" not found')
        _project_keys(directory, data, source, source.get("defaultMode", mode))

    def _downward(self, source: JSON, directory: Path, mode: int | None = None) -> None:
        for item in source.get("items") or []:
            if "fieldRef" in item:
                value = field_value(
                    self.pod, item["fieldRef"]["fieldPath"], self.pod_ip, self.host_ip
                )
            else:
                ref = item["resourceFieldRef"]
                value = resource_value(
                    self.pod, ref.get("containerName") or self.pod["spec"]["containers"][0]["name"],
                    ref["resource"], ref.get("divisor"), self.capacity,
                )
            _write_file(directory, item["path"], value.encode(),
                        item.get("mode", source.get("defaultMode", mode)))

    async def _projected(self, source: JSON, directory: Path) -> None:
        mode = source.get("defaultMode")
        for part in source.get("sources") or []:
            if "configMap" in part:
                await self._config_map(part["configMap"], directory, mode)
            elif "secret" in part:
                await self._secret(part["secret"], directory, mode)
            elif "downwardAPI" in part:
                self._downward(part["downwardAPI"], directory, mode)
            elif "serviceAccountToken" in part:
                await self._token(part["serviceAccountToken"], directory, mode)
            else:
                raise VolumeNotReady(f"projected source {sorted(part)} is not supported")

    async def _token(self, source: dict[str, Any], directory: Path, mode: int | None) -> None:
        token = await self.objects.service_account_token(
            self.pod, source.get("audience"), int(source.get("expirationSeconds", 3607))
        )
        _write_file(directory, source["path"], token.encode(), mode if mode is not None else 0o600)


def volume_env_name(name: str) -> str:
    """KUBE_TEST_VOLUME_<NAME>: the volume name upper-cased, non-alphanumerics as '_'."""
    return "KUBE_TEST_VOLUME_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def remove_tree(path: Path) -> None:
    """Removes a pod directory; what cannot be removed is left for the harness's temp dir."""
    shutil.rmtree(path, ignore_errors=True)
