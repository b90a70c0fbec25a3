"""The Kubernetes side of a benchmark run (``--executor kubernetes``), kept behind one
small interface so the driver never touches the control plane directly:

    with KubernetesTarget.start() as k8s:
        env = k8s.gateway_env("pooled")    # JOBGATE_* for a gateway in its own namespace
        before = k8s.api_writes()          # API server write requests so far
        ...
        per_call = (k8s.api_writes() - before) / invocations

The cluster is the test cluster of ``tests.cluster`` (real etcd, kube-apiserver,
controller manager and scheduler on 127.0.0.1, and one real node: kubelet, containerd,
runc, with the runtime images built from the repository's Dockerfiles), or the cluster a
``JOBGATE_TEST_KUBECONFIG`` names, exactly as the test suite chooses.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

EXTERNAL_ENV = "JOBGATE_TEST_KUBECONFIG"
# Each worker pod's requests (cpu, memory MiB): the pools and a burst fit the 2-core node.
K8S_REQUESTS = (0.02, 64)
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY")
_SAMPLE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class ClusterUnavailable(RuntimeError):
    pass


@dataclass
class KubernetesTarget:
    cluster: Any  # tests.cluster.handle.K8sCluster
    prefix: str  # of the namespaces, one per gateway
    namespaces: list[str] = field(default_factory=list)
    _tls_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jg-bench-")))

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    def start(cls) -> KubernetesTarget:
        try:
            from tests.cluster.binaries import BinariesError, find_bin_dir
            from tests.cluster.control_plane import TestControlPlane
            from tests.cluster.handle import K8sCluster
            from tests.cluster.images import ImageBuildError, build_all
            from tests.cluster.packages import PackagesError, ensure_node_packages
        except ImportError as e:
            raise ClusterUnavailable(f"the test control plane is not importable: {e}") from e
        external = os.environ.get(EXTERNAL_ENV)
        try:
            if external:
                kubectl = shutil.which("kubectl")
                cluster = K8sCluster.external(Path(external),
                                              Path(kubectl).parent if kubectl else None)
            else:
                # Builds the binaries and images once into ~/.cache/jobgate when cold.
                ensure_node_packages()
                bin_dir = find_bin_dir(build=True)
                plane = TestControlPlane.start(bin_dir, images=build_all())
                cluster = K8sCluster.from_plane(plane)
        except (BinariesError, ImageBuildError, PackagesError, OSError, RuntimeError) as e:
            raise ClusterUnavailable(f"could not start the test control plane: {e}") from e
        return cls(cluster, f"jobgate-bench-{uuid.uuid4().hex[:6]}")

    def stop(self) -> None:
        plane = getattr(self.cluster, "plane", None)
        if plane is not None:
            self.cluster.close()
            plane.stop()
        else:
            for namespace in self.namespaces:
                self.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        shutil.rmtree(self._tls_dir, ignore_errors=True)

    def __enter__(self) -> KubernetesTarget:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what the driver uses -----------------------------------------------------------

    @property
    def description(self) -> str:
        kind = "test control plane" if getattr(self.cluster, "local", False) \
            else f"external cluster ({EXTERNAL_ENV})"
        return f"{kind} at {self.cluster.server}"

    def gateway_env(self, name: str, *, gateway_port: int, s3_port: int | None
                    ) -> dict[str, str]:
        """The settings of gateway ``name`` (docs/configuration.md), in a namespace of its
        own: a later gateway must not claim the warm workers an earlier one left behind.
        It runs with the admin kubeconfig: the benchmark measures speed, the test suite
        checks the Role. On the test node, workers reach the gateway (gateway_port) and S3
        (s3_port), both on loopback, through forwarders on the node's services address."""
        namespace = f"{self.prefix}-{name}"
        if namespace not in self.namespaces:
            self.kubectl("create", "namespace", namespace)
            self.namespaces.append(namespace)
        return {
            "JOBGATE_EXECUTOR": "kubernetes",
            "JOBGATE_K8S_NAMESPACE": namespace,
            "JOBGATE_K8S_KUBECONFIG": str(self.cluster.kubeconfig),
            # A finished Job is deleted by the TTL controller (and its pod by the garbage
            # collector) after this long. The default (300 s) would push those writes out
            # of a one-minute window; at steady state they are part of every invocation.
            "JOBGATE_K8S_JOB_TTL_S": "5",
            "JOBGATE_K8S_IMAGE_PULL_POLICY": "Never",
            **self.cluster.worker_reach_env(gateway_port, s3_port),
        }

    def release(self, name: str, timeout_s: float = 90.0) -> None:
        """Deletes gateway ``name``'s namespace and waits (bounded) until it is gone, so
        its leftover worker pods do not load the node during the next gateway's run."""
        namespace = f"{self.prefix}-{name}"
        if namespace in self.namespaces:
            self.kubectl("delete", "namespace", namespace, f"--timeout={timeout_s:.0f}s",
                         check=False)
            self.namespaces.remove(namespace)

    def api_writes(self) -> dict[str, int]:
        """Write requests the API server has served, by ``verb resource``, from its own
        ``apiserver_request_total`` counter: every client counts (gateway, controllers,
        scheduler, node agent), which is the load an invocation really puts on the API."""
        text = self._get("/metrics")
        writes: dict[str, int] = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if not m:
                continue
            labels = dict(_LABEL.findall(m.group("labels")))
            if labels.get("verb") not in WRITE_VERBS:
                continue
            key = f"{labels['verb']} {labels.get('resource', '?')}"
            if labels.get("subresource"):
                key += f"/{labels['subresource']}"
            writes[key] = writes.get(key, 0) + int(float(m.group("value")))
        return writes

    # -- plumbing -----------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True) -> str:
        bin_dir = self.cluster.bin_dir
        exe = str(Path(bin_dir) / "kubectl") if bin_dir else "kubectl"
        proc = subprocess.run([exe, "--kubeconfig", str(self.cluster.kubeconfig), *args],
                              capture_output=True, text=True, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise ClusterUnavailable(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def _get(self, path: str) -> str:
        from tests.cluster import kubeconfig

        doc = kubeconfig.load(Path(self.cluster.kubeconfig))
        cluster = doc["clusters"][0]["cluster"]
        user = doc["users"][0]["user"]
        files: dict[str, Path] = {}
        for name, key in (("ca", "certificate-authority-data"),
                          ("crt", "client-certificate-data"), ("key", "client-key-data")):
            if key in (cluster if name == "ca" else user):
                path_ = self._tls_dir / name
                path_.write_bytes(base64.b64decode((cluster if name == "ca" else user)[key]))
                path_.chmod(0o600)
                files[name] = path_
        headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        tls = ssl.create_default_context(cafile=str(files["ca"]) if "ca" in files else None)
        if "crt" in files:
            tls.load_cert_chain(str(files["crt"]), str(files["key"]))
        with httpx.Client(verify=tls, headers=headers, timeout=10, trust_env=False) as client:
            resp = client.get(cluster["server"].rstrip("/") + path)
            resp.raise_for_status()
            return resp.text


# Writes that happen per unit of time whatever the load (leader lease, node heartbeat);
# everything else in the gateway's namespace is worker churn, i.e. per invocation.
BACKGROUND_RESOURCES = ("leases", "nodes")


def total(writes: dict[str, int]) -> int:
    return sum(writes.values())


def per_invocation(writes: dict[str, int]) -> int:
    return sum(n for key, n in writes.items()
               if key.split(" ", 1)[1].split("/")[0] not in BACKGROUND_RESOURCES)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
