"""What tests get from the `k8s_cluster` fixture: one interface for the test control plane
this suite starts and for a real cluster named by JOBGATE_TEST_KUBECONFIG."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import kubeconfig
from tests.cluster.control_plane import TestControlPlane, kubeconfig_for_service_account
from tests.cluster.image_map import add_fail_pull, add_image


@dataclass
class K8sCluster:
    """kubeconfig: admin kubeconfig; server: API URL; bin_dir: holds kubectl (and helm)
    when known; image_map_path: the test node agent's image map (None on a real cluster,
    which pulls real images)."""

    kubeconfig: Path
    server: str
    bin_dir: Path | None
    image_map_path: Path | None
    work_dir: Path
    plane: TestControlPlane | None = None
    node_name: str | None = None
    started_in_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        """True for the suite's own control plane (pods run as local processes)."""
        return self.plane is not None

    @classmethod
    def from_plane(cls, plane: TestControlPlane) -> K8sCluster:
        return cls(plane.kubeconfig, plane.server, plane.bin_dir, plane.image_map_path,
                   plane.work_dir, plane, plane.node_name, plane.started_in_s)

    @classmethod
    def external(cls, path: Path, bin_dir: Path | None) -> K8sCluster:
        work = Path(tempfile.mkdtemp(prefix="jobgate-k8s-external-"))
        return cls(path, kubeconfig.server_of(path), bin_dir, None, work)

    def kubeconfig_for_service_account(self, namespace: str, name: str) -> Path:
        """A kubeconfig with a TokenRequest token for ServiceAccount namespace/name."""
        return kubeconfig_for_service_account(self.kubeconfig, self.work_dir, namespace, name)

    def add_image(self, image: str, entry: dict[str, Any] | list[str]) -> None:
        """Maps an image (with or without tag) to a local command for pods started later."""
        if self.image_map_path is None:
            raise RuntimeError("a real cluster runs real images: there is no image map")
        add_image(self.image_map_path, image, entry)

    def fail_pull(self, image: str) -> None:
        """Makes the node agent report ErrImagePull/ImagePullBackOff for this image."""
        if self.image_map_path is None:
            raise RuntimeError("a real cluster runs real images: there is no image map")
        add_fail_pull(self.image_map_path, image)
