"""The MCP tools as ``tools/list`` describes them: names, descriptions, and the JSON
schemas of their arguments and of their structured results. ``run_code``'s arguments are
fields of the REST API's ``InvocationCreate`` (their schema is taken from it, and the body
is validated by it), so the two front doors cannot drift apart."""

from __future__ import annotations

from typing import Any

import mcp_types as types
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from gateway.models import ArtifactLink, InvocationCreate, InvocationLinks, Reason, Status

RUN_CODE = "run_code"
LIST_PROFILES = "list_profiles"
GET_INVOCATION = "get_invocation"
CANCEL_INVOCATION = "cancel_invocation"

# The fields of InvocationCreate an agent may set through run_code; the rest (mode,
# callback, env, ttl) stay the REST API's: run_code is always a sync call.
RUN_CODE_FIELDS = ("profile", "code", "files", "entrypoint", "args", "stdin", "input",
                   "timeout_s", "wait_s")
DESCRIPTIONS = {
    "code": "Source code, written to the profile's default entrypoint (main.py, main.sh, "
            "main.js ...). Give code or files, not both.",
    "files": "Several files: name -> text. Give files or code, not both; entrypoint says "
             "which one runs.",
    "args": "Command-line arguments for the program.",
    "stdin": "Text given to the program on its standard input.",
    "input": "Any JSON, given to the program as the file input.json and as $JOBGATE_INPUT.",
    "timeout_s": "Seconds the program may run before it is stopped (status timeout); at "
                 "most the profile's max_timeout_s.",
    "wait_s": "Seconds this call waits for the end; past it the call answers the id and "
              "status (finished: false): then call get_invocation.",
}


class RunResult(BaseModel):
    """One invocation as a tool answers it. stdout, stderr and result are cut to the
    gateway's MCP output cap; ``links.logs`` has the whole output."""

    model_config = ConfigDict(extra="forbid")
    id: str
    profile: str
    status: Status
    finished: bool = Field(description="false: still queued or running; call get_invocation")
    reason: Reason | None = None
    message: str | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = Field(False, description="cut here or by the gateway: the "
                                   "whole stdout is at links.logs")
    stderr_truncated: bool = False
    result: JsonValue = Field(None, description="the program's result.json, parsed")
    result_truncated: bool = Field(False, description="result left out: over the cap")
    result_error: str | None = None
    artifacts: list[ArtifactLink] = Field(
        default_factory=list, description="files the program wrote to artifacts/; each url "
        "downloads with the same Authorization: Bearer key")
    links: InvocationLinks
    run_ms: float | None = None


class ProfileInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    language: str
    description: str
    default_entrypoint: str
    default_timeout_s: float
    max_timeout_s: float
    network: bool


class ProfileCatalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profiles: list[ProfileInfo]


class InvocationArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=64, description="the invocation id run_code answered")


class GetInvocationArgs(InvocationArgs):
    wait_s: float | None = Field(None, ge=0, description="Seconds to wait for it to end "
                                 "(at most the gateway's sync wait); 0 or absent: now")


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, null]`` with a null default, as pydantic writes an optional field, is
    X for a tool's caller, who leaves it out instead."""
    prop = {k: v for k, v in prop.items() if k not in ("title", "default")}
    options = prop.pop("anyOf", None)
    if options is not None:
        kept = [o for o in options if o != {"type": "null"}]
        prop = {**kept[0], **prop} if len(kept) == 1 else {"anyOf": kept, **prop}
    return prop


def _input_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["properties"] = {name: _without_null(prop)
                            for name, prop in schema.get("properties", {}).items()}
    return schema


def _output_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(mode="serialization")


def run_code_input_schema(profiles: list[str]) -> dict[str, Any]:
    fields = InvocationCreate.model_json_schema()["properties"]
    properties = {name: _without_null(fields[name]) for name in RUN_CODE_FIELDS}
    properties["profile"] = {**properties["profile"], "enum": profiles,
                             "description": "The runtime to run in: see list_profiles"}
    for name, text in DESCRIPTIONS.items():
        properties[name]["description"] = text
    return {"type": "object", "properties": properties, "required": ["profile"],
            "additionalProperties": False}


def tool_list(profiles: list[str]) -> list[types.Tool]:
    result_schema = _output_schema(RunResult)
    return [
        types.Tool(
            name=RUN_CODE, title="Run code",
            description="Run a program in an isolated, short-lived sandbox of a runtime "
            "profile and answer its exit code, stdout, stderr, result (result.json) and "
            "artifact links. No network unless the profile allows it. A run that outlives "
            "the wait answers its id with finished: false; get_invocation fetches it later.",
            input_schema=run_code_input_schema(profiles), output_schema=result_schema,
            annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                              open_world_hint=False)),
        types.Tool(
            name=LIST_PROFILES, title="List runtime profiles",
            description="The runtime profiles this gateway runs code in (language, default "
            "entrypoint, time limits, network).",
            input_schema=_input_schema(NoArgs),
            output_schema=_output_schema(ProfileCatalogue),
            annotations=types.ToolAnnotations(read_only_hint=True)),
        types.Tool(
            name=GET_INVOCATION, title="Get an invocation",
            description="An invocation run_code started, by id: its status, or its result "
            "once it ended (waiting up to wait_s for that).",
            input_schema=_input_schema(GetInvocationArgs), output_schema=result_schema,
            annotations=types.ToolAnnotations(read_only_hint=True)),
        types.Tool(
            name=CANCEL_INVOCATION, title="Cancel an invocation",
            description="Stop an invocation that is still queued or running.",
            input_schema=_input_schema(InvocationArgs), output_schema=result_schema,
            annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                              idempotent_hint=True)),
    ]
