"""What the test node changes on the host, recorded before it starts and put back after
(test infrastructure): sysctls, fixed paths, iptables chains, mounts, the pod bridge,
cgroups and the processes it left.

The kubelet, containerd, kube-proxy and kube-router each write host state they never
remove (../shared/notes/real-node.md §11 lists what and why). A record is saved as JSON in
the node's run directory, so a harness killed with SIGKILL is cleaned up by the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Set by the kubelet (protectKernelDefaults false), the bridge plugin and kube-proxy, or by
# the node itself (bridge netfilter, so NetworkPolicy sees pod-to-pod traffic).
SYSCTLS = (
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet", "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
)
# Paths the daemons use whatever roots they are given; removed only if the start made them.
FIXED_PATHS = (
    "/var/lib/kubelet/device-plugins/kubelet.sock", "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd/s",
    "/run/containerd/runc/k8s.io", "/run/containerd/runc", "/run/containerd", "/run/netns",
    "/var/lib/cni/results", "/var/lib/cni/networks", "/var/lib/cni", "/etc/cni/net.d/cni.lock",
    "/etc/cni/net.d", "/etc/cni", "/var/run/nri", "/var/lib/kube-router",
    "/var/lib/kube-router/kubeconfig",
)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        _sysctl_path(name).write_text(value)


@dataclass
class HostRecord:
    """The host before the node started; saved to disk so a later start can restore it."""

    sysctls: dict[str, str] = field(default_factory=dict)
    existing_paths: list[str] = field(default_factory=list)
    # (pid, command-line prefix) of every daemon started, to end leftovers safely.
    processes: list[tuple[int, str]] = field(default_factory=list)
    # Directories whose mounts outlive the daemons (the kubelet's rshared root bind).
    mount_roots: list[str] = field(default_factory=list)
    # The kubelet re-creates its chains every minute and never removes them; kube-proxy
    # and kube-router leave theirs too (kube-router's own cleanup misses its filter chains).
    chains: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)

    @classmethod
    def take(cls) -> HostRecord:
        sysctls = {n: v for n in SYSCTLS if (v := read_sysctl(n)) is not None}
        return cls(sysctls, [p for p in FIXED_PATHS if os.path.lexists(p)],
                   chains=iptables_chains(), sets=ipsets())

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> HostRecord | None:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(doc["sysctls"], doc["existing_paths"],
                   [(int(p), str(c)) for p, c in doc.get("processes", [])],
                   list(doc.get("mount_roots", [])), doc.get("chains", {}),
                   list(doc.get("sets", [])))


def command_line(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def kill_if_ours(pid: int, prefix: str, *, sig: int = signal.SIGKILL) -> bool:
    """Signals pid only while its command line still starts with prefix (pids wrap)."""
    line = command_line(pid)
    if line is None or not line.startswith(prefix):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    return True


def processes_matching(needle: str) -> list[int]:
    """Pids whose command line contains needle (shims name the node's socket path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            line = command_line(int(entry.name))
            if line and needle in line:
                found.append(int(entry.name))
    return found


RUNC_ROOT = "/run/containerd/runc/k8s.io"  # the shim's default, whatever containerd's state


def delete_runc_containers(bundle_root: Path) -> None:
    """Containers whose shim died with containerd keep running under runc: delete those
    whose bundle lies under bundle_root (never anyone else's)."""
    if not Path(RUNC_ROOT).is_dir():
        return
    listing = subprocess.run(["runc", "--root", RUNC_ROOT, "list", "--format", "json"],
                             capture_output=True, text=True, timeout=30, check=False)
    try:
        containers = json.loads(listing.stdout or "[]") or []
    except ValueError:
        return
    for container in containers:
        if str(container.get("bundle", "")).startswith(f"{bundle_root}/"):
            subprocess.run(["runc", "--root", RUNC_ROOT, "delete", "--force", container["id"]],
                           capture_output=True, timeout=30, check=False)


IPTABLES = ("iptables", "ip6tables")
# Chains the node's daemons make (the kubelet's, kube-proxy's, kube-router's) and its own.
OUR_CHAIN_PREFIXES = ("KUBE-", "JOBGATE-")


def _iptables(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True,
                          timeout=30, check=False)


def iptables_chains() -> dict[str, dict[str, list[str]]]:
    """{binary: {table: [chain, ...]}} of the chains whose names the daemons use."""
    found: dict[str, dict[str, list[str]]] = {}
    for binary in IPTABLES:
        if shutil.which(f"{binary}-save") is None:
            continue
        proc = subprocess.run([f"{binary}-save"], capture_output=True, text=True, timeout=30,
                              check=False)
        table = ""
        for line in proc.stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and line[1:].startswith(OUR_CHAIN_PREFIXES):
                found.setdefault(binary, {}).setdefault(table, []).append(line[1:].split()[0])
    return found


def remove_new_chains(before: dict[str, dict[str, list[str]]]) -> None:
    """Every daemon-made chain that did not exist before: the rules that jump to it first,
    then its own rules, then the chain."""
    for binary, tables in iptables_chains().items():
        for table, chains in tables.items():
            new = [c for c in chains if c not in before.get(binary, {}).get(table, [])]
            if not new:
                continue
            rules = _iptables(binary, "-t", table, "-S").stdout.splitlines()
            for rule in rules:
                words = shlex.split(rule)  # comments are quoted
                if (len(words) > 2 and words[0] == "-A" and words[1] not in new
                        and any(w in new for w in words[2:])):
                    _iptables(binary, "-t", table, "-D", *words[1:])
            for chain in new:
                _iptables(binary, "-t", table, "-F", chain)
            for chain in new:
                _iptables(binary, "-t", table, "-X", chain)


def ipsets() -> list[str]:
    if shutil.which("ipset") is None:
        return []
    proc = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, timeout=30,
                          check=False)
    return proc.stdout.split()


def remove_new_ipsets(before: list[str]) -> None:
    for name in ipsets():
        if name not in before:
            subprocess.run(["ipset", "destroy", name], capture_output=True, timeout=30,
                           check=False)


def unmount_below(*roots: Path) -> None:
    """Every mount under the roots, deepest first (lazily if busy)."""
    prefixes = tuple(f"{root}/" for root in roots) + tuple(str(r) for r in roots)
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    points = [p.replace("\\040", " ") for p in points]
    for point in sorted({p for p in points if p.startswith(prefixes)}, key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_netns() -> None:
    for ns in Path("/run/netns").glob("cni-*"):
        subprocess.run(["umount", str(ns)], capture_output=True, check=False)
        ns.unlink(missing_ok=True)


def remove_link(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def remove_cgroup_trees(name: str = "kubepods") -> None:
    """The kubelet's (by then empty) QoS tree in every v1 hierarchy and in v2."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        tree = hierarchy / name
        if not tree.is_dir():
            continue
        for _ in range(3):  # a pod cgroup may take a moment to empty after its last task
            dirs = sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, tree]:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not tree.exists():
                break
            time.sleep(0.5)


def restore(record: HostRecord) -> None:
    for name, value in record.sysctls.items():
        if read_sysctl(name) != value:
            write_sysctl(name, value)
    existed = set(record.existing_paths)
    for path in FIXED_PATHS:  # files first, then directories deepest first (list order)
        if path in existed or not os.path.lexists(path):
            continue
        p = Path(path)
        if p.is_dir() and not p.is_symlink():
            # The start made it, so what is in it is the node's (pod log links, locks).
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
