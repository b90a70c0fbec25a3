"""The MCP front door end to end, driven by the official SDK's own clients: its streamable
HTTP client against the gateway's /mcp, and its stdio client spawning `jobgate mcp`, which
forwards to that /mcp. Each test runs against the session gateway of every configuration,
with the profiles that gateway serves."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from gateway.config.settings import McpSettings
from tests.backends import RUNNING
from tests.support import KEY_A, KEY_B, ROOT, GatewayProcess, running_gateway

OUTPUT_MAX = McpSettings.model_fields["output_max_bytes"].default
HELLO = {  # per language: a program that prints its argument and writes result.json
    "python": "import json, sys\nprint('hello', sys.argv[1])\n"
              "json.dump({'ok': True}, open('result.json', 'w'))\n",
    "bash": 'echo hello "$1"\necho \'{"ok": true}\' > result.json\n',
    "javascript": "console.log('hello', process.argv[2]);\n"
                  "require('fs').writeFileSync('result.json', '{\"ok\": true}');\n",
}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "test", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}


@asynccontextmanager
async def mcp_http(gateway: GatewayProcess, key: str | None = KEY_A,
                   mode: str = "auto") -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (httpx2.AsyncClient(headers=headers, timeout=120) as http,
                Client(streamable_http_client(gateway.url + "/mcp", http_client=http),
                       mode=mode) as client):
        yield client


def stdio_params(gateway: GatewayProcess, key: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "gateway.cli.main", "mcp"], cwd=str(ROOT),
        env={"JOBGATE_URL": gateway.url, "JOBGATE_API_KEY": key})


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def run_to_end(client: Client, **arguments: Any) -> CallToolResult:
    """run_code, then get_invocation until it ends (a cold start on Kubernetes may take
    longer than one call's wait)."""
    result = await client.call_tool("run_code", arguments)
    for _ in range(10):
        assert result.structured_content is not None, text_of(result)
        if result.structured_content["finished"]:
            return result
        result = await client.call_tool(
            "get_invocation", {"id": result.structured_content["id"], "wait_s": 20})
    raise AssertionError(f"not finished: {result}")


def served_profiles(gateway: GatewayProcess) -> dict[str, str]:
    with gateway.client() as http:
        return {p["name"]: p["language"] for p in http.get("/v1/profiles").json()["items"]}


def runnable(gateway: GatewayProcess) -> list[tuple[str, str]]:
    """The profiles every test configuration runs code in, as this gateway serves them."""
    profiles = [(name, language) for name, language in served_profiles(gateway).items()
                if name in RUNNING and language in HELLO]
    assert profiles, "the gateway serves none of the test profiles"
    return profiles


def python_profile(gateway: GatewayProcess) -> str:
    return next(name for name, language in runnable(gateway) if language == "python")


# -- tools/list ----------------------------------------------------------------------------


async def test_the_tools_are_listed_with_their_schemas(gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"run_code", "list_profiles", "get_invocation", "cancel_invocation"}
    run_code = tools["run_code"]
    assert run_code.input_schema["required"] == ["profile"]
    assert run_code.input_schema["properties"]["profile"]["enum"] == \
        sorted(served_profiles(gateway))
    assert run_code.output_schema is not None
    assert {"exit_code", "stdout", "stderr", "result", "artifacts"} <= \
        set(run_code.output_schema["properties"])


async def test_list_profiles_names_what_the_gateway_serves(gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as client:
        result = await client.call_tool("list_profiles", {})
    assert not result.is_error
    assert result.structured_content is not None
    got = {p["name"]: p["language"] for p in result.structured_content["profiles"]}
    assert got == served_profiles(gateway)
    assert all(name in text_of(result) for name in got)


# -- run_code ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_run_code_in_each_profile(gateway: GatewayProcess, mode: str) -> None:
    """The 2026-07-28 era (the SDK's default) and the initialize handshake alike."""
    async with mcp_http(gateway, mode=mode) as client:
        for profile, language in runnable(gateway):
            result = await run_to_end(client, profile=profile, code=HELLO[language],
                                      args=["world"])
            run = result.structured_content
            assert run is not None
            assert not result.is_error, text_of(result)
            assert (run["status"], run["exit_code"], run["profile"]) == \
                ("succeeded", 0, profile)
            assert run["stdout"] == "hello world\n"
            assert run["result"] == {"ok": True}
            assert "hello world" in text_of(result) and run["id"] in text_of(result)


async def test_a_nonzero_exit_is_a_tool_error_with_the_output(
        gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as client:
        result = await run_to_end(
            client, profile=python_profile(gateway),
            code="import sys\nprint('partial')\nprint('boom', file=sys.stderr)\nsys.exit(3)")
    assert result.is_error
    run = result.structured_content
    assert run is not None
    assert (run["status"], run["reason"], run["exit_code"]) == ("failed", "NonZeroExit", 3)
    assert (run["stdout"], run["stderr"]) == ("partial\n", "boom\n")
    assert "exit code 3" in text_of(result) and "boom" in text_of(result)


async def test_a_timeout_is_a_tool_error(gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as client:
        result = await run_to_end(client, profile=python_profile(gateway),
                                  code="import time\nprint('started', flush=True)\n"
                                       "time.sleep(60)", timeout_s=1)
    assert result.is_error
    run = result.structured_content
    assert run is not None
    assert (run["status"], run["reason"]) == ("timeout", "Timeout")
    assert "timeout" in text_of(result)


async def test_refusals_are_tool_errors_not_protocol_errors(gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as client:
        bad_profile = await client.call_tool("run_code", {"profile": "no-such", "code": "x"})
        both = await client.call_tool("run_code", {"profile": python_profile(gateway),
                                                   "code": "print(1)", "files": {"a": "b"}})
        unknown = await client.call_tool("run_code", {"profile": python_profile(gateway),
                                                      "code": "1", "callback": {"url": "x"}})
        too_long = await client.call_tool("run_code", {"profile": python_profile(gateway),
                                                       "code": "1", "timeout_s": 10**6})
        with pytest.raises(MCPError, match="unknown tool"):
            await client.call_tool("no_such_tool", {})
    assert bad_profile.is_error and "ProfileNotFound" in text_of(bad_profile)
    assert both.is_error and "InvalidInput" in text_of(both)
    assert unknown.is_error and "callback" in text_of(unknown)
    assert too_long.is_error and "timeout_s" in text_of(too_long)


async def test_output_over_the_cap_is_cut_and_says_where_the_rest_is(
        gateway: GatewayProcess) -> None:
    size = 5 * OUTPUT_MAX
    async with mcp_http(gateway) as client:
        result = await run_to_end(client, profile=python_profile(gateway),
                                  code=f"import sys\nsys.stdout.write('é' * {size // 2})\n"
                                       "print('short', file=sys.stderr)")
    run = result.structured_content
    assert run is not None and not result.is_error
    assert run["stdout_truncated"] and not run["stderr_truncated"]
    assert len(run["stdout"].encode()) <= OUTPUT_MAX
    assert set(run["stdout"]) == {"é"}  # cut between characters, never inside one
    assert run["stderr"] == "short\n"
    text = text_of(result)
    assert len(text.encode()) < 2 * OUTPUT_MAX
    assert "output cut" in text and run["links"]["logs"] in text
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        logs = (await http.get(run["links"]["logs"])).json()
    assert logs["stdout"] == "é" * (size // 2)


async def test_an_artifact_link_downloads_with_the_key(gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as client:
        result = await run_to_end(client, profile=python_profile(gateway),
                                  code="open('artifacts/report.txt', 'w').write('the report')")
    run = result.structured_content
    assert run is not None and not result.is_error
    [artifact] = run["artifacts"]
    assert artifact["name"] == "report.txt" and artifact["url"] in text_of(result)
    assert artifact["url"].startswith(gateway.url + "/v1/invocations/")
    async with httpx.AsyncClient(follow_redirects=True) as http:
        got = await http.get(artifact["url"], headers={"Authorization": f"Bearer {KEY_A}"})
        refused = await http.get(artifact["url"],
                                 headers={"Authorization": f"Bearer {KEY_B}"})
    assert (got.status_code, got.content) == (200, b"the report")
    assert refused.status_code == 404


# -- calls that outlive the tool call ------------------------------------------------------


async def test_a_run_past_its_wait_answers_its_id_then_get_invocation_has_it(
        gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as client:
        first = await client.call_tool("run_code", {
            "profile": python_profile(gateway), "wait_s": 0.5,
            "code": "import time\ntime.sleep(3)\nprint('late')"})
        run = first.structured_content
        assert run is not None and not first.is_error
        assert not run["finished"] and run["status"] in ("queued", "running")
        assert "get_invocation" in text_of(first)
        done = run
        for _ in range(10):
            later = await client.call_tool("get_invocation", {"id": run["id"], "wait_s": 10})
            assert later.structured_content is not None
            done = later.structured_content
            if done["finished"]:
                break
    assert (done["id"], done["status"], done["stdout"]) == (run["id"], "succeeded", "late\n")


async def test_cancel_invocation_stops_a_run(gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as client:
        first = await client.call_tool("run_code", {
            "profile": python_profile(gateway), "wait_s": 0.5,
            "code": "import time\ntime.sleep(60)"})
        assert first.structured_content is not None
        inv = first.structured_content["id"]
        cancelled = await client.call_tool("cancel_invocation", {"id": inv})
        again = await client.call_tool("cancel_invocation", {"id": inv})
    assert not cancelled.is_error, text_of(cancelled)
    assert cancelled.structured_content is not None
    assert cancelled.structured_content["status"] == "cancelled"
    assert again.is_error and "AlreadyFinished" in text_of(again)


async def test_another_tenant_cannot_see_or_cancel_an_invocation(
        gateway: GatewayProcess) -> None:
    async with mcp_http(gateway, KEY_A) as client_a:
        mine = await run_to_end(client_a, profile=python_profile(gateway),
                                code="print('secret of tenant a')")
    assert mine.structured_content is not None
    inv = mine.structured_content["id"]
    async with mcp_http(gateway, KEY_B) as client_b:
        seen = await client_b.call_tool("get_invocation", {"id": inv})
        cancel = await client_b.call_tool("cancel_invocation", {"id": inv})
        garbage = await client_b.call_tool("get_invocation", {"id": "../../etc/passwd"})
    for result in (seen, cancel, garbage):
        assert result.is_error and result.structured_content is None
        assert "InvocationNotFound" in text_of(result)
        assert "secret" not in text_of(result)


# -- who may connect -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["jg_wrong_key_0123456789", None])
async def test_a_wrong_or_missing_key_is_refused_before_the_mcp_layer(
        gateway: GatewayProcess, key: str | None) -> None:
    headers = {**MCP_HEADERS, **({"Authorization": f"Bearer {key}"} if key else {})}
    async with httpx.AsyncClient() as http:
        answer = await http.post(gateway.url + "/mcp", json=INITIALIZE, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["error"]["data"]["error"]["code"] == "Unauthorized"
    with pytest.raises(ExceptionGroup) as refused:  # from the client's task group
        async with mcp_http(gateway, key):
            pass
    assert refused.group_contains(MCPError, match="^Unauthorized: ", depth=None)


@pytest.mark.parametrize(("header", "value", "status"), [
    ("Host", "evil.example", 421), ("Host", "evil.example:8080", 421),
    ("Origin", "http://evil.example", 403), ("Origin", "http://127.0.0.1:9", 200)])
async def test_host_and_origin_are_checked(gateway: GatewayProcess, header: str, value: str,
                                           status: int) -> None:
    """The gateway binds loopback: the loopback names and origins only (DNS rebinding)."""
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {KEY_A}", header: value}
    async with httpx.AsyncClient() as http:
        answer = await http.post(gateway.url + "/mcp", json=INITIALIZE, headers=headers)
    assert answer.status_code == status, answer.text


async def test_mcp_and_mcp_slash_are_the_same_endpoint(gateway: GatewayProcess) -> None:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient() as http:
        for path in ("/mcp", "/mcp/"):
            answer = await http.post(gateway.url + path, json=INITIALIZE, headers=headers)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.json()["result"]["serverInfo"]["name"] == "jobgate"


# -- jobgate mcp: the same tools over stdio ------------------------------------------------


async def test_stdio_serves_the_gateways_tools(gateway: GatewayProcess) -> None:
    async with mcp_http(gateway) as http_client:
        over_http = (await http_client.list_tools()).tools
    async with Client(stdio_params(gateway, KEY_A)) as client:
        over_stdio = (await client.list_tools()).tools
        result = await run_to_end(client, profile=python_profile(gateway),
                                  code=HELLO["python"], args=["stdio"])
        failed = await client.call_tool("run_code", {"profile": python_profile(gateway),
                                                     "code": "raise SystemExit(5)"})
    assert [t.model_dump() for t in over_stdio] == [t.model_dump() for t in over_http]
    assert result.structured_content is not None and not result.is_error
    assert result.structured_content["stdout"] == "hello stdio\n"
    assert failed.is_error and failed.structured_content is not None
    assert failed.structured_content["exit_code"] == 5


async def test_stdio_keeps_tenants_apart(gateway: GatewayProcess) -> None:
    async with Client(stdio_params(gateway, KEY_A)) as client_a:
        mine = await run_to_end(client_a, profile=python_profile(gateway), code="print(1)")
    assert mine.structured_content is not None
    async with Client(stdio_params(gateway, KEY_B)) as client_b:
        seen = await client_b.call_tool("get_invocation",
                                        {"id": mine.structured_content["id"]})
    assert seen.is_error and "InvocationNotFound" in text_of(seen)


async def test_stdio_says_when_the_gateway_is_away_and_serves_it_when_back(
        tmp_path: Path) -> None:
    """Each call is a connection of its own to the stateless /mcp: a gateway restarted
    (or another replica at the same URL) serves the next call."""
    import asyncio

    gw = GatewayProcess(tmp_path / "data")
    await asyncio.to_thread(gw.start)
    try:
        async with Client(stdio_params(gw, KEY_A)) as client:
            await asyncio.to_thread(gw.stop)
            away = await client.call_tool("list_profiles", {})
            await asyncio.to_thread(gw.start)
            back = await client.call_tool("list_profiles", {})
    finally:
        await asyncio.to_thread(gw.stop)
    assert away.is_error and "GatewayError: no answer from the gateway" in text_of(away)
    assert "ConnectError" in text_of(away)
    assert not back.is_error and back.structured_content is not None


def test_stdio_with_a_wrong_key_exits_saying_why(gateway: GatewayProcess) -> None:
    import subprocess

    env = {**os.environ, "JOBGATE_URL": gateway.url, "JOBGATE_API_KEY": "jg_wrong_0123456789"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli.main", "mcp"], cwd=ROOT,
                          env=env, input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""  # stdout is the protocol's
    assert "Unauthorized: invalid API key" in done.stderr


# -- the docs' examples, as printed --------------------------------------------------------


def doc_examples() -> list[tuple[str, str]]:
    """The (language, code) blocks docs/mcp.md marks as run by this file."""
    import re

    text = (ROOT / "docs" / "mcp.md").read_text()
    found = re.findall(r"<!-- run by tests/test_mcp.py -->\n```(\w+)\n(.*?)```", text,
                       flags=re.DOTALL)
    assert len(found) == 2, found
    return found


@pytest.mark.parametrize("example", doc_examples(), ids=lambda e: e[0])
def test_the_docs_examples_run_as_printed(gateway: GatewayProcess,
                                          example: tuple[str, str]) -> None:
    import json
    import subprocess

    language, code = example
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-c", code]
    env = {**os.environ, "JOBGATE_URL": gateway.url, "JOBGATE_API_KEY": KEY_A}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if language == "python":
        assert done.stdout == "42\n"
    else:
        answer = json.loads(done.stdout)["result"]
        assert not answer["isError"] and answer["structuredContent"]["stdout"] == "42\n"
        assert "--- stdout ---\n42" in answer["content"][0]["text"]


# -- its settings --------------------------------------------------------------------------


def test_the_mcp_settings_are_obeyed(tmp_path: Path) -> None:
    """Allowed hosts replace the loopback names; the output cap is the one set."""
    import json

    with running_gateway(tmp_path, JOBGATE_MCP_ALLOWED_HOSTS="mcp.example:*",
                         JOBGATE_MCP_OUTPUT_MAX_BYTES="1000") as gw:
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {KEY_A}"}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "run_code", "arguments": {"profile": "python3.11",
                                              "code": "print('x' * 5000)"}}}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=60) as http:
            loopback = http.post("/mcp", json=INITIALIZE)
            named = http.post("/mcp", json=call, headers={"Host": "mcp.example:8080"})
        assert loopback.status_code == 421
        assert named.status_code == 200, named.text
        run = json.loads(named.text)["result"]["structuredContent"]
        assert run["stdout"] == "x" * 1000 and run["stdout_truncated"]
        assert run["links"]["logs"].startswith("http://mcp.example:8080/v1/invocations/")


def test_mcp_can_be_turned_off(tmp_path: Path) -> None:
    with running_gateway(tmp_path, JOBGATE_MCP_ENABLED="false") as gw, gw.client() as http:
        assert http.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS).status_code == 404
        assert http.get("/v1/profiles").status_code == 200


def test_the_gateway_loads_the_mcp_sdk_only_when_mcp_is_called() -> None:
    """The SDK costs ~0.35 s of imports and ~27 MB: a gateway nobody calls over MCP does
    not pay for it (the endpoint imports it on the first /mcp request)."""
    probe = ("import sys\nfrom gateway.api.app import create_app\n"
             "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
