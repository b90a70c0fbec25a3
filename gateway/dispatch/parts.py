"""The collaborators every dispatch job shares, grouped once so no constructor grows."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config.profiles import ProfileCatalog
from gateway.config.settings import Settings
from gateway.dispatch.fair_share import FairShare
from gateway.executors.base import Executor
from gateway.membership.base import Membership
from gateway.metrics.registry import Metrics
from gateway.storage.records import InvocationStore
from gateway.tenants.directory import TenantDirectory
from gateway.tenants.limits import LimitsTable
from gateway.tenants.quota import StorageQuota


@dataclass(frozen=True)
class Parts:
    settings: Settings
    profiles: ProfileCatalog
    executor: Executor
    records: InvocationStore
    metrics: Metrics
    membership: Membership
    limits: LimitsTable
    quota: StorageQuota
    tenants: TenantDirectory
    # The workers' fair share across tenants (admission counts on it, the lifecycle takes
    # its turns): made from the settings and the limits, one per gateway.
    share: FairShare = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "share", FairShare(
            self.limits, self.settings.max_concurrency, self.settings.queue_size))
