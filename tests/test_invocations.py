"""The invocation API over real HTTP: sync and async, the code's contract, reads, listing,
logs, artifacts, cancel, and the catalogue endpoints."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support import invoke, running_gateway, wait_until

PY = "python3.11"


def test_sync_print_returns_the_result(client: httpx.Client) -> None:
    r = invoke(client, profile=PY, code="print(1)")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "succeeded"
    assert body["exit_code"] == 0
    assert body["stdout"] == "1\n"
    assert body["stderr"] == ""
    assert body["reason"] is None
    assert body["profile"] == PY
    assert body["id"].startswith("inv_")
    for key in ("queued_ms", "start_ms", "run_ms", "total_ms"):
        assert body["timings"][key] is not None and body["timings"][key] >= 0
    assert body["created_at"] <= body["finished_at"] < body["expires_at"]


def _pool(client: httpx.Client, profile: str) -> dict:  # type: ignore[type-arg]
    return next(p for p in client.get("/v1/pools").json()["items"] if p["profile"] == profile)


def test_second_call_is_served_warm_and_the_pool_refills(client: httpx.Client) -> None:
    invoke(client, profile=PY, code="print(1)")
    wait_until(lambda: _pool(client, PY)["idle"] >= 1, timeout_s=60, message="an idle worker")
    body = invoke(client, profile=PY, code="print(2)").json()
    assert body["warm"] is True
    minimum = _pool(client, PY)["min_idle"]
    wait_until(lambda: _pool(client, PY)["idle"] >= minimum, timeout_s=60,
               message="the pool refilled to its minimum")


def test_code_contract_workspace_input_env_result_artifacts(client: httpx.Client) -> None:
    code = """
import json, os
assert os.getcwd() == os.environ["JOBGATE_WORKSPACE"]
data = json.load(open("input.json"))
assert json.loads(os.environ["JOBGATE_INPUT"]) == data
os.makedirs("artifacts/sub", exist_ok=True)
open("artifacts/report.txt", "w").write("hello")
open("artifacts/sub/data.bin", "wb").write(bytes(range(256)))
json.dump({"sum": sum(data["numbers"]), "inv": os.environ["JOBGATE_INVOCATION_ID"],
           "greeting": os.environ["GREETING"]}, open("result.json", "w"))
"""
    r = invoke(client, profile=PY, code=code, input={"numbers": [1, 2, 3]},
               env={"GREETING": "hi"})
    body = r.json()
    assert body["status"] == "succeeded", body
    assert body["result"] == {"sum": 6, "inv": body["id"], "greeting": "hi"}
    names = {a["name"]: a for a in body["artifacts"]}
    assert set(names) == {"report.txt", "sub/data.bin"}
    assert names["report.txt"]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert names["sub/data.bin"]["size"] == 256


def test_invalid_result_json_is_reported_not_fatal(client: httpx.Client) -> None:
    body = invoke(client, profile=PY, code="open('result.json','w').write('{not json')").json()
    assert body["status"] == "succeeded"
    assert body["result"] is None
    assert "not valid JSON" in body["result_error"]


def test_multi_file_entrypoint_args_and_stdin(client: httpx.Client) -> None:
    files = {"app/main.py": "import sys, helper\nprint(helper.shout(sys.stdin.read()), "
                            "sys.argv[1:])",
             "app/helper.py": "def shout(s):\n    return s.upper()"}
    body = invoke(client, profile=PY, files=files, entrypoint="app/main.py",
                  args=["--flag", "x"], stdin="quiet").json()
    assert body["status"] == "succeeded", body
    assert body["stdout"] == "QUIET ['--flag', 'x']\n"


def test_python_exception_gives_traceback_and_exit_1(client: httpx.Client) -> None:
    body = invoke(client, profile=PY, code="def f():\n    raise ValueError('boom')\nf()").json()
    assert body["status"] == "failed"
    assert body["reason"] == "NonZeroExit"
    assert body["exit_code"] == 1
    assert 'File "main.py", line 2, in f' in body["stderr"]
    assert "ValueError: boom" in body["stderr"]
    assert "runner.py" not in body["stderr"]


def test_sys_exit_code_is_kept(client: httpx.Client) -> None:
    body = invoke(client, profile=PY, code="import sys; print('x'); sys.exit(3)").json()
    assert (body["status"], body["reason"], body["exit_code"]) == ("failed", "NonZeroExit", 3)
    assert body["stdout"] == "x\n"


def test_bash_profile(client: httpx.Client) -> None:
    body = invoke(client, profile="bash", code='echo "$1-$GREETING"; echo oops >&2',
                  args=["a"], env={"GREETING": "hi"}).json()
    assert body["status"] == "succeeded", body
    assert body["stdout"] == "a-hi\n"
    assert body["stderr"] == "oops\n"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed here")
def test_node_profile(client: httpx.Client) -> None:
    code = ("const fs = require('fs'); const inp = JSON.parse(fs.readFileSync('input.json'));"
            "fs.writeFileSync('result.json', JSON.stringify({double: inp.n * 2}));"
            "console.log('ok')")
    body = invoke(client, profile="node20", code=code, input={"n": 21}).json()
    assert body["status"] == "succeeded", body
    assert body["result"] == {"double": 42}


def test_environment_is_scrubbed(client: httpx.Client) -> None:
    code = "import os, json; print(json.dumps(sorted(os.environ)))"
    body = invoke(client, profile=PY, code=code).json()
    names = set(json.loads(body["stdout"]))
    assert not any(n.startswith("AWS_") for n in names)
    assert "JOBGATE_API_KEYS" not in names and "JOBGATE_DATA_DIR" not in names
    assert {"JOBGATE_INVOCATION_ID", "JOBGATE_WORKSPACE", "PATH", "HOME"} <= names


def test_async_returns_202_then_the_result(client: httpx.Client) -> None:
    r = invoke(client, profile=PY, code="import time; time.sleep(0.3); print('late')",
               mode="async")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert r.headers["location"] == f"/v1/invocations/{body['id']}"
    final = client.get(r.headers["location"], params={"wait": 10}).json()
    assert final["status"] == "succeeded"
    assert final["stdout"] == "late\n"


def test_sync_past_its_wait_answers_202_with_location(client: httpx.Client) -> None:
    r = invoke(client, profile=PY, code="import time; time.sleep(2); print('done')", wait_s=0.3)
    assert r.status_code == 202
    location = r.headers["location"]
    assert client.get(location).json()["status"] in ("queued", "running")
    final = client.get(location, params={"wait": 10}).json()
    assert final["status"] == "succeeded" and final["stdout"] == "done\n"


def test_get_returns_the_stored_result(client: httpx.Client) -> None:
    inv = invoke(client, profile=PY, code="print('stored')").json()
    again = client.get(f"/v1/invocations/{inv['id']}").json()
    assert again["stdout"] == "stored\n"
    assert again["status"] == "succeeded"
    assert again["timings"] == inv["timings"]


def test_unknown_invocation_is_404(client: httpx.Client) -> None:
    r = client.get("/v1/invocations/inv_00000000000000000000")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "InvocationNotFound"
    assert client.get("/v1/invocations/not-an-id").status_code == 404


def test_logs_json_and_text(client: httpx.Client) -> None:
    inv = invoke(client, profile="bash", code="echo out; echo err >&2").json()
    logs = client.get(f"/v1/invocations/{inv['id']}/logs").json()
    assert (logs["stdout"], logs["stderr"]) == ("out\n", "err\n")
    text = client.get(f"/v1/invocations/{inv['id']}/logs", params={"stream": "stderr"})
    assert text.text == "err\n"
    assert text.headers["content-type"].startswith("text/plain")


def test_output_over_the_cap_is_truncated_and_flagged(client: httpx.Client) -> None:
    code = "import sys; sys.stdout.write('x' * (2 * 1024 * 1024))"
    body = invoke(client, profile=PY, code=code).json()
    assert body["status"] == "succeeded"
    assert body["stdout_truncated"] is True
    assert body["stdout_bytes"] == 2 * 1024 * 1024
    assert len(body["stdout"]) == 1024 * 1024
    assert body["stderr_truncated"] is False


def test_artifact_download_and_zip(client: httpx.Client) -> None:
    code = """
import os
os.makedirs("artifacts/d", exist_ok=True)
open("artifacts/a.txt", "w").write("alpha")
open("artifacts/d/b.bin", "wb").write(b"\\x00\\x01" * 1000)
"""
    inv = invoke(client, profile=PY, code=code).json()
    base = f"/v1/invocations/{inv['id']}/artifacts"
    listing = client.get(base).json()["items"]
    assert sorted(a["name"] for a in listing) == ["a.txt", "d/b.bin"]
    r = client.get(base + "/a.txt", follow_redirects=True)
    assert r.status_code == 200 and r.content == b"alpha"
    r = client.get(base + "/d/b.bin", follow_redirects=True)
    assert r.content == b"\x00\x01" * 1000
    assert client.get(base + "/missing.txt").status_code == 404
    z = client.get(f"/v1/invocations/{inv['id']}/artifacts.zip")
    assert z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        assert sorted(zf.namelist()) == ["a.txt", "d/b.bin"]
        assert zf.read("a.txt") == b"alpha"
        assert zf.read("d/b.bin") == b"\x00\x01" * 1000


def test_symlinked_artifact_is_not_followed(client: httpx.Client) -> None:
    code = "import os; os.symlink('/etc/passwd', 'artifacts/passwd'); print('linked')"
    body = invoke(client, profile=PY, code=code).json()
    assert body["status"] == "succeeded"
    assert body["artifacts"] == []


def test_list_filters_and_cursor_paging(client: httpx.Client) -> None:
    marker = f"p{time.monotonic_ns()}"
    ids = [invoke(client, profile="bash", code=f"echo {marker}").json()["id"]
           for _ in range(5)]
    failed = invoke(client, profile="bash", code="exit 4").json()["id"]
    page = client.get("/v1/invocations", params={"limit": 3, "profile": "bash"}).json()
    assert len(page["items"]) == 3
    assert page["items"][0]["id"] == failed  # newest first
    seen = [i["id"] for i in page["items"]]
    page2 = client.get("/v1/invocations", params={"limit": 3, "profile": "bash",
                                                  "cursor": page["next_cursor"]}).json()
    seen += [i["id"] for i in page2["items"]]
    assert seen[:6] == [failed, *reversed(ids)]
    only_failed = client.get("/v1/invocations", params={"status": "failed", "limit": 200})
    assert failed in [i["id"] for i in only_failed.json()["items"]]
    assert all(i["status"] == "failed" for i in only_failed.json()["items"])
    bad = client.get("/v1/invocations", params={"status": "bogus"})
    assert bad.status_code == 422


def test_cancel_mid_run(client: httpx.Client) -> None:
    r = invoke(client, profile=PY, code="import time; print('start', flush=True); "
               "time.sleep(30)", mode="async")
    inv_id = r.json()["id"]
    deadline = time.monotonic() + 10
    while client.get(f"/v1/invocations/{inv_id}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    body = client.post(f"/v1/invocations/{inv_id}/cancel").json()
    assert time.monotonic() - started < 5
    assert (body["status"], body["reason"]) == ("cancelled", "Cancelled"), body["message"]
    again = client.post(f"/v1/invocations/{inv_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "AlreadyFinished"


def test_profiles_pools_health_ready(client: httpx.Client) -> None:
    profiles = {p["name"]: p for p in client.get("/v1/profiles").json()["items"]}
    assert {PY, "bash"} <= set(profiles)
    p = profiles[PY]
    for field in ("image", "default_entrypoint", "max_timeout_s", "max_memory_mb",
                  "max_cpu", "pool", "network"):
        assert field in p
    pools = {p["profile"]: p for p in client.get("/v1/pools").json()["items"]}
    assert pools[PY]["executor"] in ("local", "kubernetes")
    assert pools[PY]["idle"] + pools[PY]["starting"] >= 1
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_metrics_exposes_invocations_phases_and_pools(client: httpx.Client) -> None:
    invoke(client, profile=PY, code="print(1)")
    text = client.get("/metrics").text
    assert 'jobgate_invocations_total{mode="sync",profile="python3.11",status="succeeded"}' \
        in text
    for phase in ("queue", "start", "run", "total"):
        assert f'jobgate_invocation_phase_seconds_count{{phase="{phase}",profile="python3.11"}}' \
            in text
    assert 'jobgate_worker_starts_total{kind="warm",profile="python3.11"}' in text
    assert 'jobgate_pool_workers{profile="python3.11",state="idle"}' in text
    assert 'jobgate_http_requests_total{method="POST",route="create_invocation"' in text


def test_openapi_is_generated_from_the_models(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/invocations" in doc["paths"]
    create = doc["components"]["schemas"]["InvocationCreate"]
    assert create["required"] == ["profile"]
    assert set(create["properties"]) >= {"code", "files", "mode", "callback", "timeout_s"}
    assert create.get("additionalProperties") is False
    # What is answered, not what is stored (tests/test_openapi_contract.py checks the rest).
    assert "tenant" not in doc["components"]["schemas"]["Invocation"]["properties"]
    assert "InvocationRecord" not in doc["components"]["schemas"]


def test_small_output_is_kept_in_the_record_and_large_output_beside_it(
        tmp_path: Path) -> None:
    """One object to write and to read for the usual small output; output over 16 KiB in
    objects of its own. Either way the API gives back the same bytes."""
    with running_gateway(tmp_path) as gw, gw.client() as c:
        small = invoke(c, profile=PY, code="import sys; print('out'); "
                                            "print('err', file=sys.stderr)").json()
        large = invoke(c, profile=PY, code="print('x' * 40000)").json()
        for body, stdout, stderr in ((small, "out\n", "err\n"), (large, "x" * 40000 + "\n", "")):
            got = c.get(f"/v1/invocations/{body['id']}").json()
            assert (got["stdout"], got["stderr"]) == (stdout, stderr)
            logs = c.get(f"/v1/invocations/{body['id']}/logs").json()
            assert (logs["stdout"], logs["stderr"]) == (stdout, stderr)
            assert c.get(f"/v1/invocations/{body['id']}/logs",
                         params={"stream": "stdout"}).text == stdout
        objects = gw.data_dir / "objects" / "tenant-a"
        assert sorted(p.name for p in (objects / small["id"]).iterdir()) == ["record.json"]
        assert {"stdout", "stderr"} <= {p.name for p in (objects / large["id"]).iterdir()}
