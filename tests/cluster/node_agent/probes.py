"""Readiness probes against the pod's own address, as the kubelet runs them.

httpGet (success: a status in 200..399), tcpSocket (success: a connection) and exec
(success: exit 0; run with the container's env and directory, mount paths rewritten).
gRPC probes are not supported and always fail, so a pod relying on one never looks ready
by mistake. Liveness and startup probes are not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.cluster.kube_client import JSON


def resolve_port(port: int | str, container: JSON) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"no container port named {port!r}")


async def _http_get(action: JSON, host: str, port: int, limit_s: float) -> bool:
    context: ssl.SSLContext | None = None
    if action.get("scheme", "HTTP").upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify either
    path = action.get("path") or "/"
    headers = {"Host": f"{host}:{port}", "User-Agent": "kube-probe/test-node-agent",
               "Accept": "*/*", "Connection": "close"}
    headers.update({h["name"]: h["value"] for h in action.get("httpHeaders") or []})
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context), limit_s
    )
    try:
        writer.write((request + "\r\n").encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), limit_s)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    parts = status_line.split()
    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400


async def _tcp(host: str, port: int, limit_s: float) -> bool:
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit_s)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _exec(command: list[str], env: Mapping[str, str], cwd: Path, limit_s: float) -> bool:
    proc = await asyncio.create_subprocess_exec(
        *command, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return await asyncio.wait_for(proc.wait(), limit_s) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False


async def probe_once(
    probe: JSON, container: JSON, pod_ip: str, env: Mapping[str, str], cwd: Path,
    rewrite: Callable[[str], str],
) -> bool:
    """One attempt of a probe; any error counts as a failure."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            action = probe["httpGet"]
            port = resolve_port(action["port"], container)
            return await _http_get(action, action.get("host") or pod_ip, port, timeout)
        if "tcpSocket" in probe:
            action = probe["tcpSocket"]
            port = resolve_port(action["port"], container)
            return await _tcp(action.get("host") or pod_ip, port, timeout)
        if "exec" in probe:
            command = [rewrite(word) for word in probe["exec"]["command"]]
            return await _exec(command, env, cwd, timeout)
    except (OSError, ValueError, TimeoutError, ssl.SSLError):
        return False
    return False
