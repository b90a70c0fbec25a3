"""What a tool call answers: an invocation as structured content (``RunResult``) plus a
text an agent reads, both cut to the MCP output cap; and a refusal as a tool error. A
failure of the code or a refusal of the gateway is a result with ``isError``, never a
protocol error: the agent sees it and can correct itself."""

from __future__ import annotations

import mcp_types as types
import orjson
from pydantic import BaseModel, ValidationError

from gateway.api.errors import validation_details
from gateway.api.routes import INV
from gateway.errors import JobgateError
from gateway.mcp.tools import RunResult
from gateway.models import InvocationRecord, Status

# The text names this many artifacts (the structured content has them all).
ARTIFACTS_IN_TEXT = 20


def cut(text: str, limit: int) -> tuple[str, bool]:
    """At most ``limit`` bytes of ``text`` as UTF-8, never half a character."""
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode(errors="ignore"), True


def run_result(record: InvocationRecord, base_url: str, limit: int) -> RunResult:
    """The record as a tool answers it, its links absolute (an agent downloads them as
    they are, with its key)."""
    public = record.public(base_url + INV)
    stdout, stdout_cut = cut(record.stdout or "", limit)
    stderr, stderr_cut = cut(record.stderr or "", limit)
    result, result_cut = record.result, False
    if result is not None and len(orjson.dumps(result)) > limit:
        result, result_cut = None, True
    return RunResult(
        id=record.id, profile=record.profile, status=record.status,
        finished=record.status.terminal, reason=record.reason, message=record.message,
        exit_code=record.exit_code, stdout=stdout, stderr=stderr,
        stdout_truncated=stdout_cut or record.stdout_truncated,
        stderr_truncated=stderr_cut or record.stderr_truncated,
        result=result, result_truncated=result_cut, result_error=record.result_error,
        artifacts=list(public.artifacts), links=public.links, run_ms=record.timings.run_ms)


def _headline(run: RunResult) -> str:
    where = f"invocation {run.id} ({run.profile})"
    if not run.finished:
        return (f"{where} is still {run.status.value} after this call's wait: call "
                f"get_invocation with id {run.id!r} (and wait_s) for its result, or "
                "cancel_invocation to stop it.")
    parts = [f"{where}: {run.status.value}"]
    if run.exit_code is not None:
        parts.append(f"exit code {run.exit_code}")
    if run.reason is not None and run.status is not Status.failed:
        parts.append(f"reason {run.reason.value}")
    if run.run_ms is not None:
        parts.append(f"ran {run.run_ms:.0f} ms")
    line = ", ".join(parts)
    return f"{line}: {run.message}" if run.message and run.status is not Status.succeeded \
        else line


def _text(run: RunResult, limit: int) -> str:
    lines = [_headline(run)]
    for name, text in (("stdout", run.stdout), ("stderr", run.stderr)):
        if text:
            lines += [f"--- {name} ---", text.rstrip("\n")]
    if run.result is not None:
        lines += ["--- result ---", orjson.dumps(run.result).decode()]
    if run.result_error:
        lines.append(f"result.json: {run.result_error}")
    for artifact in run.artifacts[:ARTIFACTS_IN_TEXT]:
        lines.append(f"artifact {artifact.name} ({artifact.size} bytes): {artifact.url}")
    if len(run.artifacts) > ARTIFACTS_IN_TEXT:
        lines.append(f"and {len(run.artifacts) - ARTIFACTS_IN_TEXT} more artifacts: "
                     f"{run.links.artifacts}")
    cut_parts = [name for name, was_cut in (("stdout", run.stdout_truncated),
                                            ("stderr", run.stderr_truncated),
                                            ("result", run.result_truncated)) if was_cut]
    if cut_parts:
        lines.append(f"[output cut: {' and '.join(cut_parts)} over {limit} bytes; the whole "
                     f"output is at {run.links.logs} (GET with the same Authorization: "
                     f"Bearer key), the result at {run.links.self}]")
    return "\n".join(lines)


def structured(model: BaseModel, text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)],
                                structured_content=model.model_dump(mode="json"),
                                is_error=is_error)


def invocation_answer(record: InvocationRecord, base_url: str, limit: int, *,
                      failure_is_error: bool = True) -> types.CallToolResult:
    """``isError`` when the invocation ended other than succeeded (the code failed, timed
    out, was cancelled...), unless ``failure_is_error`` is off (a cancel that did cancel)."""
    run = run_result(record, base_url, limit)
    failed = run.finished and run.status is not Status.succeeded
    return structured(run, _text(run, limit), is_error=failed and failure_is_error)


def refusal(error: JobgateError) -> types.CallToolResult:
    """A refusal of the gateway (bad profile, limits, queue full, not found...) in the
    words the REST API would use: its code and message, and when to try again."""
    text = f"{error.code}: {error.message}"
    if error.details is not None:
        text += f"\ndetails: {orjson.dumps(error.details, default=str).decode()}"
    if error.retry_after is not None or error.status in (429, 503):
        text += f"\nretry after {error.retry_after or 1} s"
    return tool_error(text)


def invalid_arguments(error: ValidationError) -> types.CallToolResult:
    message, details = validation_details(error)
    problems = "\n".join(f"- {'.'.join(str(p) for p in d['loc']) or 'arguments'}: "
                         f"{d['message']}" for d in details)
    return tool_error(f"InvalidInput: {message}\n{problems}")


def tool_error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)

