"""``jobgate mcp``: the gateway's MCP tools over stdio, for MCP clients that only start a
local command. A proxy, not a second server: it connects to a gateway's ``/mcp``
(``JOBGATE_URL``, with ``JOBGATE_API_KEY``) with the SDK's streamable HTTP client, lists
the tools from there and forwards each call, so every tool is written once, in the
gateway, and runs as the key's tenant there."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from gateway.mcp.answers import tool_error
from gateway.mcp.endpoint import PATH

log = logging.getLogger("jobgate.mcp.stdio")
DEFAULT_URL = "http://127.0.0.1:8080"
# A call waits at most the gateway's sync wait (JOBGATE_SYNC_WAIT_S, 900 s at most).
READ_TIMEOUT_S = 960.0


class Proxy:
    """The stdio server's handlers: each asks the gateway's /mcp."""

    def __init__(self, remote: Client, url: str):
        self.remote = remote
        self.url = url

    async def list_tools(self, ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return await self.remote.list_tools(cursor=params.cursor if params else None)

    async def call_tool(self, ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            return await self.remote.call_tool(params.name, params.arguments)
        except MCPError:
            raise  # the gateway's own protocol error (an unknown tool), passed on as it is
        except (httpx2.HTTPError, OSError) as e:
            return tool_error(f"GatewayUnreachable: cannot reach the gateway at {self.url}: "
                              f"{e}")


async def serve(url: str, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx2.Timeout(30.0, read=READ_TIMEOUT_S)
    async with (httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
                Client(streamable_http_client(url + PATH, http_client=http)) as remote):
        proxy = Proxy(remote, url)
        info = remote.server_info
        server: Server[Any] = Server(
            "jobgate", version=info.version if info else "", title="jobgate (stdio)",
            instructions=remote.instructions, on_list_tools=proxy.list_tools,
            on_call_tool=proxy.call_tool)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def main() -> int:
    """The ``jobgate mcp`` command: serve until stdin closes. Exit status 1, with the reason
    on stderr, when the gateway cannot be reached or refuses the key."""
    url = os.environ.get("JOBGATE_URL", DEFAULT_URL).rstrip("/")
    key = os.environ.get("JOBGATE_API_KEY") or None
    # stdout is the protocol's: everything else goes to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="jobgate mcp: %(levelname)s %(name)s: %(message)s")
    try:
        anyio.run(serve, url, key)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - told plainly: an MCP client shows this stderr to its user
        reasons = "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in _leaves(e))
        print(f"jobgate mcp: cannot serve the gateway at {url}{PATH}: {reasons}",
              file=sys.stderr)
        return 1
    return 0
