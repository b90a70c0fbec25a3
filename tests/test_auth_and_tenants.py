"""API keys and tenants: hashed keys, 401s, isolation, open mode only on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import ROOT, GatewayProcess, invoke, key_entry, running_gateway


def test_missing_and_wrong_keys_are_401(gateway: GatewayProcess) -> None:
    with gateway.client(key=None) as anonymous:
        r = invoke(anonymous, profile="bash", code="echo hi")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "Unauthorized"
        assert anonymous.get("/v1/invocations").status_code == 401
        assert anonymous.get("/v1/profiles").status_code == 401
        # Health, readiness, metrics and the API document need no key.
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert anonymous.get(path).status_code == 200
    with gateway.client(key="jg_wrong") as wrong:
        assert wrong.get("/v1/invocations").status_code == 401
    with httpx.Client(base_url=gateway.url, headers={"Authorization": "Basic abc"}) as basic:
        assert basic.get("/v1/invocations").status_code == 401


def test_a_tenant_sees_only_its_own_invocations(client: httpx.Client,
                                                client_b: httpx.Client) -> None:
    inv = invoke(client, profile="python3.11",
                 code="open('artifacts/secret.txt','w').write('a')").json()
    base = f"/v1/invocations/{inv['id']}"
    for path in (base, base + "/logs", base + "/artifacts", base + "/artifacts/secret.txt",
                 base + "/artifacts.zip"):
        r = client_b.get(path)
        assert r.status_code == 404, path
    assert client_b.post(base + "/cancel").status_code == 404
    listed = [i["id"] for i in client_b.get("/v1/invocations",
                                            params={"limit": 200}).json()["items"]]
    assert inv["id"] not in listed
    assert client.get(base).status_code == 200


def test_keys_file_is_read(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# tenants\n{key_entry('from-file', 'jg_file_key_123')}\n")
    with running_gateway(tmp_path, JOBGATE_API_KEYS="", JOBGATE_API_KEYS_FILE=str(keys)) as gw:
        with gw.client(key="jg_file_key_123") as c:
            assert invoke(c, profile="bash", code="echo ok").json()["stdout"] == "ok\n"
        with gw.client() as other:
            assert other.get("/v1/invocations").status_code == 401


def test_open_on_loopback_without_keys_and_says_so(tmp_path: Path) -> None:
    with running_gateway(tmp_path, JOBGATE_API_KEYS="") as gw, gw.client(key=None) as c:
        assert invoke(c, profile="bash", code="echo open").json()["stdout"] == "open\n"
        assert "NO API KEYS CONFIGURED" in gw.log()


def test_refuses_to_start_on_a_public_bind_without_keys(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "JOBGATE_HOST": "0.0.0.0", "JOBGATE_PORT": "0",
           "JOBGATE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "gateway.cli.main", "serve"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "without API keys" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_key_configuration_is_refused_plainly(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "JOBGATE_API_KEYS": "tenant-a:not-a-hash",
           "JOBGATE_DATA_DIR": str(tmp_path / "data"), "JOBGATE_PORT": "0"}
    proc = subprocess.run([sys.executable, "-m", "gateway.cli.main", "serve"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "64 hex characters" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_keys_are_stored_hashed_and_compared_in_constant_time() -> None:
    from gateway.auth.keys import KeyRing, hash_key, parse_entry

    ring = KeyRing([parse_entry(f"t1:{hash_key('k1')}"), parse_entry(f"t2:{hash_key('k2')}")])
    assert ring.tenant_for("k1") == "t1"
    assert ring.tenant_for("k2") == "t2"
    assert ring.tenant_for("k3") is None
    assert ring.tenant_for("") is None
    assert all(len(e.sha256) == 32 for e in ring.entries)
