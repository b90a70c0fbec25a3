"""Kubeconfig files: written as JSON (valid YAML, so kubectl and every client read them).

Certificates are embedded (``*-data``) so a kubeconfig stays usable when copied, e.g. to
.jobgate/cluster/kubeconfig by `make cluster-up`.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

CLUSTER = "jobgate-test"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(path: Path, doc: dict[str, Any]) -> Path:
    """Atomic write, mode 0600 (it holds credentials)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def client_cert_config(
    server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str = "admin"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CLUSTER,
            "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": _b64(cert_pem),
                "client-key-data": _b64(key_pem),
            },
        }],
        "contexts": [{"name": CLUSTER, "context": {"cluster": CLUSTER, "user": user}}],
        "current-context": CLUSTER,
    }


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a kubeconfig")
    return doc


def current_cluster(doc: dict[str, Any]) -> dict[str, Any]:
    """The `cluster` entry the current context points at (server, CA, TLS options)."""
    context_name = doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts", [])}
    if context_name not in contexts:
        raise ValueError(f"kubeconfig has no current context {context_name!r}")
    cluster_name = contexts[context_name]["cluster"]
    for entry in doc.get("clusters", []):
        if entry["name"] == cluster_name:
            cluster: dict[str, Any] = entry["cluster"]
            return cluster
    raise ValueError(f"kubeconfig has no cluster {cluster_name!r}")


def server_of(path: Path) -> str:
    return str(current_cluster(load(path))["server"])


def token_config(
    base: dict[str, Any], base_dir: Path, token: str, namespace: str, user: str
) -> dict[str, Any]:
    """A kubeconfig for `base`'s current cluster, authenticating with a bearer token."""
    cluster = dict(current_cluster(base))
    # A file path in the base kubeconfig is relative to it; embed the CA instead.
    ca_file = cluster.pop("certificate-authority", None)
    if ca_file and "certificate-authority-data" not in cluster:
        cluster["certificate-authority-data"] = _b64((base_dir / ca_file).read_bytes())
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{
            "name": user,
            "context": {"cluster": CLUSTER, "user": user, "namespace": namespace},
        }],
        "current-context": user,
    }
