"""The collaborators every dispatch job shares, grouped once so no constructor grows."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.profiles import ProfileCatalog
from gateway.config.settings import Settings
from gateway.executors.base import Executor
from gateway.membership.base import Membership
from gateway.metrics.registry import Metrics
from gateway.storage.records import InvocationStore
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
