"""The MCP server: ``tools/list`` and ``tools/call``, each call done as the caller's tenant
on the gateway's one invoke path (``Dispatcher``), exactly as the REST API does it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
import orjson
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError
from starlette.requests import Request

from gateway.api.state import Gateway
from gateway.dispatch.invoke import InvocationRequest
from gateway.errors import InvalidInput, InvocationNotFound, JobgateError
from gateway.ids import is_invocation_id
from gateway.mcp import answers
from gateway.mcp.endpoint import TENANT_SCOPE_KEY
from gateway.mcp.tools import (
    CANCEL_INVOCATION,
    GET_INVOCATION,
    LIST_PROFILES,
    RUN_CODE,
    RUN_CODE_FIELDS,
    GetInvocationArgs,
    InvocationArgs,
    NoArgs,
    ProfileCatalogue,
    ProfileInfo,
    tool_list,
)
from gateway.models import InvocationRecord

log = logging.getLogger("jobgate.mcp")
INSTRUCTIONS = (
    "jobgate runs code in isolated sandboxes. list_profiles names the runtimes; run_code "
    "runs a program in one and answers its exit code, stdout, stderr, result and artifact "
    "links (downloadable with the same API key). Long outputs are cut: the whole output "
    "is at the invocation's logs link. A run that outlives the call's wait answers its id: "
    "get_invocation fetches the result later, cancel_invocation stops it.")


class Caller:
    """Who calls and where the gateway is, as the HTTP request of this call says."""

    def __init__(self, request: object):
        if not isinstance(request, Request) or TENANT_SCOPE_KEY not in request.scope:
            # Only the /mcp endpoint serves this server, and it always sets the tenant.
            raise MCPError(types.INTERNAL_ERROR, "no authenticated caller")
        self.tenant: str = request.scope[TENANT_SCOPE_KEY]
        self.base_url = f"{request.url.scheme}://{request.url.netloc}"


Handler = Callable[[Caller, dict[str, Any]], Awaitable[types.CallToolResult]]


class Tools:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.limit = gateway.settings.mcp.output_max_bytes
        self.tools = tool_list(gateway.profiles.names())
        self.handlers: dict[str, Handler] = {
            RUN_CODE: self.run_code, LIST_PROFILES: self.list_profiles,
            GET_INVOCATION: self.get_invocation, CANCEL_INVOCATION: self.cancel_invocation}

    async def list_tools(self, ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    def input_schema(self, name: str) -> dict[str, Any] | None:
        return next((t.input_schema for t in self.tools if t.name == name), None)

    async def call_tool(self, ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        handler = self.handlers.get(params.name)
        if handler is None:  # a protocol error: no such tool (the client's mistake)
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")
        caller = Caller(ctx.request)
        try:
            return await handler(caller, params.arguments or {})
        except JobgateError as e:
            return answers.refusal(e)
        except ValidationError as e:
            return answers.invalid_arguments(e)
        except Exception:  # a bug of ours: logged; the agent is told without the traceback
            log.exception("tool %s failed", params.name)
            return answers.tool_error("Internal: internal error; it was logged")

    # -- the tools -----------------------------------------------------------------------

    async def run_code(self, caller: Caller, arguments: dict[str, Any]
                       ) -> types.CallToolResult:
        unknown = sorted(set(arguments) - set(RUN_CODE_FIELDS))
        if unknown:
            raise InvalidInput(f"unknown argument(s) {unknown}",
                               {"known": list(RUN_CODE_FIELDS)})
        body = {**arguments, "mode": "sync"}
        raw = orjson.dumps(body)
        if len(raw) > self.gateway.settings.max_request_bytes:
            raise InvalidInput("the arguments are over the gateway's request size limit",
                               {"limit": self.gateway.settings.max_request_bytes})
        outcome = await self.gateway.service.invoke(
            InvocationRequest.parse(caller.tenant, body, raw))
        return answers.invocation_answer(outcome.record, caller.base_url, self.limit)

    async def list_profiles(self, caller: Caller, arguments: dict[str, Any]
                            ) -> types.CallToolResult:
        NoArgs.model_validate(arguments)
        catalogue = ProfileCatalogue(profiles=[
            ProfileInfo.model_validate(p, from_attributes=True)
            for p in self.gateway.profiles.all()])
        text = "\n".join(
            f"{p.name}: {p.language}, runs {p.default_entrypoint}, timeout "
            f"{p.default_timeout_s:g} s (at most {p.max_timeout_s:g}), network "
            f"{'on' if p.network else 'off'}" + (f" - {p.description}" if p.description
                                                 else "")
            for p in catalogue.profiles)
        return answers.structured(catalogue, text)

    async def get_invocation(self, caller: Caller, arguments: dict[str, Any]
                             ) -> types.CallToolResult:
        args = GetInvocationArgs.model_validate(arguments)
        wait_limit = self.gateway.settings.sync_wait_s
        if args.wait_s is not None and args.wait_s > wait_limit:
            raise InvalidInput(f"wait_s must be between 0 and {wait_limit:g}")
        service = self.gateway.service
        invocation_id = _invocation_id(args.id)
        if args.wait_s:
            record = await service.wait_for(caller.tenant, invocation_id, args.wait_s)
        else:
            record = await service.get(caller.tenant, invocation_id)
        return answers.invocation_answer(await self._with_outputs(caller, record),
                                         caller.base_url, self.limit)

    async def cancel_invocation(self, caller: Caller, arguments: dict[str, Any]
                                ) -> types.CallToolResult:
        args = InvocationArgs.model_validate(arguments)
        record = await self.gateway.service.cancel(caller.tenant, _invocation_id(args.id))
        return answers.invocation_answer(record, caller.base_url, self.limit,
                                         failure_is_error=False)

    async def _with_outputs(self, caller: Caller, record: InvocationRecord
                            ) -> InvocationRecord:
        """A live record in its last moment has ended but not yet taken its outputs in:
        the stored one has them (as the REST logs read them)."""
        if record.status.terminal and record.stdout is None:
            return await self.gateway.records.load(caller.tenant, record.id)
        return record


def _invocation_id(value: str) -> str:
    if not is_invocation_id(value):
        raise InvocationNotFound(f"no invocation {value!r}")
    return value


def build_server(gateway: Gateway, version: str) -> Server[Any]:
    tools = Tools(gateway)
    return Server("jobgate", version=version, title="jobgate", instructions=INSTRUCTIONS,
                  on_list_tools=tools.list_tools, on_call_tool=tools.call_tool,
                  get_tool_input_schema=tools.input_schema)
