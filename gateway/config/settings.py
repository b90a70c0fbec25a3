"""All of jobgate's configuration: one settings object, read once from ``JOBGATE_*``
environment variables (and an optional ``.env`` file), then passed in. Nothing below the
app reads the environment. Every variable is documented in docs/configuration.md.

What belongs to one executor or store is a group of its own, read from the variables with
the group's prefix: ``settings.local`` (``JOBGATE_LOCAL_*``), ``settings.kubernetes``
(``JOBGATE_K8S_*``) and ``settings.s3`` (``JOBGATE_S3_*``), so that
``JOBGATE_K8S_NAMESPACE`` is ``settings.kubernetes.namespace``."""

from __future__ import annotations

import ipaddress
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

MiB = 1024 * 1024


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# A list given as one comma-separated variable ("a, b,c").
Csv = Annotated[list[str], NoDecode, BeforeValidator(_split_csv)]
SecretCsv = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_csv)]


class _Group(BaseSettings):
    """The settings of one executor or store, under a prefix of their own. Inside
    ``Settings`` its sources read a group's variables (from the same environment and
    ``.env`` file as the rest); a group built alone reads them itself."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    @classmethod
    def env_prefix(cls) -> str:
        return cls.model_config.get("env_prefix", "")


class LocalSettings(_Group):
    """The local executor (JOBGATE_EXECUTOR=local): ``JOBGATE_LOCAL_*``."""

    model_config = SettingsConfigDict(env_prefix="JOBGATE_LOCAL_")

    # Per-worker uids ("auto" = 200000-265535 when root, off otherwise).
    uid_range: str = "auto"
    # An empty network namespace for profiles without network (root only).
    isolate_network: bool = True
    # The sandbox (namespaces, read-only root, scratch tmpfs, cgroups, seccomp). "auto":
    # every protection this machine allows, and a warning naming each one it does not;
    # "required": refuse to start without all of them; "off": none of the namespaces or
    # cgroups (a baseline for benchmarks, not for untrusted code).
    sandbox: Literal["auto", "required", "off"] = "auto"


class KubernetesSettings(_Group):
    """The Kubernetes executor (JOBGATE_EXECUTOR=kubernetes): ``JOBGATE_K8S_*``."""

    model_config = SettingsConfigDict(env_prefix="JOBGATE_K8S_")

    namespace: str = "jobgate"
    # A kubeconfig file; empty: in-cluster config when running in a pod, else ~/.kube/config.
    kubeconfig: str = ""
    runner_port: int = Field(8080, gt=0, le=65535)
    job_ttl_s: int = Field(300, ge=0)
    create_rate: float = Field(10.0, gt=0)
    cold_start_concurrency: int = Field(8, gt=0)
    image_pull_grace_s: float = Field(60.0, gt=0)
    unschedulable_after_s: float = Field(120.0, gt=0)
    leader_lease: str = "jobgate-pool-leader"
    lease_duration_s: int = Field(15, ge=3)
    # Gateway pods, by label: the only pods worker pods accept connections from.
    gateway_selector: Csv = Field(
        default_factory=lambda: ["app.kubernetes.io/name=jobgate",
                                 "app.kubernetes.io/component=gateway"])
    # Where workers may connect besides the gateway: the object store, as CIDRs.
    egress_cidrs: Csv = Field(default_factory=list)
    manage_network_policy: bool = True
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # Worker pods' dnsPolicy: ClusterFirst resolves Service names (the gateway's URL, an
    # in-cluster store); Default uses the node's resolver (a cluster without DNS).
    worker_dns_policy: Literal["ClusterFirst", "Default"] = "ClusterFirst"
    # A ConfigMap in the namespace that owns what the gateway creates (worker Jobs, the
    # policies): deleting it (a `helm uninstall`) has Kubernetes delete them all.
    owner_configmap: str = Field("", pattern=r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)?$")


class S3Settings(_Group):
    """S3 storage (JOBGATE_STORAGE=s3): ``JOBGATE_S3_*``. Credentials come from the
    standard AWS chain, never from here."""

    model_config = SettingsConfigDict(env_prefix="JOBGATE_S3_")

    endpoint: str = ""  # empty: AWS S3 itself
    bucket: str = "jobgate"
    region: str = "us-east-1"
    prefix: str = "jobgate"
    addressing: Literal["path", "virtual"] = "path"
    create_bucket: bool = False
    multipart_threshold_bytes: int = Field(16 * MiB, ge=5 * MiB)
    multipart_chunk_bytes: int = Field(8 * MiB, ge=5 * MiB)
    presign_ttl_s: int = Field(900, gt=0, le=7 * 86400)


class McpSettings(_Group):
    """The MCP endpoint (``/mcp``, and ``jobgate mcp`` over stdio): ``JOBGATE_MCP_*``."""

    model_config = SettingsConfigDict(env_prefix="JOBGATE_MCP_")

    enabled: bool = True
    # Host header values /mcp answers ("name:*" for any port). Empty: the loopback names
    # when the gateway binds loopback, no Host check otherwise (the SDK's own default).
    allowed_hosts: Csv = Field(default_factory=list)
    # Origin header values allowed (a browser's page); a request without Origin passes.
    allowed_origins: Csv = Field(default_factory=list)
    # The most of stdout, of stderr and of the result's JSON one tool result carries, so
    # one call cannot flood an agent's context (the whole output stays behind its logs link).
    output_max_bytes: int = Field(16 * 1024, ge=256, le=1 * MiB)


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
    api_keys: Csv = Field(default_factory=list)
    api_keys_file: Path | None = None
    # Per-tenant limits (gateway/tenants/limits.py): inline JSON, or a TOML/JSON file.
    tenant_limits: str | None = None
    tenant_limits_file: Path | None = None
    # How often each replica lists the stored bytes of the tenants in use (the usage
    # ledger): how far another replica's writes may go unseen by this one's quota.
    usage_refresh_s: float = Field(2.0, gt=0, le=3600)
    # Tenants that may read every tenant's usage (GET /v1/admin/usage, jobgate usage --all).
    operator_tenants: Csv = Field(default_factory=list)

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
    # Invocations in one POST /v1/invocations/batch.
    batch_max_items: int = Field(50, ge=1, le=1000)

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

    # -- live logs (GET .../logs?follow=true) --------------------------------------------
    # Open follow streams, per invocation and on this replica in all (past them: 429).
    logs_follow_max_per_invocation: int = Field(8, ge=1)
    logs_follow_max_total: int = Field(256, ge=1)
    # A keep-alive comment after this long without an event (so proxies keep the stream).
    logs_follow_ping_s: float = Field(15.0, gt=0, le=300)
    # How often storage is read for an invocation this replica does not run (it runs on
    # another one, or waits there): its output is sent once it has ended.
    logs_follow_poll_s: float = Field(1.0, gt=0, le=60)

    # -- dispatch -------------------------------------------------------------------------
    queue_size: int = Field(256, ge=0)
    # The most attempts an invocation may ask for (max_attempts), and the cap on the
    # default (3 for async, 1 for sync): a worker lost through no fault of the code is
    # run again until then.
    max_attempts: int = Field(3, ge=1, le=10)
    max_concurrency: int = Field(32, gt=0)
    worker_idle_timeout_s: float = Field(900.0, ge=0)

    # -- the executors' own settings (the one JOBGATE_EXECUTOR names is used) -------------
    local: LocalSettings = Field(default_factory=LocalSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    # -- callbacks ------------------------------------------------------------------------
    # The server's signing secret (whsec_<base64>, or any string: its UTF-8 bytes).
    callback_secret: SecretStr | None = None
    # Secrets being rotated out: they sign the Standard Webhooks header too, after the
    # current one, so receivers still holding one of them keep verifying.
    callback_previous_secrets: SecretCsv = Field(default_factory=list)
    callback_allow: Csv = Field(default_factory=list)
    callback_max_attempts: int = Field(8, ge=1, le=50)
    callback_timeout_s: float = Field(10.0, gt=0)
    callback_backoff_base_s: float = Field(1.0, gt=0)
    callback_backoff_max_s: float = Field(300.0, gt=0)

    # -- storage ---------------------------------------------------------------------------
    s3: S3Settings = Field(default_factory=S3Settings)
    # How long result uploads are retried while storage is down before the invocation
    # ends as error/StorageUnavailable.
    storage_retry_budget_s: float = Field(120.0, ge=0)

    # -- front doors besides the HTTP API ----------------------------------------------------
    mcp: McpSettings = Field(default_factory=McpSettings)

    # -- janitor --------------------------------------------------------------------------
    janitor_interval_s: float = Field(60.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment and the .env file (the one given as _env_file, when it is), each
        # reading the groups under their own prefixes.
        assert isinstance(dotenv_settings, DotEnvSettingsSource)
        return (init_settings, _GroupedEnv(settings_cls),
                _GroupedDotEnv(settings_cls, env_file=dotenv_settings.env_file,
                               env_file_encoding=dotenv_settings.env_file_encoding,
                               env_file_depth=dotenv_settings.env_file_depth),
                file_secret_settings)

    @property
    def is_loopback_bind(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


GROUPS: dict[str, type[_Group]] = {
    name: field.annotation for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Group)}


class _GroupedEnv(EnvSettingsSource):
    """The environment, with each group read from the variables under its own prefix
    (alone, pydantic-settings would read a group from one JSON variable, JOBGATE_S3)."""

    def _group_source(self, group: type[_Group]) -> EnvSettingsSource:
        return EnvSettingsSource(group)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in GROUPS:
            return None, field_name, False  # read in __call__
        return super().get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        for name, group in GROUPS.items():
            data[name] = self._group_source(group)()
        return data


class _GroupedDotEnv(_GroupedEnv, DotEnvSettingsSource):
    """A .env file, its groups read like the environment's."""

    def _group_source(self, group: type[_Group]) -> EnvSettingsSource:
        return DotEnvSettingsSource(group, env_file=self.env_file,
                                    env_file_encoding=self.env_file_encoding,
                                    env_file_depth=self.env_file_depth)


def _names(field_name: str, field: FieldInfo, prefix: str) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):  # variables, and the field's own name (lower case)
        return [c for c in alias.choices if isinstance(c, str) and c.isupper()]
    return [f"{prefix}{field_name}".upper()]


def variables() -> list[str]:
    """Every environment variable the settings read, older names included."""
    names: list[str] = []
    for name, field in Settings.model_fields.items():
        if name in GROUPS:
            group = GROUPS[name]
            for inner, inner_field in group.model_fields.items():
                names += _names(inner, inner_field, group.env_prefix())
        else:
            names += _names(name, field, "JOBGATE_")
    return names


def _variable(loc: tuple[int | str, ...]) -> str:
    """The variable a validation error's location stands for: ("kubernetes",
    "runner_port") is JOBGATE_K8S_RUNNER_PORT."""
    head, *rest = [str(part) for part in loc]
    prefix = "JOBGATE_"
    if head in GROUPS and rest:
        prefix = GROUPS[head].env_prefix()
        head, *rest = rest
    if not head.upper().startswith("JOBGATE_"):
        head = prefix + head
    return head.upper() + "".join(f"[{part}]" for part in rest)


def describe(error: ValidationError) -> str:
    """A settings validation error, one line per variable, each named as it is set."""
    return "\n".join(f"  {_variable(e['loc'])}={reprlib.repr(e['input'])}: {e['msg']}"
                     for e in error.errors(include_url=False))
