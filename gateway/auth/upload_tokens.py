"""Tokens a worker presents to ask for artifact upload URLs: stateless (an HMAC over
tenant, invocation and expiry), so any gateway replica can check them, and scoped to one
invocation for a limited time."""

from __future__ import annotations

import hashlib
import hmac
import time

from gateway.errors import Unauthorized


class UploadTokens:
    def __init__(self, secret: str):
        # A key of its own, derived from the server secret: a leaked upload token says
        # nothing about callback signatures.
        self._key = hmac.new(secret.encode(), b"jobgate-upload-tokens", hashlib.sha256).digest()

    def _mac(self, tenant: str, invocation_id: str, expires: int) -> str:
        msg = f"{tenant}/{invocation_id}/{expires}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def make(self, tenant: str, invocation_id: str, ttl_s: float) -> str:
        expires = int(time.time() + ttl_s)
        return f"{tenant}.{expires}.{self._mac(tenant, invocation_id, expires)}"

    def tenant_for(self, token: str, invocation_id: str) -> str:
        try:
            tenant, expires_s, mac = token.split(".")
            expires = int(expires_s)
        except ValueError:
            raise Unauthorized("invalid upload token") from None
        if expires < time.time():
            raise Unauthorized("upload token expired")
        if not hmac.compare_digest(mac, self._mac(tenant, invocation_id, expires)):
            raise Unauthorized("invalid upload token")
        return tenant
