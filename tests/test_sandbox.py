"""The local executor's sandbox, attacked through the API as a hostile tenant would.

Each test runs a real escape attempt found against the unsandboxed executor (issue 9's
table, row by row) on python3.11, bash and node20, with a canary secret where the attack
is about reading something, and asserts that it no longer works."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, GatewayProcess, invoke, running_gateway, wait_until

pytestmark = pytest.mark.local_only

# The same attack in each language: (profile, code). ``{target}`` is filled in.
LINK_ARTIFACTS = {
    "python3.11": "import os, shutil\nshutil.rmtree('artifacts')\n"
                  "os.symlink({target!r}, 'artifacts')\nprint('linked')",
    "bash": "rm -rf artifacts && ln -s {target!r} artifacts && echo linked",
    "node20": "const fs = require('fs'); fs.rmSync('artifacts', {{recursive: true}});\n"
              "fs.symlinkSync({target_js}, 'artifacts'); console.log('linked')",
}


def _fill(code: str, target: str) -> str:
    return code.format(target=target, target_js=json.dumps(target))


def _ok(body: dict[str, Any]) -> dict[str, Any]:
    assert body["status"] == "succeeded", body
    return body


def _artifact_bytes(client: httpx.Client, body: dict[str, Any]) -> bytes:
    data = b""
    for art in body["artifacts"]:
        r = client.get(art["url"], follow_redirects=True)
        data += r.content
    return data


def _plant_canary(gateway: GatewayProcess) -> str:
    canary = f"CANARY-{uuid.uuid4().hex}"
    (gateway.data_dir / "canary-secret").write_text(canary)
    return canary


# -- row 1: a link where the runner reads the code's outputs ---------------------------


@pytest.mark.parametrize("profile", list(LINK_ARTIFACTS))
@pytest.mark.parametrize("where", ["data-dir", "etc", "workspaces"])
def test_artifacts_linked_elsewhere_are_not_collected(
        client: httpx.Client, client_b: httpx.Client, gateway: GatewayProcess,
        profile: str, where: str) -> None:
    canary = _plant_canary(gateway)
    workspaces = gateway.data_dir / "workspaces"
    if not workspaces.exists():  # an unsandboxed gateway with a private data dir
        workspaces = _old_fallback_root(gateway.data_dir)
    target = {"data-dir": str(gateway.data_dir), "etc": "/etc",
              "workspaces": str(workspaces)}[where]
    victim = None
    if where == "workspaces":
        # Another tenant's call is running, its input (with the canary) in its workspace.
        victim = invoke(client_b, profile="bash", mode="async", input={"secret": canary},
                        code="sleep 3").json()
        wait_until(lambda: client_b.get(f"/v1/invocations/{victim['id']}").json()["status"]
                   == "running", timeout_s=15)
    body = _ok(invoke(client, profile=profile, code=_fill(LINK_ARTIFACTS[profile], target))
               .json())
    assert "linked" in body["stdout"]
    assert body["artifacts"] == []
    assert canary.encode() not in _artifact_bytes(client, body)
    if victim is not None:
        client_b.get(f"/v1/invocations/{victim['id']}", params={"wait": 20})


@pytest.mark.parametrize("profile", ["python3.11", "bash"])
def test_links_and_hard_links_inside_artifacts_are_not_collected(
        client: httpx.Client, gateway: GatewayProcess, profile: str) -> None:
    canary = _plant_canary(gateway)
    secret = str(gateway.data_dir / "canary-secret")
    code = {
        "python3.11": f"import os\nos.symlink({secret!r}, 'artifacts/sym')\n"
                      f"os.symlink('/etc/shadow', 'artifacts/shadow')\n"
                      f"try:\n    os.link('/etc/passwd', 'artifacts/hard')\n"
                      f"except OSError as e:\n    print('link refused', e.errno)\n"
                      f"open('artifacts/real.txt', 'w').write('mine')",
        "bash": f"ln -s {secret} artifacts/sym; ln -s /etc/shadow artifacts/shadow; "
                f"ln /etc/passwd artifacts/hard 2>/dev/null || echo 'link refused'; "
                f"echo -n mine > artifacts/real.txt",
    }[profile]
    body = _ok(invoke(client, profile=profile, code=code).json())
    assert [a["name"] for a in body["artifacts"]] == ["real.txt"]
    data = _artifact_bytes(client, body)
    assert data == b"mine"
    assert canary.encode() not in data


def test_another_calls_workspace_cannot_be_read(client: httpx.Client,
                                                client_b: httpx.Client,
                                                gateway: GatewayProcess) -> None:
    """Tenant B's running call holds a secret in its input, stdin and files; tenant A
    points its artifacts at every place B's workspace could be."""
    secret = f"TENANT-B-{uuid.uuid4().hex}"
    # The attacker's own files must not hold the secret: it gets it reversed.
    hidden = secret[::-1]
    victim = invoke(client_b, profile="bash", mode="async", stdin=secret,
                    input={"secret": secret}, files={"main.sh": f"# {secret}\nsleep 4"}).json()
    wait_until(lambda: client_b.get(f"/v1/invocations/{victim['id']}").json()["status"]
               == "running", timeout_s=15)
    # Everything the code can read but the read-only system directories and /proc
    # (row 5 has its own test), plus where the victim's workspace is on the host.
    code = ("import os\n"
            f"roots = [{str(gateway.data_dir / 'workspaces')!r}, '/']\n"
            "skip = {'/usr', '/proc', '/sys', '/root', '/lib', '/lib64', '/bin', '/sbin'}\n"
            "found = []\n"
            "for root in roots:\n"
            "    for dirpath, dirs, files in os.walk(root):\n"
            "        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]\n"
            "        for name in files:\n"
            "            try:\n"
            "                found.append(open(os.path.join(dirpath, name), 'rb').read(1 << 20))\n"
            "            except OSError:\n"
            "                pass\n"
            f"secret = {hidden!r}[::-1].encode()\n"
            "print(len(found), 'FOUND' if any(secret in f for f in found) else 'clean')\n")
    body = _ok(invoke(client, profile="python3.11", code=code, timeout_s=60).json())
    count, verdict = body["stdout"].split()
    assert verdict == "clean" and int(count) > 10
    final = client_b.get(f"/v1/invocations/{victim['id']}", params={"wait": 20}).json()
    assert final["status"] == "succeeded"


# -- row 2: shared /tmp, /var/tmp and /dev/shm -----------------------------------------


def test_node_modules_planted_in_tmp_do_not_reach_the_next_call(client: httpx.Client) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    plant = ("const fs = require('fs'); const path = require('path');\n"
             "const payload = \"require('fs').writeFileSync('/tmp/stolen', "
             "JSON.stringify(process.env)); module.exports = () => 'pwned';\";\n"
             "let planted = 0;\n"
             "for (let d = process.cwd(); ; d = path.dirname(d)) {\n"
             "  for (const base of [d, '/tmp', '/var/tmp', '/dev/shm']) {\n"
             "    try { fs.mkdirSync(base + '/node_modules/left-pad', {recursive: true});\n"
             "          fs.writeFileSync(base + '/node_modules/left-pad/index.js', payload);\n"
             "          planted++; } catch (e) {}\n"
             "  }\n"
             "  if (d === '/') break;\n"
             "}\n"
             "console.log('planted', planted);")
    first = _ok(invoke(client, profile="node20", code=plant).json())
    assert "planted" in first["stdout"]
    victim = ("let r; try { r = require('left-pad')(); } catch (e) { r = e.code; }\n"
              "console.log(r, JSON.stringify(require('fs').readdirSync('/tmp')));")
    for _ in range(3):  # whichever warm worker takes it
        body = _ok(invoke(client, profile="node20", code=victim,
                          env={"SECRET": canary}).json())
        assert body["stdout"].strip() == "MODULE_NOT_FOUND []"


@pytest.mark.parametrize("profile", ["python3.11", "bash", "node20"])
def test_tmp_var_tmp_and_dev_shm_are_private_and_empty(client: httpx.Client,
                                                       profile: str) -> None:
    write = {
        "python3.11": "for d in ('/tmp', '/var/tmp', '/dev/shm'):\n"
                      "    open(d + '/left-behind', 'w').write('x')\nprint('wrote')",
        "bash": "for d in /tmp /var/tmp /dev/shm; do echo x > $d/left-behind; done; "
                "echo wrote",
        "node20": "for (const d of ['/tmp', '/var/tmp', '/dev/shm']) "
                  "require('fs').writeFileSync(d + '/left-behind', 'x');\n"
                  "console.log('wrote')",
    }[profile]
    look = "ls -A /tmp /var/tmp /dev/shm | tr -d '\\n'"
    assert "wrote" in _ok(invoke(client, profile=profile, code=write).json())["stdout"]
    for _ in range(3):
        body = _ok(invoke(client, profile="bash", code=look).json())
        assert body["stdout"] == "/dev/shm:/tmp:/var/tmp:"
    for name in ("tmp", "var/tmp", "dev/shm"):
        assert not (Path("/") / name / "left-behind").exists()


# -- row 3: the workspace root is never a path someone else could plant ----------------


def _old_fallback_root(data_dir: Path) -> Path:
    """Where the unsandboxed executor used to put workspaces when the data dir was private:
    predictable, in the world-writable /tmp."""
    preferred = (data_dir / "workspaces").resolve()
    tag = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()).resolve() / f"jobgate-workspaces-{tag}"


def _bait(tmp_path: Path) -> Path:
    bait = tmp_path / "attacker-dir"
    bait.mkdir()
    bait.chmod(0o777)
    return bait


def _run_and_watch(data_dir: Path, bait: Path, env: dict[str, str]) -> None:
    """One call, then (idle workers holding their directories) nothing in the bait."""
    gw = GatewayProcess(data_dir, env=env).start()
    try:
        with gw.client() as c:
            _ok(invoke(c, profile="bash", code="echo hi > mine.txt").json())
            wait_until(lambda: all(p["idle"] > 0 for p in
                                   c.get("/v1/pools").json()["items"]), timeout_s=15)
            assert list(bait.iterdir()) == []
    finally:
        gw.stop()
    assert list(bait.iterdir()) == []


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_a_link_planted_at_the_old_fallback_root_is_not_followed(tmp_path: Path,
                                                                sandbox: str) -> None:
    """Row 3: the data dir below a private directory (as under /root), and a link planted
    in /tmp where the unsandboxed executor used to put workspaces in that case."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data_dir = private / "data"
    bait = _bait(tmp_path)
    planted = _old_fallback_root(data_dir)
    planted.symlink_to(bait)
    try:
        _run_and_watch(data_dir, bait, {"JOBGATE_LOCAL_SANDBOX": sandbox})
        assert planted.is_symlink()
    finally:
        planted.unlink()


def test_a_link_planted_as_the_workspaces_directory_is_replaced(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    bait = _bait(tmp_path)
    (data_dir / "workspaces").symlink_to(bait)
    _run_and_watch(data_dir, bait, {})
    assert not (data_dir / "workspaces").is_symlink()


def test_a_data_dir_others_can_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by all, not sticky: anyone could swap the data dir
    gw = GatewayProcess(shared / "data")
    with pytest.raises(RuntimeError, match="writable by others"):
        gw.start(timeout_s=30)


# -- row 4: limits for the whole invocation --------------------------------------------


def test_memory_limit_holds_for_all_processes_together(client: httpx.Client) -> None:
    code = """
import os, time
children = []
for i in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(200 * 1024 * 1024)
        for j in range(0, len(block), 4096):
            block[j] = 1
        time.sleep(10)
        os._exit(0)
    children.append(pid)
ok = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 for pid in children)
print(ok, "of six allocated")
"""
    body = invoke(client, profile="python3.11", code=code, resources={"memory": 256},
                  timeout_s=30).json()
    assert (body["status"], body["reason"]) == ("failed", "MemoryLimit"), body
    # The main process itself survives (it is small): the kills hit the big children.
    assert int(body["stdout"].split()[0]) <= 1, body["stdout"]


def test_cpu_quota_holds_for_all_processes_together(client: httpx.Client) -> None:
    code = """
import os, time
end = time.monotonic() + 2
pids = []
for i in range(2):
    pid = os.fork()
    if pid == 0:
        while time.monotonic() < end:
            pass
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
t = os.times()
print(round(t.children_user + t.children_system, 2))
"""
    body = _ok(invoke(client, profile="python3.11", code=code, resources={"cpu": 0.5},
                      timeout_s=30).json())
    # Half a core for 2 s is about 1 CPU-second; unlimited, the two would take up to 4.
    assert float(body["stdout"]) < 1.5, body["stdout"]


def test_workspace_size_is_a_limit_for_the_whole_invocation(client: httpx.Client) -> None:
    code = """
import os
written = 0
chunk = b"x" * (1024 * 1024)
try:
    for i in range(12):
        d = ("/workspace", "/tmp", "/dev/shm")[i % 3]
        with open(f"{d}/big-{i}", "wb") as f:
            for _ in range(60):
                f.write(chunk)
                written += len(chunk)
finally:
    print(written)
"""
    body = invoke(client, profile="python3.11", code=code, resources={"memory": 2048},
                  timeout_s=60).json()
    assert (body["status"], body["reason"]) == ("failed", "DiskLimit"), body
    # The test profiles keep the default workspace_mb of 512.
    assert int(body["stdout"].strip()) <= 512 * 1024 * 1024
    assert "No space left on device" in body["stderr"]


# -- row 5: no other process is visible --------------------------------------------------


NO_NETWORK = {
    "python3.11": "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))\n"
                  "s = socket.socket()\ns.settimeout(2)\n"
                  "try:\n    s.connect(('127.0.0.1', {port}))\n    print('reached')\n"
                  "except OSError as e:\n    print('refused', e.errno)",
    "bash": "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' \\n'; echo; "
            "(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo reached || echo refused",
}


@pytest.mark.parametrize("profile", list(NO_NETWORK))
def test_a_profile_without_network_reaches_nothing_not_even_the_hosts_loopback(
        client: httpx.Client, profile: str) -> None:
    """An empty network namespace of the worker's own: only a loopback that is down, so a
    server on the host's 127.0.0.1 (this test's, listening) is out of reach."""
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        body = _ok(invoke(client, profile=profile,
                          code=NO_NETWORK[profile].replace("{port}", str(port))).json())
    finally:
        listener.close()
    first, second = body["stdout"].splitlines()[:2]
    assert first.strip() in ("['lo']", "lo"), body["stdout"]
    assert second.startswith("refused"), body["stdout"]


def test_other_calls_processes_and_arguments_are_invisible(client: httpx.Client,
                                                           client_b: httpx.Client,
                                                           gateway: GatewayProcess) -> None:
    secret = f"ARG-SECRET-{uuid.uuid4().hex}"
    victim = invoke(client_b, profile="python3.11", mode="async", args=[secret],
                    code="import time; time.sleep(4)").json()
    wait_until(lambda: client_b.get(f"/v1/invocations/{victim['id']}").json()["status"]
               == "running", timeout_s=15)
    look = ("cat /proc/*/cmdline /proc/*/environ 2>/dev/null | tr '\\0' ' '; echo; "
            "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/self/mountinfo /proc/mounts")
    for profile_look in (look,):
        body = _ok(invoke(client, profile="bash", code=profile_look).json())
        assert secret not in body["stdout"]
        assert str(gateway.data_dir) not in body["stdout"]
        assert "runner.py" not in body["stdout"]
        # bash, cat/ls and the pipeline's own processes: nothing of anybody else's.
        assert int(body["stdout"].splitlines()[1]) < 10
    client_b.get(f"/v1/invocations/{victim['id']}", params={"wait": 20})


@pytest.mark.parametrize("profile,code", [
    ("python3.11", "raise SystemExit(open('missing.txt').read())"),
    ("bash", "cat ./missing.txt"),
    ("node20", "require('fs').readFileSync('./missing.txt')"),
])
def test_messages_show_the_neutral_workspace_path(client: httpx.Client,
                                                  gateway: GatewayProcess,
                                                  profile: str, code: str) -> None:
    body = invoke(client, profile=profile, code=code).json()
    assert body["status"] == "failed"
    assert str(gateway.data_dir) not in body["stderr"]
    assert "jobgate-workspaces" not in body["stderr"]
    assert {"python3.11": "main.py", "bash": "missing.txt",
            "node20": "/workspace/main.js"}[profile] in body["stderr"]


# -- row 6: no new namespaces, no kernel attack surface beyond what programs need -------


@pytest.mark.parametrize("profile,code", [
    ("bash", "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; "
             "unshare -Ur sh -c 'grep CapEff /proc/self/status' && echo ESCAPED; true"),
    ("python3.11", "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                   "print(open('/proc/self/status').read())\n"
                   "for flag in (0x10000000, 0x00020000):\n"
                   "    if libc.unshare(flag) == 0: print('ESCAPED')\n"
                   "    else: print('unshare', ctypes.get_errno())"),
    ("node20", "const cp = require('child_process');\n"
               "console.log(require('fs').readFileSync('/proc/self/status', 'utf8'));\n"
               "try { cp.execSync('unshare -Ur true'); console.log('ESCAPED'); }"
               " catch (e) { console.log('refused'); }"),
])
def test_no_user_namespaces_and_a_seccomp_filter(client: httpx.Client, profile: str,
                                                 code: str) -> None:
    body = _ok(invoke(client, profile=profile, code=code).json())
    assert "ESCAPED" not in body["stdout"]
    status = body["stdout"]
    assert "Seccomp:\t2" in status
    assert "NoNewPrivs:\t1" in status
    assert "CapEff:\t0000000000000000" in status


# -- row 7: a FIFO where the runner reads ------------------------------------------------


@pytest.mark.parametrize("profile,code", [
    ("bash", "mkfifo artifacts/p result.json && echo made"),
    ("python3.11", "import os\nos.mkfifo('artifacts/p')\nos.mkfifo('result.json')\n"
                   "print('made')"),
    ("node20", "require('child_process').execSync('mkfifo artifacts/p result.json');\n"
               "console.log('made')"),
])
def test_fifos_do_not_hold_the_worker(client: httpx.Client, profile: str,
                                      code: str) -> None:
    body = _ok(invoke(client, profile=profile, code=code, timeout_s=10).json())
    assert "made" in body["stdout"]
    assert body["artifacts"] == []
    assert body["result_error"] == "result.json is not a regular file"
    # The worker was not held: the whole call took far less than its runner's socket
    # timeout (30 s), which is what a blocked open() used to cost.
    assert body["timings"]["total_ms"] < 10_000


# -- row 8: the whole standard library ---------------------------------------------------

STDLIB_PROBE = """
import sys, importlib, warnings
warnings.simplefilter("ignore")
skip = {"antigravity", "this", "__main__"}
failed = []
for name in sorted(sys.stdlib_module_names - skip):
    try:
        importlib.import_module(name)
    except BaseException as e:
        failed.append(name)
print(",".join(failed))
print("x".encode("idna"), __import__("socket").getaddrinfo("localhost", 80)[0][4][0])
"""


def _host_stdlib_failures(interpreter: str) -> list[str]:
    out = subprocess.run([interpreter, "-I", "-c", STDLIB_PROBE], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return out.splitlines()[0].split(",")


def _profile_interpreter() -> str:
    from gateway.config.profiles import interpreter_path

    path = interpreter_path("python3")
    assert path is not None
    resolved = subprocess.run([path, "-c", "import sys; print(sys.executable)"],
                              capture_output=True, text=True, timeout=30, check=True)
    return resolved.stdout.strip()


def test_the_whole_standard_library_imports(client: httpx.Client) -> None:
    """On this machine python3 is pyenv's, under a 0700 /root: exactly the case where the
    unsandboxed executor's own uid could not read the modules the zygote had not loaded."""
    body = _ok(invoke(client, profile="python3.11", code=STDLIB_PROBE, timeout_s=120).json())
    failed, probe = body["stdout"].splitlines()[:2]
    assert failed.split(",") == _host_stdlib_failures(_profile_interpreter())
    assert probe in ("b'x' 127.0.0.1", "b'x' ::1")


def test_the_standard_library_imports_when_the_interpreter_is_exec_d(tmp_path: Path) -> None:
    """The same interpreter as a profile that execs it (not pre-imported): its install
    directory is bound into the sandbox wherever it is."""
    interpreter = _profile_interpreter()
    catalogue = tmp_path / "profiles.toml"
    catalogue.write_text(f"""
[profiles.pyexec]
image = "jobgate/runtime-python3.11:0"
language = "python"
command = [{json.dumps(interpreter)}, "{{entrypoint}}"]
default_entrypoint = "main.py"
pool = {{ min = 1, max = 1 }}
""")
    with running_gateway(tmp_path, JOBGATE_PROFILES=str(catalogue)) as gw, gw.client() as c:
        body = _ok(invoke(c, profile="pyexec", code=STDLIB_PROBE, timeout_s=120).json())
    failed = body["stdout"].splitlines()[0]
    assert failed.split(",") == _host_stdlib_failures(interpreter)


# -- requirement 7: not root --------------------------------------------------------------


def _nonroot_command(checkout: Path, port: int, data_dir: Path) -> list[str]:
    """The gateway as uid 65534 on Debian's python3. The checkout may sit below a private
    directory (CI clones into a 0700 temp dir), so it is bound at a path anyone can walk,
    in a mount namespace of the test's own; nothing on the host changes."""
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    script = (f"mount --bind {ROOT} {checkout} && "
              f"exec setpriv --reuid 65534 --regid 65534 --clear-groups "
              f"env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "
              f"PYTHONPATH={checkout}:{checkout}/{site.relative_to(ROOT)} "
              f"JOBGATE_HOST=127.0.0.1 JOBGATE_PORT={port} JOBGATE_DATA_DIR={data_dir} "
              f"/usr/bin/python3 -m gateway.cli.main serve")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def test_a_gateway_not_running_as_root_works_and_says_what_it_lacks() -> None:
    from tests.support import free_port

    base = Path(tempfile.mkdtemp(prefix="jobgate-nonroot-"))
    try:
        base.chmod(0o755)
        checkout = base / "checkout"
        checkout.mkdir()
        data_dir = base / "data"
        data_dir.mkdir()
        os.chown(data_dir, 65534, 65534)
        port = free_port()
        log_path = base / "gateway.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(_nonroot_command(checkout, port, data_dir),
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(log_path.read_text())
                try:
                    return httpx.get(url + "/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, timeout_s=60, message="non-root gateway ready")
            with httpx.Client(base_url=url, timeout=60) as c:
                body = _ok(invoke(c, profile="python3.11",
                                  code="import os; print(os.getuid())").json())
                assert body["stdout"].strip() == "65534"
                body = _ok(invoke(c, profile="bash",
                                  code="grep -E '^Seccomp:' /proc/self/status").json())
                assert "Seccomp:\t2" in body["stdout"]
            log = log_path.read_text()
            warning = next(line for line in log.splitlines() if "workers run WITHOUT" in line)
            for lacking in ("private filesystem view", "private pid namespace",
                            "size-limited private workspace", "cgroups",
                            "a uid of its own", "empty network namespace"):
                assert lacking in warning, warning
            assert "not running as root" in warning
            assert "seccomp" not in warning
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False, timeout=60)


def test_required_refuses_to_start_without_every_protection(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data", env={"JOBGATE_LOCAL_SANDBOX": "required",
                                                "JOBGATE_LOCAL_ISOLATE_NETWORK": "false"})
    with pytest.raises(RuntimeError, match="JOBGATE_LOCAL_SANDBOX=required"):
        gw.start(timeout_s=60)
