"""All of jobgate's configuration: one settings object, read once from ``JOBGATE_*``
environment variables (and an optional ``.env`` file), then passed in. Nothing below the
app reads the environment. Every field is documented in docs/configuration.md."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JOBGATE_", env_file=None, extra="ignore", frozen=True
    )

    # -- serving ------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    executor: Literal["local", "kubernetes"] = "local"
    storage: Literal["local", "s3"] = "local"
    data_dir: Path = Path(".jobgate")
    profiles: Path | None = None
    log_level: str = "info"
    # Seconds a sync request waits for its result before it answers 202 + Location.
    sync_wait_s: float = Field(30.0, gt=0, le=900)
    # Seconds a SIGTERM gives in-flight sync requests before the gateway exits.
    shutdown_grace_s: float = Field(20.0, ge=0, le=600)
    # This gateway's name among those sharing a store: the owner recorded on what it
    # accepts and claims. Empty: kept in the data dir (generated once) without Kubernetes;
    # host name + random with it. JOBGATE_K8S_REPLICA_ID is its older name.
    replica_id: str = Field("", max_length=200, validation_alias=AliasChoices(
        "JOBGATE_REPLICA_ID", "JOBGATE_K8S_REPLICA_ID", "replica_id"))

    # The gateway's URL as workers reach it (artifact upload URLs are asked for there);
    # empty: http://HOST:PORT of this process (right for the local executor).
    worker_gateway_url: str = ""

    # -- HTTP server: limits on a connection, before the app sees the request ----------
    # The request line and headers together (like h11's and Node's 16 KiB).
    http_max_header_bytes: int = Field(16 * 1024, ge=1024)
    http_max_headers: int = Field(100, gt=0)
    # From the first byte of a request until its last header line.
    http_header_timeout_s: float = Field(10.0, gt=0)
    # The longest gap between two pieces of a request body.
    http_body_timeout_s: float = Field(30.0, gt=0)

    # -- authentication -----------------------------------------------------------------
    # Comma-separated "tenant:sha256hex" entries (hashes of the keys, never the keys).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None

    # -- limits on what a client controls -----------------------------------------------
    max_request_bytes: int = Field(8 * MiB, gt=0)
    max_code_bytes: int = Field(1 * MiB, gt=0)
    max_files: int = Field(64, gt=0)
    max_file_bytes: int = Field(1 * MiB, gt=0)
    max_input_bytes: int = Field(1 * MiB, gt=0)
    max_stdin_bytes: int = Field(1 * MiB, gt=0)
    max_args: int = Field(256, gt=0)
    max_env: int = Field(64, gt=0)
    max_env_value_bytes: int = Field(32 * 1024, gt=0)
    default_ttl_s: int = Field(86400, gt=0)
    max_ttl_s: int = Field(7 * 86400, gt=0)

    # -- outputs --------------------------------------------------------------------------
    output_cap_bytes: int = Field(1 * MiB, gt=0)
    # A stream past this size stops the code (reason OutputLimit); below it, output past
    # output_cap_bytes is only truncated in the response.
    output_hard_limit_bytes: int = Field(64 * MiB, gt=0)
    result_cap_bytes: int = Field(1 * MiB, gt=0)
    artifact_max_count: int = Field(100, gt=0)
    # One file (stdout or an artifact) is also capped by output_hard_limit_bytes.
    artifact_max_bytes: int = Field(64 * MiB, gt=0)
    artifact_max_total_bytes: int = Field(500 * MiB, gt=0)

    # -- dispatch -------------------------------------------------------------------------
    queue_size: int = Field(256, ge=0)
    # The most attempts an invocation may ask for (max_attempts), and the cap on the
    # default (3 for async, 1 for sync): a worker lost through no fault of the code is
    # run again until then.
    max_attempts: int = Field(3, ge=1, le=10)
    max_concurrency: int = Field(32, gt=0)
    worker_idle_timeout_s: float = Field(900.0, ge=0)
    # Local executor: per-worker uids ("auto" = 200000-265535 when root, off otherwise).
    local_uid_range: str = "auto"
    # Local executor: an empty network namespace for profiles without network (root only).
    local_isolate_network: bool = True
    # Local executor: the sandbox (namespaces, read-only root, scratch tmpfs, cgroups,
    # seccomp). "auto": every protection this machine allows, and a warning naming each
    # one it does not; "required": refuse to start without all of them; "off": none of
    # the namespaces or cgroups (a baseline for benchmarks, not for untrusted code).
    local_sandbox: Literal["auto", "required", "off"] = "auto"

    # -- Kubernetes executor (JOBGATE_EXECUTOR=kubernetes) --------------------------------
    k8s_namespace: str = "jobgate"
    # A kubeconfig file; empty: in-cluster config when running in a pod, else ~/.kube/config.
    k8s_kubeconfig: str = ""
    k8s_runner_port: int = Field(8080, gt=0, le=65535)
    k8s_job_ttl_s: int = Field(300, ge=0)
    k8s_create_rate: float = Field(10.0, gt=0)
    k8s_cold_start_concurrency: int = Field(8, gt=0)
    k8s_image_pull_grace_s: float = Field(60.0, gt=0)
    k8s_unschedulable_after_s: float = Field(120.0, gt=0)
    k8s_leader_lease: str = "jobgate-pool-leader"
    k8s_lease_duration_s: int = Field(15, ge=3)
    # Gateway pods, by label: the only pods worker pods accept connections from.
    k8s_gateway_selector: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["app.kubernetes.io/name=jobgate",
                                 "app.kubernetes.io/component=gateway"])
    # Where workers may connect besides the gateway: the object store, as CIDRs.
    k8s_egress_cidrs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    k8s_manage_network_policy: bool = True
    k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"

    # -- callbacks ------------------------------------------------------------------------
    callback_secret: SecretStr | None = None
    callback_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    callback_max_attempts: int = Field(8, ge=1, le=50)
    callback_timeout_s: float = Field(10.0, gt=0)
    callback_backoff_base_s: float = Field(1.0, gt=0)
    callback_backoff_max_s: float = Field(300.0, gt=0)

    # -- S3 storage (JOBGATE_STORAGE=s3); credentials come from the standard AWS chain ----
    s3_endpoint: str = ""  # empty: AWS S3 itself
    s3_bucket: str = "jobgate"
    s3_region: str = "us-east-1"
    s3_prefix: str = "jobgate"
    s3_addressing: Literal["path", "virtual"] = "path"
    s3_create_bucket: bool = False
    s3_multipart_threshold_bytes: int = Field(16 * MiB, ge=5 * MiB)
    s3_multipart_chunk_bytes: int = Field(8 * MiB, ge=5 * MiB)
    s3_presign_ttl_s: int = Field(900, gt=0, le=7 * 86400)
    # How long result uploads are retried while storage is down before the invocation
    # ends as error/StorageUnavailable.
    storage_retry_budget_s: float = Field(120.0, ge=0)

    # -- janitor --------------------------------------------------------------------------
    janitor_interval_s: float = Field(60.0, gt=0)

    @field_validator("api_keys", "callback_allow", "k8s_gateway_selector", "k8s_egress_cidrs",
                     mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @property
    def is_loopback_bind(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
