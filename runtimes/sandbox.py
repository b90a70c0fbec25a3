"""The local executor's sandbox: Linux namespaces, a read-only root assembled from bind
mounts, and a private, size-limited scratch filesystem per worker (standard library only).

Why by hand and not bubblewrap: bwrap sets up its namespaces and then *execs* a program.
A Python worker is a fork of a pre-imported interpreter and must enter its sandbox after
that fork without starting a new one, so the same few system calls bwrap makes (unshare,
mount, pivot_root) are made here through ctypes. The seccomp filter is built by
libseccomp (seccomp_filter.py); cgroups are in cgroups.py.

Three processes take part, each at its own moment, so that as little as possible is left
for the moment an invocation arrives:

zygote  once per profile: ``enter_private_mounts()`` and ``RootTemplate.build()`` - a
        mount namespace of its own that holds the read-only root every worker sees.
worker  at spawn, ahead of need: ``Scratch.mount()`` - in a mount namespace of its own, one
        tmpfs of the profile's workspace size, split into /workspace, /tmp, /var/tmp and
        /dev/shm, bound into its copy of the root; then ``spawn_init()``.
init    pid 1 of a new pid namespace: new mount, ipc, uts and cgroup namespaces, its own
        /proc, ``pivot_root`` into the root (the host's filesystem is detached, not just
        hidden), then it waits for the run. Its one child runs the code; when init exits,
        the kernel kills whatever the code left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import stat
import struct
from collections.abc import Callable, Iterable
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# pivot_root has no glibc wrapper: its number per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203,
                   "s390x": 217, "loongarch64": 41}

HOSTNAME = "jobgate"
WORKSPACE = "/workspace"
# Top-level host directories the code may read: the system's programs and libraries.
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# From /etc only what programs need to run: no shadow, no host keys, no local config.
ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "nsswitch.conf", "host.conf", "gai.conf", "resolv.conf",
    "localtime", "timezone", "protocols", "services", "mime.types", "os-release",
    "debian_version", "shells", "inputrc", "bash.bashrc", "networks", "ethertypes",
    "ssl/openssl.cnf", "magic", "papersize",
)
ETC_DIRS = ("ld.so.conf.d", "alternatives", "ssl/certs", "ca-certificates")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Mount points the root template carries, filled per worker or per init.
MOUNT_POINTS = ("workspace", "tmp", "var/tmp", "dev/shm", "proc")
# The scratch tmpfs holds these; each is bound at its place in the root.
SCRATCH_BINDS = (("workspace", "workspace"), ("tmp", "tmp"), ("var-tmp", "var/tmp"),
                 ("shm", "dev/shm"))

_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc().setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    def b(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(_libc().mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data)),
           f"mount {target}")


def bind_readonly(source: str, target: str) -> None:
    """A bind mount that cannot be written, and where set-uid bits and devices do nothing."""
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def pivot_root(new_root: str) -> None:
    """Make ``new_root`` the root and detach the old one: pivot_root(".", ".") stacks the
    old root on the new one, and the lazy unmount takes it away."""
    os.chdir(new_root)
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown on {platform.machine()}")
    _check(_libc().syscall(number, b".", b"."), "pivot_root")
    _check(_libc().umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def available() -> str | None:
    """None when this process can build sandboxes; else why not, in a few words."""
    if os.geteuid() != 0:
        return "not running as root"
    if platform.machine() not in _SYS_PIVOT_ROOT:
        return f"pivot_root unknown on {platform.machine()}"
    return None


# ---------------------------------------------------------------------------------------
# The zygote: one read-only root per profile
# ---------------------------------------------------------------------------------------


def enter_private_mounts() -> None:
    """A mount namespace of our own whose mounts propagate nowhere (and from nowhere)."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def _makedirs(root: str, rel: str, mode: int = 0o755) -> str:
    path = root
    for part in rel.strip("/").split("/"):
        path = os.path.join(path, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode)
    return path


def _touch(path: str, mode: int = 0o644) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, mode))


class RootTemplate:
    """The root a worker's code sees: the system's directories read-only, a curated /etc,
    a handful of devices, and empty mount points for what each worker brings."""

    def __init__(self, path: str) -> None:
        self.path = path

    def build(self, extra_readonly: Iterable[str] = ()) -> None:
        root = self.path
        mount("jobgate-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=8m")
        for rel in MOUNT_POINTS:
            _makedirs(root, rel)
        os.chmod(os.path.join(root, "tmp"), 0o1777)
        for top in SYSTEM_DIRS:
            host = "/" + top
            inside = os.path.join(root, top)
            if os.path.islink(host):
                os.symlink(os.readlink(host), inside)  # merged /usr: bin -> usr/bin
            elif os.path.isdir(host):
                os.mkdir(inside, 0o755)
                bind_readonly(host, inside)
        for path in _outside_system_dirs(extra_readonly):
            # An interpreter installed elsewhere (say pyenv under a 0700 /root): its own
            # directory is bound; the directories leading to it are ours, 0755.
            bind_readonly(path, _makedirs(root, path))
        self._etc(os.path.join(root, "etc"))
        self._dev(os.path.join(root, "dev"))
        mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)

    @staticmethod
    def _etc(etc: str) -> None:
        os.mkdir(etc, 0o755)
        for name in ETC_FILES:
            host = os.path.join("/etc", name)
            inside = os.path.join(etc, name)
            try:
                st = os.lstat(host)
            except OSError:
                continue
            os.makedirs(os.path.dirname(inside), 0o755, exist_ok=True)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(host), inside)
            elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o004:
                with open(host, "rb") as src, open(inside, "wb") as dst:
                    dst.write(src.read(1024 * 1024))
        for name in ETC_DIRS:
            host = os.path.join("/etc", name)
            if os.path.isdir(host) and not os.path.islink(host):
                bind_readonly(host, _makedirs(etc, name))
        with open(os.path.join(etc, "hostname"), "w") as f:
            f.write(HOSTNAME + "\n")
        with open(os.path.join(etc, "hosts"), "w") as f:
            f.write(f"127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {HOSTNAME}\n")
        # Per worker (its uid): bound over these from the scratch filesystem.
        _touch(os.path.join(etc, "passwd"))
        _touch(os.path.join(etc, "group"))

    @staticmethod
    def _dev(dev: str) -> None:
        for name in DEVICES:
            if os.path.exists(os.path.join("/dev", name)):
                _touch(os.path.join(dev, name))
                mount(os.path.join("/dev", name), os.path.join(dev, name), None, MS_BIND)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, os.path.join(dev, name))


def _outside_system_dirs(paths: Iterable[str]) -> list[str]:
    """Real directories not already under a bound system directory, outermost first."""
    covered = tuple(os.path.realpath("/" + top) + "/" for top in SYSTEM_DIRS)
    found: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if p}):
        if not os.path.isdir(path) or path == "/" or (path + "/").startswith(covered):
            continue
        if any((path + "/").startswith(f + "/") for f in found):
            continue
        found.append(path)
    return found


# ---------------------------------------------------------------------------------------
# The worker: its scratch filesystem, then its init
# ---------------------------------------------------------------------------------------


class Scratch:
    """One tmpfs per worker for everything the code may write: the limit on its size is
    the limit on the whole invocation's disk use, and it is gone when the worker is."""

    def __init__(self, mountpoint: str, size_bytes: int, uid: int) -> None:
        self.mountpoint = mountpoint
        self.size_bytes = size_bytes
        self.uid = uid

    @property
    def workspace(self) -> str:
        """The workspace as the runner sees it (the code sees /workspace)."""
        return os.path.join(self.mountpoint, "workspace")

    def mount(self, root: str) -> None:
        # Inodes cost kernel memory, not pages: bound them too (one per 4 KiB of space).
        inodes = max(1024, self.size_bytes // 4096)
        mount("jobgate-scratch", self.mountpoint, "tmpfs", MS_NOSUID | MS_NODEV,
              f"mode=0700,size={self.size_bytes},nr_inodes={inodes}")
        for name, _ in SCRATCH_BINDS:
            path = os.path.join(self.mountpoint, name)
            os.mkdir(path, 0o700)
            os.chown(path, self.uid, self.uid)
        for name, inside in SCRATCH_BINDS:
            mount(os.path.join(self.mountpoint, name), os.path.join(root, inside), None,
                  MS_BIND)
        etc = os.path.join(self.mountpoint, "etc")
        os.mkdir(etc, 0o755)
        users = {
            "passwd": (f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                       f"sandbox:x:{self.uid}:{self.uid}:jobgate worker:{WORKSPACE}:/bin/sh\n"
                       f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
            "group": f"root:x:0:\nsandbox:x:{self.uid}:\nnogroup:x:65534:\n",
        }
        for name, text in users.items():
            path = os.path.join(etc, name)
            with open(path, "w") as f:
                f.write(text)
            mount(path, os.path.join(root, "etc", name), None, MS_BIND)
            mount(None, os.path.join(root, "etc", name), None,
                  MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)

    def is_full(self) -> bool:
        """Less than a block left: writes were failing with ENOSPC."""
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize < 64 * 1024 or st.f_favail == 0


def fork_into_new_pid_namespace() -> int:
    """os.fork(), but the child is pid 1 of a new pid namespace. unshare(CLONE_NEWPID)
    moves only the caller's *future* children, so the caller moves back right after: its
    later forks (there are none on the run path) stay in its own namespace."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWPID)
        try:
            return os.fork()
        finally:
            if os.getpid() != 1:
                setns(own, CLONE_NEWPID)
    finally:
        os.close(own)


def enter_init_namespaces(root: str) -> None:
    """In the init (pid 1 of its namespace): the rest of the namespaces, its own /proc,
    then the root. After this, no host path is reachable from this process."""
    unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)
    name = HOSTNAME.encode()
    _check(_libc().sethostname(name, len(name)), "sethostname")
    # hidepid: the init runs as root; the code sees its own processes only ("invisible"
    # since Linux 5.8, "2" before; without either, the init's command line shows).
    target = os.path.join(root, "proc")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    for option in ("hidepid=invisible", "hidepid=2"):
        try:
            mount("proc", target, "proc", flags, option)
            break
        except OSError:
            continue
    else:
        mount("proc", target, "proc", flags)
    pivot_root(root)


def _close_all_except(keep: Iterable[int]) -> None:
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 65536)


def _die_with_parent() -> None:
    pr_set_pdeathsig = 1
    _check(_libc().prctl(pr_set_pdeathsig, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


class WorkerSandbox:
    """One worker's sandbox, made when the worker is spawned: its scratch filesystem, its
    cgroup, and an init that waits - already inside every namespace - for the one run.

    The run costs a pipe write and the init's fork; when the code's process ends, the init
    reports its wait status and exits, and with it every process the code left."""

    def __init__(self, root: str, base: str, uid: int | None, scratch_bytes: int,
                 cgroup: Any, keep_fds: list[int], child: Callable[[bytes], None],
                 lockdown: Callable[[], None],
                 orphaned_cleanup: Callable[[], None] | None = None) -> None:
        if uid is None:
            raise OSError("a sandbox needs a uid of its own for the code")
        mountpoint = os.path.join(base, "scratch")
        os.mkdir(mountpoint, 0o700)
        self.scratch = Scratch(mountpoint, scratch_bytes, uid)
        self.cgroup = cgroup
        self.orphaned_cleanup = orphaned_cleanup
        self.closed = False
        # This worker's own copy of the zygote's mounts: what it binds is its alone.
        unshare(CLONE_NEWNS)
        self.scratch.mount(root)
        ctl_r, self._ctl_w = os.pipe2(os.O_CLOEXEC)
        self._status_r, status_w = os.pipe2(os.O_CLOEXEC)
        pid = fork_into_new_pid_namespace()
        if pid == 0:
            self._init(root, ctl_r, status_w, keep_fds, child, lockdown)
        os.close(ctl_r)
        os.close(status_w)
        self.init_pid = pid
        self._init_status: int | None = None

    @property
    def workspace(self) -> str:
        return self.scratch.workspace

    # -- in the init ---------------------------------------------------------------------

    def _init(self, root: str, ctl_r: int, status_w: int, keep_fds: list[int],
              child: Callable[[bytes], None], lockdown: Callable[[], None]) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _die_with_parent()
            os.close(self._ctl_w)
            os.close(self._status_r)
            if self.cgroup is not None:
                self.cgroup.attach(0)  # 0: this process (it is pid 1 only in its namespace)
            enter_init_namespaces(root)
            _close_all_except([*keep_fds, ctl_r, status_w])
            lockdown()  # the network namespace and the seccomp filter, inherited by the code
            data = _read_all(ctl_r)
            os.close(ctl_r)
            if not data:
                os._exit(0)  # the worker went away without a run
            pid = os.fork()
            if pid == 0:
                os.close(status_w)
                child(data)
                os._exit(127)
            while True:  # pid 1 reaps every orphan until the code's process is done
                done, status = os.wait()
                if done == pid:
                    break
            # Whatever the code left goes now, before the report: the runner answers as
            # soon as it has it, while this namespace is still being torn down.
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                while True:
                    os.wait()
            os.write(status_w, struct.pack("i", status))
            code = 0
        except BaseException:  # noqa: BLE001 - the runner sees the init's own failure
            code = 1
        os._exit(code)

    # -- in the runner -------------------------------------------------------------------

    def start(self, spec: Any, io: Any) -> None:
        """Set the invocation's limits, then hand the run to the init (it holds ``io``
        since its fork)."""
        if self.cgroup is not None:
            limits = spec.limits
            # The init counts among the processes: one more than the code's budget.
            self.cgroup.set_limits(memory_bytes=int(limits.get("memory_bytes") or 0) or None,
                                   pids=int(limits.get("nproc") or 0) + 1,
                                   cpu_millis=int(limits.get("cpu_millis") or 0) or None)
        data = spec.to_json()
        view = memoryview(data)
        while view:
            view = view[os.write(self._ctl_w, view):]
        os.close(self._ctl_w)
        self._ctl_w = -1

    def done_fd(self) -> int:
        """Readable once the init reports (the code and all it started are gone), or
        dies without a report."""
        return self._status_r

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init_pid, signal.SIGKILL)

    def finish(self, killed: bool) -> int:
        """The code's wait status as the init saw it. Without a report (the init was
        killed: timeout, cancel, memory), the init's own, once its namespace is gone.
        With one, the init's exit - and the teardown of its mounts, which waits for the
        kernel's RCU grace period - is left to ``close``, after the answer."""
        data = b"" if killed else os.read(self._status_r, 4)
        if len(data) == 4:
            return int(struct.unpack("i", data)[0])
        return self._reap_init()

    def _reap_init(self) -> int:
        if self._init_status is None:
            with contextlib.suppress(ChildProcessError):
                self._init_status = os.waitpid(self.init_pid, 0)[1]
        return self._init_status or 0

    def scratch_full(self) -> bool:
        return self.scratch.is_full()

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.usage().oom_kills > 0

    def close(self) -> None:
        """The init (if the run never came) and the cgroup go; the scratch filesystem goes
        with this process's mount namespace."""
        if self.closed:
            return
        self.closed = True
        if self._ctl_w != -1:  # never ran: the init waits for a run that will not come
            self.kill()
        self._reap_init()
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.remove()
        if self.orphaned_cleanup is not None:
            with contextlib.suppress(OSError):
                self.orphaned_cleanup()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
