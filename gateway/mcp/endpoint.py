"""``/mcp``: the MCP server over streamable HTTP, a sub-app of the gateway's Starlette app.

Each request is checked first against the same API keys as the REST API (a missing or
wrong key: 401 in the REST API's error shape, before the MCP layer reads anything); its
tenant goes down to the tools with the request. Then the SDK's transport takes it:

- stateless, JSON answers: every POST is one exchange, with no session kept in one
  replica's memory, so any gateway replica behind a Service answers any request (a
  stateful session would be 404 on every replica but the one that opened it), and no SSE
  stream is held open through a load balancer. What it costs, server-to-client requests
  (sampling, elicitation) and progress mid-call, these tools do not use; a run longer
  than the wait answers its id, and get_invocation fetches it.
- Host and Origin are checked as the SDK recommends (its DNS-rebinding protection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from gateway.api.responses import JSONResponse
from gateway.api.state import Gateway
from gateway.auth.authenticator import Authenticator
from gateway.config.settings import Settings
from gateway.errors import Unauthorized

if TYPE_CHECKING:  # the SDK is imported on the first /mcp request (see McpFrontDoor)
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings

PATH = "/mcp"
# Where the endpoint leaves the caller's tenant in the request's ASGI scope, once its API
# key is checked (before the MCP layer sees the request); gateway.mcp.server reads it.
TENANT_SCOPE_KEY = "jobgate.tenant"
# JSON-RPC 2.0's "Invalid Request" (mcp_types.INVALID_REQUEST, without importing the SDK).
INVALID_REQUEST = -32600
LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The Hosts (and Origins) ``/mcp`` answers: JOBGATE_MCP_ALLOWED_HOSTS when set; else,
    as the SDK does, the loopback names on a loopback bind (where a gateway may run without
    keys), and no check on another bind (keys are required there, and a page that rebinds
    a name to the gateway cannot send them)."""
    from mcp.server.transport_security import TransportSecuritySettings

    mcp = settings.mcp
    if mcp.allowed_hosts:
        return TransportSecuritySettings(allowed_hosts=list(mcp.allowed_hosts),
                                         allowed_origins=list(mcp.allowed_origins))
    if settings.is_loopback_bind:
        return TransportSecuritySettings(allowed_hosts=LOOPBACK_HOSTS,
                                         allowed_origins=LOOPBACK_ORIGINS
                                         + list(mcp.allowed_origins))
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


def refused(error: Unauthorized) -> Response:
    """A 401 as a JSON-RPC error (what MCP clients read and show: the SDK's own client
    surfaces its message), the REST API's error shape in its data."""
    rest = {"code": error.code, "message": error.message, "details": error.details}
    return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
        "code": INVALID_REQUEST, "message": f"{error.code}: {error.message}",
        "data": {"error": rest}}}, status_code=error.status,
        headers={"WWW-Authenticate": 'Bearer realm="jobgate"'})


class McpEndpoint:
    """The ASGI app at /mcp: the API key, then the SDK's session manager."""

    __name__ = "mcp"  # the route's label in the request metrics

    def __init__(self, auth: Authenticator, door: McpFrontDoor):
        self.auth = auth
        self.door = door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # a websocket under /mcp/: nothing serves it
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            tenant = self.auth.tenant(Request(scope))
        except Unauthorized as e:
            await refused(e)(scope, receive, send)
            return
        scope[TENANT_SCOPE_KEY] = tenant
        manager = await self.door.manager()
        await manager.handle_request(scope, receive, send)


class McpFrontDoor:
    """The endpoint, its routes in the app, and the SDK's session manager, started on the
    first /mcp request: the SDK costs ~0.35 s of imports and ~27 MB of memory, which a
    gateway nobody calls over MCP should not pay at every start. The manager runs in a
    task of its own (its task group must be entered and left in one task) until the
    app's lifespan ends (``run``)."""

    def __init__(self, gateway: Gateway, version: str):
        self.gateway = gateway
        self.version = version
        self.endpoint = McpEndpoint(gateway.auth, self)
        self._manager: StreamableHTTPSessionManager | None = None
        self._starting: asyncio.Task[StreamableHTTPSessionManager] | None = None
        self._serving: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def routes(self) -> list[BaseRoute]:
        # One sub-app, mounted; the Route answers /mcp itself (a Mount matches /mcp/...
        # only, and a redirect would double every call). Neither is in the OpenAPI
        # document: /mcp speaks JSON-RPC (docs/mcp.md describes it).
        return [Route(PATH, self.endpoint, include_in_schema=False),
                Mount(PATH, app=self.endpoint)]

    async def manager(self) -> StreamableHTTPSessionManager:
        if self._manager is not None:
            return self._manager
        if self._starting is None:  # the first caller starts it; the others wait with it
            self._starting = asyncio.create_task(self._start(), name="mcp-start")
        starting = self._starting
        try:
            return await asyncio.shield(starting)
        except Exception:
            if starting.done() and self._starting is starting:
                self._starting = None  # it failed: the next request tries again
            raise

    async def _start(self) -> StreamableHTTPSessionManager:
        # Imported off the event loop: 0.35 s of module loading would stall every request.
        manager = await asyncio.to_thread(self._build)
        running = asyncio.get_running_loop().create_future()
        self._serving = asyncio.create_task(self._serve(manager, running), name="mcp")
        await running
        self._manager = manager
        return manager

    def _build(self) -> StreamableHTTPSessionManager:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        from gateway.mcp.server import build_server

        settings = self.gateway.settings
        return StreamableHTTPSessionManager(
            build_server(self.gateway, self.version), json_response=True, stateless=True,
            security_settings=transport_security(settings),
            max_request_body_size=settings.max_request_bytes)

    async def _serve(self, manager: StreamableHTTPSessionManager,
                     running: asyncio.Future[None]) -> None:
        try:
            async with manager.run():
                running.set_result(None)
                await self._stop.wait()
        except BaseException as e:
            if not running.done():
                running.set_exception(e)
            raise

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The app's lifespan: when it ends, the manager (if it was started) stops."""
        try:
            yield
        finally:
            self._stop.set()
            if self._serving is not None:
                await asyncio.gather(self._serving, return_exceptions=True)


def mcp_front_door(gateway: Gateway, version: str) -> McpFrontDoor | None:
    """The /mcp front door, unless JOBGATE_MCP_ENABLED is off."""
    return McpFrontDoor(gateway, version) if gateway.settings.mcp.enabled else None
