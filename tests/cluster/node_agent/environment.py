"""A container's environment and command line, as the kubelet would build them, plus the
test agent's stand-in for mounts (test node agent).

Precedence, lowest first: the agent's base (PATH, HOME, TMPDIR, HOSTNAME, the API server
address), the image map's env, the agent's extras (POD_IP, KUBE_TEST_VOLUME_<NAME> per
volume, JOBGATE_WORKSPACE_ROOT), then the pod's envFrom and env. ``$(VAR)`` references in
env, command and args expand as in Kubernetes.

Mounts: a process cannot see a volume at its mountPath, so every word the pod wrote
(literal env values, command, args, workingDir, exec probes) that names a mount path
(``/workspace``, ``/workspace/x``, ``--dir=/workspace``) is rewritten to the volume's
directory. What the agent provides (HOME, volume directories, the image map's command) is
a host path already and is left alone. A volume mounted at /tmp also becomes TMPDIR.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.kube_client import JSON
from tests.cluster.node_agent.objects import ObjectSource, field_value, resource_value
from tests.cluster.node_agent.volumes import volume_env_name

WORKSPACE_MOUNT = "/workspace"
TMP_MOUNT = "/tmp"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class EnvNotReady(Exception):
    """A referenced ConfigMap/Secret (or key) is missing and not optional."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names expand, $$ is a literal $, others stay."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))
    return _REF.sub(sub, text)


class MountRewriter:
    """Replaces mount paths with the directories standing in for them, in one pass (a
    replacement is never rewritten again, even when it lies under another mount path)."""

    def __init__(self, mounts: Mapping[str, Path]) -> None:
        self.mounts = {path.rstrip("/") or "/": str(local) for path, local in mounts.items()}
        # Longest first, so /data/cache wins over /data.
        paths = sorted(self.mounts, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<![\w./-])(" + "|".join(re.escape(p) for p in paths)
                       + r")(?=/|$|[^\w.-])")
            if paths else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda match: self.mounts[match.group(1)], text)


def container_mounts(container: JSON, volume_dirs: Mapping[str, Path]) -> dict[str, Path]:
    """mountPath -> local directory for the container's volumeMounts (subPath honoured)."""
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        base = volume_dirs.get(mount["name"])
        if base is None:
            continue
        local = base / mount["subPath"] if mount.get("subPath") else base
        local.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = local
    return mounts


@dataclass
class EnvContext:
    pod: JSON
    pod_ip: str
    host_ip: str
    capacity: JSON
    base: dict[str, str]
    volume_dirs: dict[str, Path]
    objects: ObjectSource


async def build_env(
    ctx: EnvContext, container: JSON, image_env: Mapping[str, str], rewrite: MountRewriter
) -> dict[str, str]:
    env = dict(ctx.base)
    env.update(image_env)
    env["POD_IP"] = ctx.pod_ip
    for name, directory in ctx.volume_dirs.items():
        env[volume_env_name(name)] = str(directory)
    for mount in container.get("volumeMounts") or []:
        path = mount["mountPath"].rstrip("/")
        if mount["name"] not in ctx.volume_dirs:
            continue
        if path == WORKSPACE_MOUNT:
            env["JOBGATE_WORKSPACE_ROOT"] = rewrite(WORKSPACE_MOUNT)
        elif path == TMP_MOUNT:
            env["TMPDIR"] = rewrite(TMP_MOUNT)
    namespace = ctx.pod["metadata"]["namespace"]
    # What $(VAR) may reference, as the kubelet's: envFrom, then env entries seen so far.
    scope: dict[str, str] = {}

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        found = await (
            ctx.objects.config_map(namespace, ref["name"]) if "configMapRef" in source
            else ctx.objects.secret(namespace, ref["name"])
        )
        if found is None:
            if ref.get("optional"):
                continue
            raise EnvNotReady(f'{"configmap" if "configMapRef" in source else "secret"} '
                              f'"{ref["name"]}" not found')
        for key, raw in found.items():
            scope[prefix + key] = raw.decode(errors="replace")

    for var in container.get("env") or []:
        value = await _env_value(ctx, container, var, scope, rewrite)
        if value is not None:
            scope[var["name"]] = value
    env.update(scope)
    return env


async def _env_value(
    ctx: EnvContext, container: JSON, var: JSON, scope: Mapping[str, str],
    rewrite: MountRewriter,
) -> str | None:
    namespace = ctx.pod["metadata"]["namespace"]
    if "valueFrom" not in var:
        # Rewritten before expansion: what $(VAR) brings in is a host path already.
        return expand(rewrite(var.get("value", "")), scope)
    source = var["valueFrom"]
    if "fieldRef" in source:
        return field_value(ctx.pod, source["fieldRef"]["fieldPath"], ctx.pod_ip, ctx.host_ip)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        return resource_value(ctx.pod, ref.get("containerName") or container["name"],
                              ref["resource"], ref.get("divisor"), ctx.capacity)
    key_ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
    if key_ref is None:
        raise EnvNotReady(f"env {var['name']}: unsupported valueFrom {sorted(source)}")
    kind = "configmap" if "configMapKeyRef" in source else "secret"
    data = await (ctx.objects.config_map(namespace, key_ref["name"]) if kind == "configmap"
                  else ctx.objects.secret(namespace, key_ref["name"]))
    if data is None or key_ref["key"] not in data:
        if key_ref.get("optional"):
            return None
        raise EnvNotReady(f'{kind} "{key_ref["name"]}" key "{key_ref["key"]}" not found')
    return data[key_ref["key"]].decode(errors="replace")

