"""``jobgate mcp``: the gateway's MCP tools over stdio, for MCP clients that only start a
local command. A proxy, not a second server: it connects to a gateway's ``/mcp``
(``JOBGATE_URL``, with ``JOBGATE_API_KEY``) with the SDK's streamable HTTP client, lists
the tools from there and forwards each call, so every tool is written once, in the
gateway, and runs as the key's tenant there."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
    """The stdio server's handlers: each asks the gateway's /mcp, on a connection of its
    own. /mcp keeps no session, so nothing is lost between calls, and a gateway that
    restarts (or another replica behind the same URL) serves the next call."""

    def __init__(self, url: str, key: str | None):
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @asynccontextmanager
    async def remote(self) -> AsyncIterator[Client]:
        timeout = httpx2.Timeout(30.0, read=READ_TIMEOUT_S)
        async with (httpx2.AsyncClient(headers=self.headers, timeout=timeout) as http,
                    Client(streamable_http_client(self.url + PATH, http_client=http)) as client):
            yield client

    async def list_tools(self, ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        try:
            async with self.remote() as remote:
                return await remote.list_tools(cursor=params.cursor if params else None)
        except Exception as e:  # noqa: BLE001 - a listing has no result to carry it: an error
            raise MCPError(types.INTERNAL_ERROR, self._no_answer(e)) from None

    async def call_tool(self, ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            async with self.remote() as remote:
                return await remote.call_tool(params.name, params.arguments)
        except Exception as e:  # noqa: BLE001 - whatever kept the answer away, the agent is told
            unknown_tool = next((leaf for leaf in _leaves(e) if isinstance(leaf, MCPError)
                                 and leaf.code == types.INVALID_PARAMS), None)
            if unknown_tool is not None:  # the gateway's own protocol error, passed on
                raise unknown_tool from None
            return tool_error(f"GatewayError: {self._no_answer(e)}")

    def _no_answer(self, error: BaseException) -> str:
        return f"no answer from the gateway at {self.url}{PATH}: {_reasons(error)}"


async def serve(url: str, key: str | None) -> None:
    proxy = Proxy(url, key)
    # Once at start, so that a wrong URL or key is said at once (and the exit status).
    async with proxy.remote() as remote:
        info, instructions = remote.server_info, remote.instructions
    server: Server[Any] = Server(
        "jobgate", version=info.version if info else "", title="jobgate (stdio)",
        instructions=instructions, on_list_tools=proxy.list_tools,
        on_call_tool=proxy.call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _reasons(error: BaseException) -> str:
    return "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in _leaves(error))


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
    except Exception as e:  # noqa: BLE001 - said plainly: MCP clients show this stderr
        print(f"jobgate mcp: cannot serve the gateway at {url}{PATH}: {_reasons(e)}",
              file=sys.stderr)
        return 1
    return 0
