"""API keys. The gateway stores only sha256 hashes of keys, each mapped to a tenant
(``tenant:HEX``); a presented key is hashed and compared with every stored hash in
constant time. ``jobgate keys new TENANT`` makes a key and its configuration line."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_TENANT = "default"
KEY_PREFIX = "jg_"


@dataclass(frozen=True)
class KeyEntry:
    tenant: str
    sha256: bytes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_entry(line: str) -> KeyEntry:
    tenant, sep, digest = line.strip().partition(":")
    if not sep or not TENANT.match(tenant):
        raise ValueError(f"API key entry must be 'tenant:sha256hex' (tenant {TENANT.pattern}),"
                         f" got {line.strip()[:40]!r}")
    digest = digest.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"API key hash for tenant {tenant!r} is not 64 hex characters")
    return KeyEntry(tenant, bytes.fromhex(digest))


class KeyRing:
    def __init__(self, entries: list[KeyEntry]):
        self.entries = entries

    @classmethod
    def load(cls, inline: list[str], path: Path | None) -> KeyRing:
        lines = list(inline)
        if path is not None:
            for raw in Path(path).read_text().splitlines():
                if raw.strip() and not raw.lstrip().startswith("#"):
                    lines.append(raw)
        return cls([parse_entry(line) for line in lines])

    @property
    def empty(self) -> bool:
        return not self.entries

    @property
    def tenants(self) -> list[str]:
        """The tenants requests can authenticate as (DEFAULT_TENANT, without keys)."""
        return sorted({e.tenant for e in self.entries}) if self.entries else [DEFAULT_TENANT]

    def tenant_for(self, key: str) -> str | None:
        """The tenant of a presented key. Every entry is compared, match or not, so the
        time taken says nothing about which hash matched or how much of it."""
        presented = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.sha256):
                found = entry.tenant
        return found
