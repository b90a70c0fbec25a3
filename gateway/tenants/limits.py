"""Per-tenant limits, configured beside the API keys: defaults for every tenant and
overrides per tenant, from ``JOBGATE_TENANT_LIMITS`` (inline JSON) or
``JOBGATE_TENANT_LIMITS_FILE`` (a TOML or JSON file), in one shape:

    [defaults]
    max_running = 16            # invocations running at once
    max_queued = 1000           # accepted, not yet running
    rate_per_s = 20             # submissions a second (a token bucket) ...
    burst = 40                  # ... of this depth
    max_stored_bytes = 10737418240   # artifacts + logs + results kept
    max_ttl_s = 604800          # the longest ttl_s it may ask for
    weight = 1                  # its share of busy workers, against other tenants'

    [tenants.team-a]
    max_running = 4
    weight = 2

A limit left out of a tenant's table is the default's; a default left out is the one
below (``None``: no per-tenant bound; the gateway-wide settings still hold). Unknown
names are refused at start, so a typo never silently means "unlimited"."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.auth.keys import TENANT
from gateway.errors import ConfigError

GiB = 1024**3


class TenantLimits(BaseModel):
    """What one tenant may use. ``None``: no bound of this kind for the tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_running: int | None = Field(None, gt=0)
    max_queued: int | None = Field(1000, ge=0)
    rate_per_s: float | None = Field(None, gt=0)
    burst: int | None = Field(None, gt=0)
    max_stored_bytes: int | None = Field(10 * GiB, gt=0)
    max_ttl_s: int | None = Field(None, gt=0)
    weight: int = Field(1, ge=1, le=1000)


class _Overrides(BaseModel):
    """A table as written: only the limits it names (the rest come from the defaults)."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(None, gt=0)
    max_queued: int | None = Field(None, ge=0)
    rate_per_s: float | None = Field(None, gt=0)
    burst: int | None = Field(None, gt=0)
    max_stored_bytes: int | None = Field(None, gt=0)
    max_ttl_s: int | None = Field(None, gt=0)
    weight: int | None = Field(None, ge=1, le=1000)


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: _Overrides = Field(default_factory=_Overrides)
    tenants: dict[str, _Overrides] = Field(default_factory=dict)

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: dict[str, _Overrides]) -> dict[str, _Overrides]:
        for name in tenants:
            if not TENANT.match(name):
                raise ValueError(f"tenant {name!r} is not a tenant name ({TENANT.pattern})")
        return tenants


class LimitsTable:
    """Every tenant's limits: the configured tenants' own, and the defaults for any other
    (a tenant known only by its API key)."""

    def __init__(self, defaults: TenantLimits | None = None,
                 tenants: dict[str, TenantLimits] | None = None):
        self.defaults = defaults or TenantLimits()
        self._tenants = dict(tenants or {})

    def of(self, tenant: str) -> TenantLimits:
        return self._tenants.get(tenant, self.defaults)

    @property
    def configured(self) -> list[str]:
        """The tenants named in the configuration (a bounded set: metrics label them)."""
        return sorted(self._tenants)

    @classmethod
    def parse(cls, document: dict[str, Any]) -> LimitsTable:
        doc = _Document.model_validate(document)
        set_defaults = doc.defaults.model_dump(exclude_unset=True)
        defaults = TenantLimits(**set_defaults)
        base = defaults.model_dump()
        return cls(defaults, {
            name: TenantLimits(**{**base, **table.model_dump(exclude_unset=True)})
            for name, table in doc.tenants.items()})

    @classmethod
    def load(cls, inline: str | None, path: Path | None) -> LimitsTable:
        """From the settings: inline JSON, or a file (``.toml``, else JSON); neither: the
        defaults for everyone. ConfigError names what is wrong and where."""
        if inline and path:
            raise ConfigError("set JOBGATE_TENANT_LIMITS or JOBGATE_TENANT_LIMITS_FILE, "
                              "not both")
        source = "JOBGATE_TENANT_LIMITS"
        try:
            if path is not None:
                source = str(path)
                text = Path(path).read_text()
                document = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
            elif inline:
                document = json.loads(inline)
            else:
                return cls()
            if not isinstance(document, dict):
                raise ConfigError(f"{source}: the tenant limits must be a table/object")
            return cls.parse(document)
        except ConfigError:
            raise
        except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
            detail = _describe(e) if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f"{source}: {detail}") from None


def _describe(error: ValidationError) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}"
