"""The test cluster: etcd, kube-apiserver, kube-controller-manager and kube-scheduler with
free ports and one temp dir (the API server on the node IP, the rest on 127.0.0.1), and one
real node (tests/cluster/node.py).

    plane = TestControlPlane.start(bin_dir, images=build_all())
    ... plane.kubeconfig, plane.server ...
    plane.stop()   # stops everything, puts the host back, removes work_dir if it made it

Start order: etcd and kube-apiserver together (the API server retries etcd), then the
controller manager, the scheduler and the node once /readyz answers. Ready means: every
component's health endpoint, the node Ready and untainted, and the default ServiceAccount
created (pods cannot be created before it exists).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.cluster import kubeconfig
from tests.cluster.kube_client import KubeClient, KubeError
from tests.cluster.node import NODE_IP, NODE_NAME, SERVICE_CIDR, RealNode
from tests.cluster.pki import CertificateAuthority, service_account_keys
from tests.cluster.processes import (
    ManagedProcess,
    free_port,
    https_ok,
    insecure_context,
    wait_for,
)

START_TIMEOUT_S = 90.0
SA_TOKEN_SECONDS = 24 * 3600
CONTROLLERS = ",".join((
    "job-controller", "ttl-after-finished-controller", "garbage-collector-controller",
    "namespace-controller", "serviceaccount-controller", "serviceaccount-token-controller",
    # Publishes kube-root-ca.crt, which every pod's service-account volume projects.
    "root-ca-certificate-publisher-controller",
    # Cheap, and what a Helm chart's Deployment needs (later chart tests).
    "deployment-controller", "replicaset-controller", "endpointslice-controller",
    "cronjob-controller",
    # Lifts the not-ready taint once the kubelet reports Ready; marks a dead node NotReady.
    "node-lifecycle-controller",
))

WORK_PREFIX = "jobgate-k8s-"
KEEP_ENV = "JOBGATE_K8S_KEEP_WORK_DIR"  # set to keep logs and etcd data for a post-mortem
OWNER_FILE = "owner.pid"

T = TypeVar("T")


def remove_stale_work_dirs() -> None:
    """Removes temp dirs of harnesses that died without cleaning up (SIGKILL, OOM): their
    processes died with them (PDEATHSIG), their files did not."""
    for directory in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to completion from sync code, even inside a running event loop
    (pytest-asyncio tests): on its own loop in a worker thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class TestControlPlane:
    bin_dir: Path
    work_dir: Path
    images: dict[str, Path]
    server: str = ""
    kubeconfig: Path = field(init=False)
    processes: list[ManagedProcess] = field(default_factory=list)
    node: RealNode | None = None
    owns_work_dir: bool = False
    started_in_s: float = 0.0

    __test__ = False  # a class named Test* is not a pytest test class

    def __post_init__(self) -> None:
        self.kubeconfig = self.work_dir / "admin.kubeconfig"

    @property
    def node_name(self) -> str:
        return NODE_NAME

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls, bin_dir: Path, work_dir: Path | None = None, *, images: dict[str, Path]
    ) -> TestControlPlane:
        """images: {tag: docker-archive} the node imports (tests/cluster/images.build_all)."""
        owns = work_dir is None
        if owns:
            remove_stale_work_dirs()
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX)) if work_dir is None else work_dir
        work.mkdir(parents=True, exist_ok=True)
        (work / OWNER_FILE).write_text(str(os.getpid()))
        plane = cls(bin_dir, work, images, owns_work_dir=owns)
        try:
            plane._start()
        except BaseException:
            plane.stop()
            raise
        return plane

    def _start(self) -> None:
        began = time.monotonic()
        pki_dir = self.work_dir / "pki"
        logs = self.work_dir / "logs"
        for d in (pki_dir, logs):
            d.mkdir(parents=True, exist_ok=True)

        ca = CertificateAuthority(pki_dir)
        etcd_port, etcd_peer, api_port, kcm_port, sched_port = (free_port() for _ in range(5))
        # On the node IP: the host and the pods reach it there, nothing else does.
        self.server = f"https://{NODE_IP}:{api_port}"
        kubernetes_service_ip = str(ipaddress.ip_network(SERVICE_CIDR)[1])
        serving = ca.issue("apiserver", "kube-apiserver", server=True,
                           dns=("localhost", "kubernetes", "kubernetes.default",
                                "kubernetes.default.svc"),
                           ips=("127.0.0.1", NODE_IP, kubernetes_service_ip))
        admin = ca.issue("admin", "jobgate-test-admin", orgs=("system:masters",), client=True)
        # What the API server presents to the kubelet (logs, exec, port-forward).
        kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                  orgs=("system:masters",), client=True)
        sa = service_account_keys(pki_dir)
        kubeconfig.write(self.kubeconfig, kubeconfig.client_cert_config(
            self.server, ca.pair.cert_pem, admin.cert_pem, admin.key_pem))

        etcd = self._process("etcd", [
            "--name=jobgate-test", f"--data-dir={self.work_dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=jobgate-test=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync",  # test data: durability buys nothing, fsync costs seconds
            "--log-level=warn",
        ])
        apiserver = self._process("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}",
            f"--secure-port={api_port}",
            f"--cert-dir={self.work_dir / 'apiserver-certs'}",
            f"--tls-cert-file={serving.cert_path}", f"--tls-private-key-file={serving.key_path}",
            f"--client-ca-file={ca.pair.cert_path}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={sa.cert_path}",
            f"--service-account-signing-key-file={sa.key_path}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={kubelet_client.cert_path}",
            f"--kubelet-client-key={kubelet_client.key_path}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ])
        self.node = RealNode(self.bin_dir, self.work_dir, self.server, ca, self.kubeconfig,
                             self.images)
        self.node.prepare()
        etcd.start()
        apiserver.start()
        ca_context = ssl.create_default_context(cafile=str(ca.pair.cert_path))
        ca_context.load_cert_chain(admin.cert_path, admin.key_path)
        wait_for("kube-apiserver /readyz",
                 lambda: https_ok(f"{self.server}/readyz", ca_context),
                 timeout=START_TIMEOUT_S, watch=[etcd, apiserver])

        shared = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--v=1",
        ]
        kcm = self._process("kube-controller-manager", [
            *shared, f"--secure-port={kcm_port}",
            f"--cert-dir={self.work_dir / 'kcm-certs'}",
            f"--controllers={CONTROLLERS}",
            f"--root-ca-file={ca.pair.cert_path}",
            f"--service-account-private-key-file={sa.key_path}",
            "--use-service-account-credentials=false",
        ])
        scheduler = self._process("kube-scheduler", [
            *shared, f"--secure-port={sched_port}",
            f"--cert-dir={self.work_dir / 'scheduler-certs'}",
        ])
        for proc in (kcm, scheduler):
            proc.start()
        insecure = insecure_context()
        everything = [etcd, apiserver, kcm, scheduler]
        wait_for("kube-controller-manager /healthz",
                 lambda: https_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure),
                 timeout=START_TIMEOUT_S, watch=everything)
        wait_for("kube-scheduler /healthz",
                 lambda: https_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure),
                 timeout=START_TIMEOUT_S, watch=everything)
        run_async(self._bind_node_role())
        self.node.start()
        wait_for("node Ready and default ServiceAccount", lambda: run_async(self._api_ready()),
                 timeout=START_TIMEOUT_S, interval=0.2, watch=everything + self.node.processes)
        self.node.start_firewall()
        self.started_in_s = time.monotonic() - began

    def _process(self, binary: str, args: list[str]) -> ManagedProcess:
        proc = ManagedProcess(binary, [str(self.bin_dir / binary), *args],
                              self.work_dir / "logs" / f"{binary}.log", cwd=self.work_dir)
        self.processes.append(proc)
        return proc

    async def _bind_node_role(self) -> None:
        """RBAC is the only authorizer (no Node authorizer): bind system:node to the nodes."""
        async with await KubeClient.from_kubeconfig(self.kubeconfig) as kube:
            await kube.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "jobgate-test-nodes"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:node"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                              "name": "system:nodes"}],
            })

    async def _api_ready(self) -> bool:
        async with await KubeClient.from_kubeconfig(self.kubeconfig) as kube:
            try:
                node = await kube.get(f"/api/v1/nodes/{NODE_NAME}")
                await kube.get("/api/v1/namespaces/default/serviceaccounts/default")
                await kube.get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
            except KubeError:
                return False
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return ready and not (node.get("spec") or {}).get("taints")

    def stop(self) -> None:
        """The node first (its containers, daemons and host state), then the control plane
        in reverse start order, then the work dir."""
        if self.node is not None:
            self.node.stop()
            self.node = None
        for proc in reversed(self.processes):
            proc.stop(grace=10.0)
        self.processes.clear()
        if self.owns_work_dir and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> TestControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests -------------------------------------------------------------------

    def kubeconfig_for_service_account(self, namespace: str, name: str) -> Path:
        return kubeconfig_for_service_account(self.kubeconfig, self.work_dir, namespace, name)


def kubeconfig_for_service_account(
    admin_kubeconfig: Path, out_dir: Path, namespace: str, name: str,
    seconds: int = SA_TOKEN_SECONDS,
) -> Path:
    """A kubeconfig authenticating as ServiceAccount namespace/name, with a token from the
    TokenRequest API, so a test can run code with exactly the RBAC that account has."""
    async def token() -> str:
        async with await KubeClient.from_kubeconfig(admin_kubeconfig) as kube:
            answer = await kube.create(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                 "spec": {"expirationSeconds": seconds}},
            )
        return str(answer["status"]["token"])

    base = kubeconfig.load(admin_kubeconfig)
    doc = kubeconfig.token_config(base, admin_kubeconfig.parent, run_async(token()), namespace,
                                  f"system:serviceaccount:{namespace}:{name}")
    out = out_dir / "service-accounts"
    out.mkdir(parents=True, exist_ok=True)
    return kubeconfig.write(out / f"{namespace}.{name}.kubeconfig", doc)


def describe(plane: TestControlPlane) -> str:
    return json.dumps({"server": plane.server, "kubeconfig": str(plane.kubeconfig),
                       "work_dir": str(plane.work_dir), "started_in_s": plane.started_in_s})

