"""Authentication of a request: ``Authorization: Bearer KEY`` -> tenant."""

from __future__ import annotations

from starlette.requests import Request

from gateway.auth.keys import DEFAULT_TENANT, KeyRing
from gateway.errors import Unauthorized


class Authenticator:
    def __init__(self, keys: KeyRing):
        self.keys = keys

    @property
    def open(self) -> bool:
        """No keys configured: only allowed on a loopback bind (checked at start)."""
        return self.keys.empty

    def tenant(self, request: Request) -> str:
        if self.open:
            return DEFAULT_TENANT
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer KEY'")
        tenant = self.keys.tenant_for(key.strip())
        if tenant is None:
            raise Unauthorized("invalid API key")
        return tenant
