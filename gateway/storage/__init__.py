"""Storage: the ObjectStore seam and its implementations."""

from __future__ import annotations

from gateway.config.settings import Settings
from gateway.storage.base import ObjectStore


def make_store(settings: Settings) -> ObjectStore:
    if settings.storage == "local":
        from gateway.storage.local import LocalStore

        return LocalStore(settings.data_dir)
    raise ValueError(f"storage {settings.storage!r} is not available in this build")
