"""The test node agent's "kubelet port": HTTPS, serving container logs to the API server.

`kubectl logs` and GET .../pods/NAME/log go from the API server to the node's
status.daemonEndpoints.kubeletEndpoint.Port at its InternalIP. Only /containerLogs and
/healthz exist here; exec, attach and port-forward are not supported. The certificate is
self-signed: the API server does not verify kubelets unless told to.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from tests.cluster.node_agent.pod import PodWorker
from tests.cluster.pki import self_signed

FOLLOW_POLL_S = 0.2
FOLLOW_MAX_S = 3600.0  # a follow stream ends when its container does; this bounds a stuck one
CHUNK = 64 * 1024

FindPod = Callable[[str, str], PodWorker | None]


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class KubeletServer:
    def __init__(self, find_pod: FindPod, cert_dir: Path, host: str = "127.0.0.1") -> None:
        self.find_pod = find_pod
        self.host = host
        self.cert_dir = cert_dir
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        pair = self_signed(self.cert_dir, "kubelet", self.host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pair.cert_path, pair.key_path)
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=context).start()
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        ns, pod_name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        worker = self.find_pod(ns, pod_name)
        state = worker.state_of(container) if worker else None
        if worker is None or state is None:
            raise web.HTTPNotFound(text=f"container {container} of pod {ns}/{pod_name} not found")
        query = request.query
        previous = query.get("previous") == "true"
        path = worker.log_path(container, previous)
        if not path.exists():
            if previous:
                raise web.HTTPBadRequest(text=f"previous terminated container {container} "
                                              f"in pod {pod_name} not found")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        data = path.read_bytes()
        if "tailLines" in query:
            data = _tail(data, int(query["tailLines"]))
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        if limit is not None:
            data = data[:limit]
        if query.get("follow") != "true" or previous:
            return web.Response(body=data, content_type="text/plain")

        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(data)
        sent = len(data)
        offset = path.stat().st_size
        loop = asyncio.get_running_loop()
        end = loop.time() + FOLLOW_MAX_S
        run = state.run
        while loop.time() < end and (limit is None or sent < limit):
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read(CHUNK)
            if chunk:
                if limit is not None:
                    chunk = chunk[: limit - sent]
                offset += len(chunk)
                sent += len(chunk)
                await resp.write(chunk)
                continue
            # Nothing new: stop once this run of the container has ended.
            if run is None or run.proc.returncode is not None or state.run is not run:
                break
            await asyncio.sleep(FOLLOW_POLL_S)
        await resp.write_eof()
        return resp
