"""The test cluster's real node (test infrastructure): kubelet, containerd, runc, the CNI
bridge, kube-proxy and kube-router's NetworkPolicy firewall, joined to the test control
plane, with images built from the repository's Dockerfiles imported.

    node = RealNode(bin_dir, work_dir, server, ca, admin_kubeconfig)
    node.start()     # Ready, untainted, images imported
    node.stop()      # pods, daemons, then the host state back as it was

One real node per machine: it owns the bridge ``cni0`` (10.88.0.1/16, the node IP), its run
directory /run/jobgate-node and host paths the daemons fix (host_state.py). A lock keeps a
second harness out; a harness that died is cleaned up by the next start. The facts behind
every setting are in ../shared/notes/real-node.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

from tests.cluster import host_state, kubeconfig
from tests.cluster.images import PAUSE_IMAGE, cache_root
from tests.cluster.pki import CertificateAuthority
from tests.cluster.processes import ManagedProcess, wait_for

NODE_NAME = "jobgate-test-node"
BRIDGE = "cni0"
BRIDGE_MAC = "02:6a:67:00:00:01"  # locally administered (the 02 bit), ours
NODE_IP = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
# Where host services the workers may use (the gateway's worker port, S3) are exposed:
# a second address on the bridge, outside the pods' range, so a policy can allow it and
# still deny the node's own services (the kubelet on NODE_IP).
SERVICES_IP = "10.88.0.2"
POD_RANGE_START = "10.88.1.1"
SERVICE_CIDR = "10.0.0.0/24"  # the API server's --service-cluster-ip-range
FENCE_CHAIN = "JOBGATE-NODE-FENCE"
RUN_DIR = Path("/run/jobgate-node")
LOCK_PATH = Path("/run/jobgate-node.lock")
READY_TIMEOUT_S = 90.0
MAX_PODS = 250
PODS_PIDS_LIMIT = 1024


class NodeError(RuntimeError):
    pass


def _sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


class RealNode:
    def __init__(self, bin_dir: Path, work_dir: Path, server: str, ca: CertificateAuthority,
                 admin_kubeconfig: Path, images: dict[str, Path]) -> None:
        self.bin_dir = bin_dir
        self.dir = work_dir / "node"
        self.server = server
        self.ca = ca
        self.admin_kubeconfig = admin_kubeconfig
        self.images = images
        self.containerd_root = cache_root() / "node" / "containerd"
        self.processes: list[ManagedProcess] = []
        self._lock: IO[str] | None = None
        self.record: host_state.HostRecord | None = None

    @property
    def socket(self) -> Path:
        return RUN_DIR / "containerd" / "containerd.sock"

    @property
    def record_path(self) -> Path:
        return RUN_DIR / "host-record.json"

    # -- start ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """The node's network, before the control plane: the API server listens on the
        node IP, where pods (a gateway installed by the chart) reach it."""
        self._take_lock()
        clean_leftovers()  # of a harness that died without its teardown
        RUN_DIR.mkdir(mode=0o700, exist_ok=True)
        self.record = host_state.HostRecord.take()
        self.record.mount_roots.append(str(self.dir / "kubelet"))
        self.record.save(self.record_path)
        self._make_bridge()

    def start(self) -> None:
        """containerd, the images, the kubelet and kube-proxy (after prepare)."""
        self._write_files()
        containerd = self._daemon("containerd", [
            str(self.bin_dir / "containerd"), "--config", str(self.dir / "etc/containerd.toml")],
            path_first=self.bin_dir)
        containerd.start()
        self._remember(containerd)
        wait_for("containerd socket", self.socket.exists, timeout=30, watch=[containerd])
        self._import_images()
        kubelet = self._daemon("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={self.dir / 'etc/kubelet.yaml'}",
            f"--kubeconfig={self.dir / 'etc/kubelet.kubeconfig'}",
            f"--root-dir={self.dir / 'kubelet'}", f"--cert-dir={self.dir / 'kubelet/pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1"])
        proxy = self._daemon("kube-proxy", [
            str(self.bin_dir / "kube-proxy"), f"--config={self.dir / 'etc/kube-proxy.yaml'}",
            "--v=1"])
        for proc in (kubelet, proxy):
            proc.start()
            self._remember(proc)

    def start_firewall(self) -> None:
        """kube-router's NetworkPolicy firewall; it needs the Node object, so it starts once
        the kubelet has registered it. Ready when its chains are in iptables."""
        router = self._daemon("kube-router", [
            str(self.bin_dir / "kube-router"), f"--kubeconfig={self.admin_kubeconfig}",
            f"--hostname-override={NODE_NAME}", "--run-firewall=true", "--run-router=false",
            "--run-service-proxy=false", "--enable-cni=false", "--metrics-port=0",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--health-port=0", "--v=1"])
        router.start()
        self._remember(router)
        wait_for("kube-router's firewall chains", _firewall_ready, timeout=60,
                 watch=self.processes)

    def _take_lock(self) -> None:
        lock = LOCK_PATH.open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NodeError(f"another test node runs on this machine ({LOCK_PATH} is locked):"
                            " one real node per machine") from None
        self._lock = lock

    def _daemon(self, name: str, argv: list[str], *, path_first: Path | None = None
                ) -> ManagedProcess:
        env = dict(os.environ)
        if path_first is not None:  # containerd finds its shim on PATH: ours, not Debian's
            env["PATH"] = f"{path_first}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        proc = ManagedProcess(name, argv, self.dir / "logs" / f"{name}.log", env=env,
                              cwd=self.dir)
        self.processes.append(proc)
        return proc

    def _remember(self, proc: ManagedProcess) -> None:
        assert self.record is not None
        self.record.processes.append((proc.pid, proc.argv[0]))
        self.record.save(self.record_path)

    def _make_bridge(self) -> None:
        host_state.remove_link(BRIDGE)
        # A bridge whose address is not set takes the lowest of its ports' addresses, so it
        # changes as pods come and go; pods then send to the node IP under a stale MAC and
        # their connections to the node time out until ARP runs again (seen as S3 and API
        # timeouts from gateway pods during a rollout). A fixed address does not move.
        _sh("ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
        _sh("ip", "addr", "add", f"{NODE_IP}/16", "dev", BRIDGE)
        _sh("ip", "addr", "add", f"{SERVICES_IP}/32", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        # A Service address kube-proxy has not (yet) translated must not leave the machine
        # by its default route: to the bridge, where nobody answers for it.
        _sh("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE)
        # Nor may any pod's packet leave it (the bridge plugin turns ip_forward on): pods
        # talk to the node and to each other, nothing else.
        _sh("iptables", "-w", "5", "-N", FENCE_CHAIN)
        _sh("iptables", "-w", "5", "-A", FENCE_CHAIN, "-d", POD_CIDR, "-j", "RETURN")
        _sh("iptables", "-w", "5", "-A", FENCE_CHAIN, "-j", "REJECT")
        _sh("iptables", "-w", "5", "-I", "FORWARD", "-s", POD_CIDR, "-j", FENCE_CHAIN)
        # Bridged pod-to-pod packets must cross iptables, or no policy sees them.
        for name in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
            host_state.write_sysctl(name, "1")

    def _write_files(self) -> None:
        d = self.dir
        for sub in ("etc", "pki", "logs", "kubelet/pki", "kubelet-logs/pods", "cni/net.d",
                    "cni/ipam"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.ca.pair.cert_path, d / "pki/ca.crt")
        node = self.ca.issue("node", f"system:node:{NODE_NAME}", orgs=("system:nodes",),
                             client=True)
        kubeconfig.write(d / "etc/kubelet.kubeconfig", kubeconfig.client_cert_config(
            self.server, self.ca.pair.cert_pem, node.cert_pem, node.key_pem,
            user=f"system:node:{NODE_NAME}"))
        proxy = self.ca.issue("kube-proxy", "system:kube-proxy", client=True)
        kubeconfig.write(d / "etc/kube-proxy.kubeconfig", kubeconfig.client_cert_config(
            self.server, self.ca.pair.cert_pem, proxy.cert_pem, proxy.key_pem,
            user="system:kube-proxy"))
        (d / "etc/containerd.toml").write_text(CONTAINERD_TOML.format(
            root=self.containerd_root, state=RUN_DIR / "containerd", sock=self.socket,
            pause=PAUSE_IMAGE, cni_conf=d / "cni/net.d"))
        (d / "cni/net.d/10-jobgate.conflist").write_text(json.dumps(cni_conflist(d / "cni/ipam"),
                                                                     indent=2))
        (d / "etc/kubelet.yaml").write_text(KUBELET_YAML.format(
            node_ip=NODE_IP, ca=d / "pki/ca.crt", sock=self.socket, logs=d / "kubelet-logs/pods",
            max_pods=MAX_PODS, pids=PODS_PIDS_LIMIT))
        (d / "etc/kube-proxy.yaml").write_text(KUBE_PROXY_YAML.format(
            kubeconfig=d / "etc/kube-proxy.kubeconfig", node=NODE_NAME, cidr=POD_CIDR,
            node_ip=NODE_IP))

    def ctr(self, *args: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return _sh(str(self.bin_dir / "ctr"), f"--address={self.socket}", "-n", "k8s.io", *args,
                   timeout=timeout, check=check)

    def _import_images(self) -> None:
        """Imports each archive unless containerd (whose root the cache keeps) has it."""
        record = self.containerd_root / "imported.json"
        try:
            imported: dict[str, str] = json.loads(record.read_text())
        except (OSError, ValueError):
            imported = {}
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        for tag, archive in self.images.items():
            if imported.get(tag) == archive.name and tag in present:
                continue
            self.ctr("images", "import", str(archive), timeout=300)
            imported[tag] = archive.name
            record.write_text(json.dumps(imported))

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Daemons in reverse order, then whatever they left on the host."""
        kubelet = next((p for p in self.processes if p.name == "kubelet"), None)
        for proc in reversed(self.processes):
            if proc.name == "containerd":
                self._remove_containers()
            proc.stop(grace=10.0)
            if proc is kubelet:
                self._remove_containers()
        self.processes.clear()
        teardown(self.record, self.bin_dir)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _remove_containers(self) -> None:
        """Shims outlive containerd: end every task through it while it still runs."""
        if not self.socket.exists():
            return
        with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
            for task in self.ctr("tasks", "ls", "-q", timeout=30).stdout.split():
                self.ctr("tasks", "kill", "-s", "KILL", task, check=False, timeout=30)
            time.sleep(0.5)
            for container in self.ctr("containers", "ls", "-q", timeout=30).stdout.split():
                self.ctr("tasks", "delete", "-f", container, check=False, timeout=30)
                self.ctr("containers", "rm", container, check=False, timeout=30)


def _firewall_ready() -> bool:
    return _sh("iptables", "-w", "5", "-S", "KUBE-ROUTER-FORWARD", check=False).returncode == 0


def clean_leftovers() -> None:
    """The host state of a node whose harness died (SIGKILL, OOM) before its teardown."""
    record = host_state.HostRecord.load(RUN_DIR / "host-record.json")
    if record is None and not Path(f"/sys/class/net/{BRIDGE}").exists():
        return
    teardown(record, None)


def teardown(record: host_state.HostRecord | None, bin_dir: Path | None) -> None:
    """Everything the node's daemons leave on the host, in the order that lets it go."""
    if record is not None:
        for pid, prefix in record.processes:
            host_state.kill_if_ours(pid, prefix)
    # Shims (their own sessions) and the containers they hold: named by our socket path.
    for pid in host_state.processes_matching(str(RUN_DIR / "containerd")):
        host_state.kill_if_ours(pid, host_state.command_line(pid) or "\0")
    if bin_dir is not None:  # its nftables canary tables, besides its iptables chains
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([str(bin_dir / "kube-proxy"), "--cleanup"], capture_output=True,
                           timeout=60, check=False)
    if record is not None:
        host_state.remove_new_chains(record.chains)
        host_state.remove_new_ipsets(record.sets)
    time.sleep(0.2)
    host_state.delete_runc_containers(RUN_DIR)
    roots = [Path(r) for r in record.mount_roots] if record is not None else []
    host_state.unmount_below(RUN_DIR, *roots)
    host_state.remove_netns()
    host_state.remove_link(BRIDGE)
    host_state.remove_cgroup_trees()
    if record is not None:
        host_state.restore(record)
    shutil.rmtree(RUN_DIR, ignore_errors=True)


def cni_conflist(ipam_dir: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "jobgate-pods",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
            "hairpinMode": True,
            "ipam": {"type": "host-local",
                     "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP,
                                  "rangeStart": POD_RANGE_START}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)},
        }],
    }


CONTAINERD_TOML = """\
version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "warn"
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{pause}"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    disable_apparmor = true
    # No CAP_SYS_RESOURCE here: the sandbox asks oom_score_adj -998 and runc gets EPERM.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = "/usr/sbin/runc"
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "{cni_conf}"
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
"""

KUBELET_YAML = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {node_ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
podPidsLimit: {pids}
containerRuntimeEndpoint: unix://{sock}
podLogsDir: {logs}
serializeImagePulls: false
registerNode: true
maxPods: {max_pods}
resolvConf: /etc/resolv.conf
# A busy 2-core machine: no eviction and no image GC on a nearly full disk.
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%",
               nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
shutdownGracePeriod: 0s
# Pod status reaches the API server sooner (the warm pool waits on Ready).
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
"""

KUBE_PROXY_YAML = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
mode: iptables
hostnameOverride: {node}
clusterCIDR: {cidr}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["{node_ip}/32"]
# The host's conntrack sysctls stay untouched.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"""
