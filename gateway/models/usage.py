"""What ``GET /v1/usage`` (the caller's tenant) and ``GET /v1/admin/usage`` (every
tenant, for operators) answer."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gateway.models.answers import ANSWER


class UsageLimits(BaseModel):
    """The tenant's limits as they apply (null: no bound of this kind)."""

    model_config = ANSWER
    max_running: int | None = Field(description="invocations holding a worker at once, "
                                    "across profiles (more wait their turn), per replica")
    max_queued: int | None = Field(description="invocations waiting for a worker; past "
                                   "it: 429 TenantQueueFull, per replica")
    rate_per_s: float | None = Field(description="submissions a second (a token bucket); "
                                     "past it: 429 RateLimited, per replica")
    burst: int | None = Field(description="the token bucket's depth")
    max_stored_bytes: int | None = Field(description="artifacts, logs and results kept")
    max_ttl_s: int = Field(description="the longest ttl_s it may ask for (this tenant's, "
                           "or the gateway's when lower)")
    weight: int = Field(description="its share of busy workers against other tenants'")


class Usage(BaseModel):
    model_config = ANSWER
    tenant: str
    replica: str = Field(description="the gateway replica that answered: running and "
                         "queued are counted per replica")
    running: int = Field(description="invocations holding a worker slot (claiming or "
                         "running a worker) in this replica")
    queued: int = Field(description="invocations waiting for a worker slot in this replica")
    stored_bytes: int = Field(description="bytes the tenant keeps in storage (artifacts, "
                              "logs, results), as the stored-bytes quota counts them "
                              "across replicas")
    limits: UsageLimits


class UsageList(BaseModel):
    model_config = ANSWER
    items: list[Usage]
