"""The jobgate CLI end to end against a real gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support import KEY_A, KEY_B, ROOT, GatewayProcess, running_gateway


def jobgate(gateway: GatewayProcess, *args: str, stdin: str | None = None,
            cwd: Path | None = None, key: str = KEY_A) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBGATE_URL": gateway.url, "JOBGATE_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", *args], cwd=cwd or ROOT,
                          env=env, input=stdin, capture_output=True, text=True, timeout=60)


def test_invoke_prints_output_and_exits_with_the_code(gateway: GatewayProcess,
                                                      tmp_path: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("import sys, json\nprint('out', sys.argv[1:])\n"
                      "print('err', file=sys.stderr)\n"
                      "print(json.load(open('input.json')))\nsys.exit(7)\n")
    p = jobgate(gateway, "invoke", str(script), "--input", '{"k": 1}', "--", "a", "b")
    assert p.returncode == 7
    assert p.stdout == "out ['a', 'b']\n{'k': 1}\n"
    assert p.stderr == "err\n"


def test_invoke_bash_by_extension_and_timeout(gateway: GatewayProcess, tmp_path: Path) -> None:
    script = tmp_path / "slow.sh"
    script.write_text("echo before; sleep 10")
    p = jobgate(gateway, "invoke", str(script), "--timeout", "1")
    assert p.returncode == 124
    assert p.stdout == "before\n"
    assert "timeout" in p.stderr


def test_async_then_get_logs_list_artifacts_cancel(gateway: GatewayProcess,
                                                   tmp_path: Path) -> None:
    script = tmp_path / "art.py"
    script.write_text("open('artifacts/out.txt','w').write('artifact!'); print('logged')")
    p = jobgate(gateway, "invoke", str(script), "--async")
    assert p.returncode == 0, p.stderr
    inv_id = p.stdout.strip()
    assert inv_id.startswith("inv_")
    got = jobgate(gateway, "get", inv_id)
    assert got.returncode == 0 and inv_id in got.stdout
    import json
    import time

    for _ in range(100):
        if json.loads(jobgate(gateway, "get", inv_id).stdout)["status"] == "succeeded":
            break
        time.sleep(0.1)
    logs = jobgate(gateway, "logs", inv_id)
    assert logs.stdout == "logged\n"
    assert inv_id in jobgate(gateway, "list", "--limit", "50").stdout
    out = tmp_path / "downloads"
    arts = jobgate(gateway, "artifacts", inv_id, "--out", str(out))
    assert arts.returncode == 0, arts.stderr
    assert (out / "out.txt").read_text() == "artifact!"
    cancelled = jobgate(gateway, "cancel", inv_id)
    assert cancelled.returncode == 2 and "AlreadyFinished" in cancelled.stderr


def test_errors_are_one_line_not_tracebacks(gateway: GatewayProcess, tmp_path: Path) -> None:
    script = tmp_path / "x.cobol"
    script.write_text("DISPLAY 'HI'.")
    p = jobgate(gateway, "invoke", str(script))
    assert p.returncode == 2 and "--profile" in p.stderr
    p = jobgate(gateway, "invoke", str(script), "--profile", "cobol")
    assert p.returncode == 2 and "ProfileNotFound" in p.stderr
    assert "Traceback" not in p.stderr
    env = {**os.environ, "JOBGATE_URL": "http://127.0.0.1:9", "JOBGATE_API_KEY": KEY_A}
    p = subprocess.run([sys.executable, "-m", "gateway.cli.main", "get", "inv_x"], env=env,
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert p.returncode == 2 and "cannot reach the gateway" in p.stderr


def test_keys_new_prints_a_working_config_line(gateway: GatewayProcess) -> None:
    p = jobgate(gateway, "keys", "new", "team-x")
    key = p.stdout.splitlines()[0].split()[-1]
    line = p.stdout.splitlines()[1].split("=", 1)[1]
    h = jobgate(gateway, "keys", "hash", key).stdout.strip()
    assert line == f"team-x:{h}"


def test_serve_refuses_an_invalid_setting_by_its_variable() -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")},
           "JOBGATE_K8S_RUNNER_PORT": "99999"}
    p = subprocess.run([sys.executable, "-m", "gateway.cli.main", "serve"], env=env,
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "JOBGATE_K8S_RUNNER_PORT='99999': Input should be less than or equal to 65535" \
        in p.stderr


def test_the_cli_has_no_http_client_of_its_own() -> None:
    source = (ROOT / "gateway" / "cli" / "main.py").read_text()
    assert "import httpx" not in source and "from gateway.client import" in source


def test_list_across_pages_says_when_there_are_more(gateway: GatewayProcess,
                                                    tmp_path: Path) -> None:
    script = tmp_path / "n.sh"
    script.write_text("echo $1")
    ids = [jobgate(gateway, "invoke", str(script), "--async", "--", str(i)).stdout.strip()
           for i in range(4)]
    listed = jobgate(gateway, "list", "--limit", "3", "--profile", "bash")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ids[:0:-1]
    assert all(line.split()[2] == "bash" for line in listed.stdout.splitlines())
    assert "# more: --limit 6" in listed.stderr
    bogus = jobgate(gateway, "list", "--status", "bogus")
    assert bogus.returncode == 2 and "HTTP 422: InvalidInput" in bogus.stderr


def test_artifacts_listing_and_a_refused_key(gateway: GatewayProcess, tmp_path: Path) -> None:
    script = tmp_path / "arts.py"
    script.write_text("open('artifacts/r.txt', 'w').write('report')")
    inv_id = jobgate(gateway, "invoke", str(script), "--async").stdout.strip()
    env = {**os.environ, "JOBGATE_URL": gateway.url, "JOBGATE_API_KEY": KEY_A}
    subprocess.run([sys.executable, "-c", "import sys; from gateway.client import Client; "
                    "Client().wait(sys.argv[1], 30)", inv_id], env=env, check=True,
                   timeout=60, cwd=ROOT)
    listed = jobgate(gateway, "artifacts", inv_id)
    assert listed.returncode == 0 and listed.stdout.split()[0] == "6"
    assert listed.stdout.split()[-1] == "r.txt"
    env["JOBGATE_API_KEY"] = "jg_not_a_key_0123456789"
    p = subprocess.run([sys.executable, "-m", "gateway.cli.main", "get", inv_id], env=env,
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "HTTP 401: Unauthorized" in p.stderr
    assert "Traceback" not in p.stderr


def _first_line_then_rest(gateway: GatewayProcess, *args: str) -> tuple[int, str, str, float]:
    """Runs the CLI: its first stdout line, when it came before the end (seconds), and the
    exit code, the rest of stdout, all of stderr."""
    env = {**os.environ, "JOBGATE_URL": gateway.url, "JOBGATE_API_KEY": KEY_A}
    started = time.monotonic()
    with subprocess.Popen([sys.executable, "-m", "gateway.cli.main", *args], env=env,
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as p:
        assert p.stdout is not None
        assert p.stdout.readline() == "first\n"
        first_at = time.monotonic() - started
        out, err = p.communicate(timeout=60)
        ended_at = time.monotonic() - started
    return p.returncode, out, err, ended_at - first_at


def test_invoke_prints_the_output_as_it_comes(gateway: GatewayProcess,
                                              tmp_path: Path) -> None:
    script = tmp_path / "slow.sh"
    script.write_text("echo first; sleep 2; echo second; echo oops >&2; exit 5")
    code, out, err, before_end = _first_line_then_rest(gateway, "invoke", str(script))
    assert (code, out, err) == (5, "second\n", "oops\n")
    assert before_end >= 1.0  # the first line came before the code ended


def test_logs_follow_prints_the_output_as_it_comes(gateway: GatewayProcess,
                                                   tmp_path: Path) -> None:
    """`jobgate logs -f`: each line as the code writes it (GET …/logs?follow=true), the
    first long before the code ends; the exit status is the code's."""
    script = tmp_path / "f.sh"
    # The code waits before its first line so that the follower (a new CLI process, which
    # takes a while to start) is following by then: a line written before it connects
    # comes all at once at connect, which says nothing about following.
    script.write_text("sleep 3; echo first; sleep 3; echo second >&2; exit 3")
    inv_id = jobgate(gateway, "invoke", str(script), "--async").stdout.strip()
    code, out, err, before_end = _first_line_then_rest(gateway, "logs", "-f", inv_id)
    assert (code, out, err) == (3, "", "second\n")
    assert before_end >= 1.5  # the first line came before the code ended


def test_usage_prints_this_tenant_and_every_tenant_for_an_operator(tmp_path: Path) -> None:
    limits = '{"tenants": {"tenant-a": {"max_queued": 7, "weight": 3}}}'
    with running_gateway(tmp_path, JOBGATE_OPERATOR_TENANTS="tenant-b",
                         JOBGATE_TENANT_LIMITS=limits) as gw:
        mine = jobgate(gw, "usage")
        assert mine.returncode == 0, mine.stderr
        header, row = mine.stdout.splitlines()
        assert header.split()[:3] == ["tenant", "running", "queued"]
        assert row.split() == ["tenant-a", "0", "0", "-", "7", "-", "-", "604800", "3"]
        refused = jobgate(gw, "usage", "--all")
        assert refused.returncode == 2 and "JOBGATE_OPERATOR_TENANTS" in refused.stderr
        every = jobgate(gw, "usage", "--all", key=KEY_B)
        assert every.returncode == 0, every.stderr
        assert [line.split()[0] for line in every.stdout.splitlines()[1:]] == [
            "tenant-a", "tenant-b"]
