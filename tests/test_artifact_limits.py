"""Artifact limits: count, size of one, total. Each refusal says which limit, as reason
ArtifactLimit; what fits is kept. Local storage (the runner applies the limits) and S3
(the gateway checks again before it hands out upload URLs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import GatewayProcess, invoke

LIMITS = {"JOBGATE_ARTIFACT_MAX_COUNT": "2", "JOBGATE_ARTIFACT_MAX_BYTES": "1000",
          "JOBGATE_ARTIFACT_MAX_TOTAL_BYTES": "1500"}


@pytest.fixture(params=["local", "s3"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = dict(LIMITS)
    if request.param == "s3":
        env.update(request.getfixturevalue("seaweedfs").gateway_env(bucket="limits",
                                                                    prefix="jobgate"))
    gw = GatewayProcess(tmp_path / "data", env=env).start(timeout_s=60)
    yield gw
    gw.stop()


def run(gw: GatewayProcess, sizes: list[int]) -> dict[str, Any]:
    code = "".join(f"open('artifacts/f{i}.bin', 'wb').write(b'x' * {n})\n"
                   for i, n in enumerate(sizes))
    with gw.client() as c:
        return dict(invoke(c, profile="python3.11", code=code).json())


def test_within_the_limits_all_are_kept(limited: GatewayProcess) -> None:
    body = run(limited, [500, 700])
    assert body["status"] == "succeeded", body
    assert sorted(a["name"] for a in body["artifacts"]) == ["f0.bin", "f1.bin"]


def test_too_many_artifacts(limited: GatewayProcess) -> None:
    body = run(limited, [10, 10, 10])
    assert (body["status"], body["reason"]) == ("failed", "ArtifactLimit"), body
    assert "more than 2 artifacts" in body["message"]


def test_one_artifact_too_large(limited: GatewayProcess) -> None:
    body = run(limited, [2000, 10])
    assert (body["status"], body["reason"]) == ("failed", "ArtifactLimit"), body
    assert "per-artifact limit of 1000" in body["message"]
    assert [a["name"] for a in body["artifacts"]] == ["f1.bin"]


def test_total_too_large(limited: GatewayProcess) -> None:
    body = run(limited, [900, 900])
    assert (body["status"], body["reason"]) == ("failed", "ArtifactLimit"), body
    assert "total limit of 1500" in body["message"]
    assert [a["name"] for a in body["artifacts"]] == ["f0.bin"]
