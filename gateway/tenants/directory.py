"""The tenants this gateway knows from its configuration: those with an API key and those
named in the tenant limits. A bounded set, so metrics may label by tenant: any other name
(none can authenticate, but a label never comes from what a client sent) is ``other``."""

from __future__ import annotations

from collections.abc import Iterable

OTHER = "other"


class TenantDirectory:
    def __init__(self, names: Iterable[str]):
        self.names: tuple[str, ...] = tuple(sorted(set(names)))
        self._known = frozenset(self.names)

    def label(self, tenant: str) -> str:
        """The tenant's metrics label: its name when configured, else ``other``."""
        return tenant if tenant in self._known else OTHER
