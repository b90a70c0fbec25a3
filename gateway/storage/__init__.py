"""Storage: the ObjectStore seam and its implementations."""

from __future__ import annotations

from gateway.config.settings import Settings
from gateway.errors import ConfigError
from gateway.storage.base import ObjectStore


def make_store(settings: Settings) -> ObjectStore:
    if settings.storage == "local":
        from gateway.storage.local import LocalStore

        return LocalStore(settings.data_dir)
    if settings.storage == "s3":
        # Imported lazily: aioboto3 is heavy, and the local default never needs it.
        try:
            from gateway.storage.s3 import S3Store
        except ModuleNotFoundError as e:
            raise ConfigError(f"S3 storage needs {e.name}: pip install 'jobgate[s3]'") \
                from None
        return S3Store(settings)
    raise ValueError(f"storage {settings.storage!r} is not available in this build")
