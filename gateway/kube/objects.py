"""Raw Kubernetes objects as the API returns them (parsed JSON), and the one reader of the
timestamps they carry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

# A Kubernetes object (or a patch, a listing, a watch event's object) as plain JSON: read
# through the typed views of its users (``executors.kubernetes.pods.Pod``), never passed on.
Obj = dict[str, Any]


def parse_time(value: str | None) -> datetime | None:
    """A time as Kubernetes writes it (RFC 3339, ``Z``, seconds or microseconds: a
    ``creationTimestamp``, a Lease's ``renewTime``), or None when there is none."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def created_at(obj: Obj) -> float | None:
    """When the object was created (its ``metadata.creationTimestamp``), in epoch seconds."""
    created = parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    return created.timestamp() if created is not None else None
