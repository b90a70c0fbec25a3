"""S3 storage going away and coming back, with a real SeaweedFS stopped and restarted on
the same ports: 503s and a false /readyz meanwhile; every accepted async invocation
completes once storage returns, or says StorageUnavailable past the retry budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.seaweedfs import SeaweedFS
from tests.support import GatewayProcess, invoke, wait_until

pytestmark = pytest.mark.s3
PY = "python3.11"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path / "weed").start()
    yield server
    server.close()


def _gateway(tmp_path: Path, s3: SeaweedFS, **env: str) -> GatewayProcess:
    full = s3.gateway_env(bucket="outage", prefix="jobgate")
    full.update(env)
    return GatewayProcess(tmp_path / "data", env=full).start(timeout_s=60)


def test_outage_gives_503_then_every_accepted_invocation_completes(
        tmp_path: Path, s3: SeaweedFS) -> None:
    gw = _gateway(tmp_path, s3, JOBGATE_STORAGE_RETRY_BUDGET_S="120")
    try:
        with gw.client() as c:
            accepted = [invoke(c, profile=PY, mode="async",
                               code=f"import time; time.sleep(2); print('done-{i}')\n"
                                    f"open('artifacts/a.txt', 'w').write('{i}')")
                        for i in range(3)]
            assert all(r.status_code == 202 for r in accepted)
            ids = [r.json()["id"] for r in accepted]
            s3.stop()
            refused = invoke(c, profile=PY, code="print(1)")
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "StorageUnavailable"
            assert int(refused.headers["retry-after"]) >= 1
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["storage"] != "ok"
            assert c.get("/healthz").status_code == 200
            import time

            time.sleep(4)  # the runs end while storage is down; their uploads retry
            s3.start()
            wait_until(lambda: c.get("/readyz").status_code == 200, timeout_s=30)
            for i, inv in enumerate(ids):
                body = wait_until(
                    lambda inv=inv: (r := c.get(f"/v1/invocations/{inv}")).status_code == 200
                    and r.json()["status"] not in ("queued", "running") and r.json(),
                    timeout_s=90, interval_s=0.5, message=f"{inv} finished")
                assert body["status"] == "succeeded", body
                assert body["stdout"] == f"done-{i}\n"
                art = c.get(f"/v1/invocations/{inv}/artifacts/a.txt", follow_redirects=True)
                assert art.content == str(i).encode()
            assert invoke(c, profile=PY, code="print(1)").json()["status"] == "succeeded"
    finally:
        gw.stop()


def test_past_the_retry_budget_the_invocation_says_storage_unavailable(
        tmp_path: Path, s3: SeaweedFS) -> None:
    gw = _gateway(tmp_path, s3, JOBGATE_STORAGE_RETRY_BUDGET_S="2")
    try:
        with gw.client() as c:
            inv = invoke(c, profile=PY, mode="async",
                         code="import time; time.sleep(1); print('lost?')").json()["id"]
            s3.stop()
            import time

            time.sleep(6)  # past the 2 s budget
            s3.start()
            body = wait_until(
                lambda: (r := c.get(f"/v1/invocations/{inv}")).status_code == 200
                and r.json()["status"] not in ("queued", "running") and r.json(),
                timeout_s=90, interval_s=0.5, message="the invocation's final word")
            assert (body["status"], body["reason"]) == ("error", "StorageUnavailable"), body
            assert "storage" in body["message"]
    finally:
        gw.stop()
