"""What tests get from the `k8s_cluster` fixture: one interface for the test cluster this
suite starts (control plane + one real node) and for a cluster named by
JOBGATE_TEST_KUBECONFIG (kind, k3d, a real one)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import kubeconfig
from tests.cluster.control_plane import TestControlPlane, kubeconfig_for_service_account
from tests.cluster.forward import Forwarder
from tests.cluster.node import NODE_IP, SERVICES_IP


@dataclass
class K8sCluster:
    """kubeconfig: admin kubeconfig; server: API URL; bin_dir: holds kubectl (and helm)
    when known; work_dir: scratch space for the session."""

    kubeconfig: Path
    server: str
    bin_dir: Path | None
    work_dir: Path
    plane: TestControlPlane | None = None
    node_name: str | None = None
    started_in_s: float = 0.0
    forwarders: list[Forwarder] = field(default_factory=list)

    @property
    def local(self) -> bool:
        """True for the suite's own cluster (its node is this machine)."""
        return self.plane is not None

    @property
    def node_ip(self) -> str | None:
        return NODE_IP if self.local else None

    @classmethod
    def from_plane(cls, plane: TestControlPlane) -> K8sCluster:
        return cls(plane.kubeconfig, plane.server, plane.bin_dir, plane.work_dir, plane,
                   plane.node_name, plane.started_in_s)

    @classmethod
    def external(cls, path: Path, bin_dir: Path | None) -> K8sCluster:
        work = Path(tempfile.mkdtemp(prefix="jobgate-k8s-external-"))
        return cls(path, kubeconfig.server_of(path), bin_dir, work)

    def kubeconfig_for_service_account(self, namespace: str, name: str) -> Path:
        """A kubeconfig with a TokenRequest token for ServiceAccount namespace/name."""
        return kubeconfig_for_service_account(self.kubeconfig, self.work_dir, namespace, name)

    def expose_to_pods(self, port: int) -> str:
        """host:port at which pods reach the loopback service on `port` of this machine."""
        if not self.local:
            raise RuntimeError("an external cluster's pods cannot reach this machine's "
                               "loopback: run the gateway and S3 where its pods can")
        forwarder = Forwarder(SERVICES_IP, port).start()
        self.forwarders.append(forwarder)
        return forwarder.address

    def worker_reach_env(self, gateway_port: int, s3_port: int | None) -> dict[str, str]:
        """The settings that let a gateway's workers reach it (on gateway_port) and S3 (on
        s3_port), both on this machine's loopback: through forwarders on the node's
        services address, the one address their default-deny policy is opened to. Empty
        on an external cluster."""
        if not self.local:
            return {}
        gateway = self.expose_to_pods(gateway_port)
        env = {"JOBGATE_WORKER_GATEWAY_URL": f"http://{gateway}",
               "JOBGATE_K8S_EGRESS_CIDRS": f"{SERVICES_IP}/32"}
        if s3_port is not None:
            env["JOBGATE_S3_ENDPOINT"] = f"http://{self.expose_to_pods(s3_port)}"
        return env

    def close(self) -> None:
        for forwarder in self.forwarders:
            forwarder.stop()
        self.forwarders.clear()
