"""Membership: the gateway's identity among those sharing a store, live replicas, and who
leads recovery and pool control. One seam (``base.Membership``), two implementations:
``standalone`` (no Kubernetes) and ``leases`` (Kubernetes Leases)."""

from __future__ import annotations

from gateway.config.settings import Settings
from gateway.errors import ConfigError
from gateway.membership.base import Membership


def make_membership(settings: Settings) -> Membership:
    """Leases where the gateways run on Kubernetes (its executor); standalone elsewhere."""
    if settings.executor == "kubernetes":
        try:
            from gateway.membership.leases import LeaseMembership
        except ModuleNotFoundError as e:
            raise ConfigError(f"Kubernetes Leases need {e.name}: "
                              "pip install 'jobgate[kubernetes]'") from None
        return LeaseMembership(settings)
    from gateway.membership.standalone import StandaloneMembership

    return StandaloneMembership(settings)
