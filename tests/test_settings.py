"""The settings' groups (``settings.local``, ``.kubernetes``, ``.s3``) read the same
variables as ever: under their own prefixes, from the environment and from a .env file."""

from __future__ import annotations

import os
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config.settings import (
    GROUPS,
    KubernetesSettings,
    LocalSettings,
    S3Settings,
    Settings,
    describe,
    variables,
)

# Every variable under a group's prefix: its value, the setting it sets, what that reads.
GROUPED: dict[str, tuple[str, str, Any]] = {
    "JOBGATE_LOCAL_UID_RANGE": ("300000-300099", "local.uid_range", "300000-300099"),
    "JOBGATE_LOCAL_ISOLATE_NETWORK": ("false", "local.isolate_network", False),
    "JOBGATE_LOCAL_SANDBOX": ("required", "local.sandbox", "required"),
    "JOBGATE_K8S_NAMESPACE": ("ns", "kubernetes.namespace", "ns"),
    "JOBGATE_K8S_KUBECONFIG": ("/kube", "kubernetes.kubeconfig", "/kube"),
    "JOBGATE_K8S_RUNNER_PORT": ("8081", "kubernetes.runner_port", 8081),
    "JOBGATE_K8S_JOB_TTL_S": ("5", "kubernetes.job_ttl_s", 5),
    "JOBGATE_K8S_CREATE_RATE": ("2.5", "kubernetes.create_rate", 2.5),
    "JOBGATE_K8S_COLD_START_CONCURRENCY": ("3", "kubernetes.cold_start_concurrency", 3),
    "JOBGATE_K8S_IMAGE_PULL_GRACE_S": ("6", "kubernetes.image_pull_grace_s", 6.0),
    "JOBGATE_K8S_UNSCHEDULABLE_AFTER_S": ("7", "kubernetes.unschedulable_after_s", 7.0),
    "JOBGATE_K8S_LEADER_LEASE": ("lead", "kubernetes.leader_lease", "lead"),
    "JOBGATE_K8S_LEASE_DURATION_S": ("9", "kubernetes.lease_duration_s", 9),
    "JOBGATE_K8S_GATEWAY_SELECTOR": ("a=b, c=d", "kubernetes.gateway_selector", ["a=b", "c=d"]),
    "JOBGATE_K8S_EGRESS_CIDRS": ("10.0.0.0/8,", "kubernetes.egress_cidrs", ["10.0.0.0/8"]),
    "JOBGATE_K8S_MANAGE_NETWORK_POLICY": ("0", "kubernetes.manage_network_policy", False),
    "JOBGATE_K8S_IMAGE_PULL_POLICY": ("Never", "kubernetes.image_pull_policy", "Never"),
    "JOBGATE_K8S_WORKER_DNS_POLICY": ("Default", "kubernetes.worker_dns_policy", "Default"),
    "JOBGATE_K8S_OWNER_CONFIGMAP": ("rel-profiles", "kubernetes.owner_configmap",
                                    "rel-profiles"),
    "JOBGATE_K8S_REPLICA_ID": ("old-name", "replica_id", "old-name"),  # not the group's
    "JOBGATE_S3_ENDPOINT": ("http://s3:9000", "s3.endpoint", "http://s3:9000"),
    "JOBGATE_S3_BUCKET": ("bucket", "s3.bucket", "bucket"),
    "JOBGATE_S3_REGION": ("eu-west-1", "s3.region", "eu-west-1"),
    "JOBGATE_S3_PREFIX": ("px", "s3.prefix", "px"),
    "JOBGATE_S3_ADDRESSING": ("virtual", "s3.addressing", "virtual"),
    "JOBGATE_S3_CREATE_BUCKET": ("true", "s3.create_bucket", True),
    "JOBGATE_S3_MULTIPART_THRESHOLD_BYTES": ("6000000", "s3.multipart_threshold_bytes",
                                             6_000_000),
    "JOBGATE_S3_MULTIPART_CHUNK_BYTES": ("5300000", "s3.multipart_chunk_bytes", 5_300_000),
    "JOBGATE_S3_PRESIGN_TTL_S": ("60", "s3.presign_ttl_s", 60),
    "JOBGATE_MCP_ENABLED": ("false", "mcp.enabled", False),
    "JOBGATE_MCP_ALLOWED_HOSTS": ("a.example:*, b", "mcp.allowed_hosts", ["a.example:*", "b"]),
    "JOBGATE_MCP_ALLOWED_ORIGINS": ("https://c.example", "mcp.allowed_origins",
                                    ["https://c.example"]),
    "JOBGATE_MCP_OUTPUT_MAX_BYTES": ("4096", "mcp.output_max_bytes", 4096),
}


@pytest.fixture(autouse=True)
def no_jobgate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("JOBGATE_")]:
        monkeypatch.delenv(name)


def _grouped(settings: Settings) -> dict[str, Any]:
    return {name: attrgetter(path)(settings) for name, (_, path, _) in GROUPED.items()}


def test_every_group_variable_is_listed_here() -> None:
    prefixes = tuple(group.env_prefix() for group in GROUPS.values())
    assert set(GROUPED) == {name for name in variables() if name.startswith(prefixes)}


def test_every_group_variable_is_read_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (value, _, _) in GROUPED.items():
        monkeypatch.setenv(name, value)
    assert _grouped(Settings()) == {name: read for name, (_, _, read) in GROUPED.items()}


def test_a_dotenv_file_is_read_like_the_environment(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "jobgate.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, (value, _, _) in GROUPED.items())
                        + "JOBGATE_HOST=0.0.0.0\n")
    settings = Settings(_env_file=env_file)
    assert _grouped(settings) == {name: read for name, (_, _, read) in GROUPED.items()}
    assert settings.host == "0.0.0.0"
    # The environment comes first, as it does for the variables outside the groups.
    monkeypatch.setenv("JOBGATE_S3_BUCKET", "from-env")
    assert Settings(_env_file=env_file).s3.bucket == "from-env"


def test_a_group_given_in_code_meets_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBGATE_S3_PREFIX", "env-prefix")
    partial = Settings(s3={"bucket": "given"})
    assert (partial.s3.bucket, partial.s3.prefix) == ("given", "env-prefix")
    whole = Settings(kubernetes=KubernetesSettings(namespace="given"), s3=S3Settings())
    assert whole.kubernetes.namespace == "given" and whole.s3.prefix == "env-prefix"


def test_a_group_is_not_read_from_a_variable_of_its_own_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the groups, JOBGATE_S3 or JOBGATE_KUBERNETES meant nothing: still so."""
    monkeypatch.setenv("JOBGATE_S3", "not json")
    monkeypatch.setenv("JOBGATE_KUBERNETES", '{"namespace": "json"}')
    monkeypatch.setenv("JOBGATE_LOCAL", "{")
    settings = Settings()
    assert (settings.local, settings.kubernetes, settings.s3) == (
        LocalSettings(), KubernetesSettings(), S3Settings())


def test_an_invalid_value_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBGATE_K8S_RUNNER_PORT", "99999")
    monkeypatch.setenv("JOBGATE_S3_ADDRESSING", "sideways")
    monkeypatch.setenv("JOBGATE_PORT", "http")
    with pytest.raises(ValidationError) as raised:
        Settings()
    lines = describe(raised.value).splitlines()
    assert [line.split("=")[0].strip() for line in lines] == [
        "JOBGATE_PORT", "JOBGATE_K8S_RUNNER_PORT", "JOBGATE_S3_ADDRESSING"]
    assert "JOBGATE_K8S_RUNNER_PORT='99999': Input should be less than or equal to 65535" \
        in lines[1]
