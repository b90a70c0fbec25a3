"""Executors: the Executor seam and its implementations."""

from __future__ import annotations

from gateway.config.profiles import ProfileCatalog
from gateway.config.settings import Settings
from gateway.executors.base import Executor
from gateway.membership.base import Membership


def make_executor(settings: Settings, profiles: ProfileCatalog,
                  membership: Membership) -> Executor:
    if settings.executor == "local":
        from gateway.executors.local import LocalExecutor

        return LocalExecutor(settings, profiles)
    if settings.executor == "kubernetes":
        from gateway.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor(settings, profiles, membership)
    raise ValueError(f"executor {settings.executor!r} is not available in this build")
