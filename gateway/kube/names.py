"""Names and labels on the Kubernetes objects jobgate makes (all carry ``managed-by``)."""

from __future__ import annotations

import re

MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"


def label_value(text: str) -> str:
    """A valid label value (<= 63 characters of [A-Za-z0-9_.-], alphanumeric at the ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")
    return value or "x"


def dns_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")[:40] or "x"
