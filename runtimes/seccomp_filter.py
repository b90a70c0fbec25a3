"""A seccomp filter for worker code (standard library only: the runner imports it).

The policy is a deny-list on top of the local executor's other measures (own uid, network
namespace, rlimits), in the spirit of Docker's default profile for an unprivileged
container: every system call is allowed except the ones in ``DENIED``, which fail with
EPERM (not a kill, so a program probing for a feature keeps running), and clone3, which
fails with ENOSYS so that glibc falls back to clone(2), whose flags the filter can read.

The filter is compiled by the system's libseccomp (``libseccomp.so.2``, through ctypes),
which resolves syscall names per architecture, covers the compatibility ABIs (i386 and
x32 on x86_64, arm on aarch64, s390 on s390x) and encodes the BPF. ``build()`` does that
once per process and returns the raw program; ``install()`` loads it with two prctl calls
and no libseccomp at all, so a zygote builds before it forks and each forked child only
installs. A filter is inherited by every thread and child created after it and survives
execve; it cannot be removed.

Install it last, after the child's privileged set-up (setns into its network namespace,
setuid): setns is one of the denied calls.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import functools
import os
from dataclasses import dataclass

__all__ = ["DENIED", "SeccompUnavailable", "UnavailableReason", "build", "install", "markdown"]


class UnavailableReason(enum.StrEnum):
    NO_LIBRARY = "libseccomp.so.2 cannot be loaded"
    LIBRARY_TOO_OLD = "libseccomp lacks a function or syscall name the policy needs"
    BUILD_FAILED = "libseccomp refused the policy"


class SeccompUnavailable(Exception):
    """No filter can be built here; ``reason`` says why, ``detail`` what happened."""

    def __init__(self, reason: UnavailableReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------

# linux/sched.h. CLONE_NEWTIME (0x80) exists for unshare and clone3 only: in clone(2) that
# bit belongs to the exit signal.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWTIME = 0x00000080
_CLONE_NAMESPACES = (_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS, _CLONE_NEWIPC, _CLONE_NEWUSER,
                     _CLONE_NEWPID, _CLONE_NEWNET)
_UNSHARE_NAMESPACES = (*_CLONE_NAMESPACES, _CLONE_NEWTIME)
# clone(2)'s flags are argument 0 everywhere except s390/s390x (CLONE_BACKWARDS2), where
# the stack comes first. libseccomp compares raw arguments and does not reorder them.
_CLONE_FLAGS_ARG = 1 if os.uname().machine.startswith("s390") else 0
# enum scmp_compare (seccomp.h)
_CMP_MASKED_EQ = 7


@dataclass(frozen=True)
class _Cmp:
    arg: int
    op: int
    datum_a: int
    datum_b: int = 0


@dataclass(frozen=True)
class _Rule:
    """Deny ``name`` (with ``errno``) when any one of ``any_of`` holds; an alternative
    holds when all its comparisons do, so the default ``((),)`` means always."""

    name: str
    why: str
    when: str = "always"
    errno: int = errno.EPERM
    any_of: tuple[tuple[_Cmp, ...], ...] = ((),)


def _any_flag(arg: int, flags: tuple[int, ...]) -> tuple[tuple[_Cmp, ...], ...]:
    # libseccomp has no "masked not-equal": one alternative per flag bit.
    return tuple((_Cmp(arg, _CMP_MASKED_EQ, flag, flag),) for flag in flags)


def _rules(why: str, *names: str) -> tuple[_Rule, ...]:
    return tuple(_Rule(name, why) for name in names)


_NAMESPACES_WHY = (
    "a new user namespace gives the caller every capability inside it, "
    "which opens kernel code (netfilter, filesystems, mounts) that is otherwise root-only "
    "and is the usual first step of a container escape; the other namespaces need "
    "CAP_SYS_ADMIN, which a worker only has inside a user namespace"
)
_MOUNT_WHY = (
    "changes the filesystem view (CAP_SYS_ADMIN): a worker has no use for it, and "
    "denying it keeps the mount code out of reach even of a worker that runs privileged"
)
_MOUNT_API_WHY = "the mount API of Linux 5.2+: the power of mount(2), in several calls"
_CLOCK_WHY = (
    "sets the system clock (CAP_SYS_TIME), which is shared by the whole machine; "
    "reading the clock is unaffected, but adjtimex and clock_adjtime also serve "
    "read-only queries (ntp_gettime(3)), which fail too"
)

_RULES: tuple[_Rule, ...] = (
    # Namespaces: the big one.
    _Rule("clone", _NAMESPACES_WHY + "; fork, vfork and threads (no CLONE_NEW* flag) are allowed",
          when="its flags include any CLONE_NEW*",
          any_of=_any_flag(_CLONE_FLAGS_ARG, _CLONE_NAMESPACES)),
    _Rule("clone3",
          "its flags live in a struct in memory, which seccomp cannot read, so CLONE_NEW* "
          "could not be refused selectively; ENOSYS (as on a kernel before 5.3) makes "
          "glibc and other runtimes fall back to clone(2), whose flags are checked",
          errno=errno.ENOSYS),
    _Rule("unshare", _NAMESPACES_WHY + "; unsharing CLONE_FILES, CLONE_FS or CLONE_SYSVSEM "
          "is allowed", when="its flags include any CLONE_NEW*",
          any_of=_any_flag(0, _UNSHARE_NAMESPACES)),
    _Rule("setns", "enters another process's namespaces (through /proc/PID/ns or a pidfd); "
          "the worker's own namespaces are set up before the filter is installed"),
    # Mounts.
    *_rules(_MOUNT_WHY, "mount", "umount2", "umount", "pivot_root"),
    _Rule("chroot", "changes the root directory (CAP_SYS_CHROOT): combined with a "
          "privileged helper it is a classic way out of a directory jail; no worker needs it"),
    *_rules(_MOUNT_API_WHY, "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
            "open_tree", "mount_setattr"),
    # Other processes of the same uid (the gateway itself, when it does not run as root).
    _Rule("ptrace", "reads and writes another process's memory and registers: without a "
          "uid of its own (gateway not root) a worker shares the gateway's uid and could "
          "trace the gateway and other workers; it is also a classic kernel attack "
          "surface. Debuggers and strace do not work in a worker"),
    *_rules("reads or writes another process's memory without ptrace, under the same "
            "access rule as ptrace", "process_vm_readv", "process_vm_writev"),
    _Rule("process_madvise", "acts on another process's memory through a pidfd, under "
          "ptrace's access rule"),
    _Rule("pidfd_getfd", "copies an open file descriptor out of another process (ptrace's "
          "access rule): another same-uid process's files and sockets"),
    _Rule("kcmp", "compares kernel objects of two processes (ptrace's access rule): an "
          "information leak about other processes, used only by checkpoint/restore tools"),
    # Large kernel attack surface, reachable without privileges.
    _Rule("bpf", "loads eBPF programs into the kernel: verifier bugs are a steady source of "
          "privilege escalations; unprivileged use depends on the "
          "kernel.unprivileged_bpf_disabled sysctl. Classic socket filters "
          "(SO_ATTACH_FILTER) are not affected"),
    _Rule("perf_event_open", "performance counters and tracing: a large kernel surface with "
          "a history of privilege escalations and a side channel on other processes, "
          "otherwise governed only by the kernel.perf_event_paranoid sysctl"),
    _Rule("userfaultfd", "page faults handled in user space: lets an exploit pause the "
          "kernel in the middle of a copy from user memory, the standard way to win a "
          "kernel race"),
    *_rules("io_uring, a second system-call interface with a long record of privilege "
            "escalations, whose operations are not seen by seccomp at all; Docker, "
            "Android and ChromeOS deny it too. libuv (node) falls back to its thread pool",
            "io_uring_setup", "io_uring_enter", "io_uring_register"),
    *_rules("kernel keyrings: the user keyring is shared by every process of the uid, and "
            "the key management code has a history of privilege escalations",
            "keyctl", "add_key", "request_key"),
    _Rule("fanotify_init", "filesystem-wide event monitoring, unprivileged in a limited form "
          "since Linux 5.13: a large surface no worker needs (inotify is allowed)"),
    *_rules("file handles: open_by_handle_at opens any file of a filesystem by handle, "
            "bypassing directory permissions (the 'shocker' container escape, with "
            "CAP_DAC_READ_SEARCH); name_to_handle_at is its unprivileged half",
            "name_to_handle_at", "open_by_handle_at"),
    _Rule("uselib", "loads an a.out library: obsolete (glibc never calls it), with a "
          "history of kernel bugs"),
    *_rules("virtual-8086 mode, 32-bit x86 only: obsolete, with a history of kernel bugs",
            "vm86", "vm86old"),
    # Administration of the machine: needs capabilities a worker lacks; denied as well so
    # that a worker running privileged by mistake still cannot, and the code is not reached.
    *_rules("replaces the running kernel (CAP_SYS_BOOT)", "kexec_load", "kexec_file_load"),
    _Rule("reboot", "reboots or halts the machine (CAP_SYS_BOOT)"),
    *_rules("loads or unloads kernel modules (CAP_SYS_MODULE): code in the kernel",
            "init_module", "finit_module", "delete_module"),
    *_rules("enables or disables swap devices (CAP_SYS_ADMIN)", "swapon", "swapoff"),
    _Rule("acct", "switches process accounting to a file (CAP_SYS_PACCT)"),
    *_rules(_CLOCK_WHY, "settimeofday", "stime", "clock_settime", "clock_settime64",
            "clock_adjtime", "clock_adjtime64", "adjtimex"),
    *_rules("direct access to I/O ports (CAP_SYS_RAWIO), x86 only", "iopl", "ioperm"),
    *_rules("disk quota administration (mostly CAP_SYS_ADMIN): a worker's limits are set "
            "from outside", "quotactl", "quotactl_fd"),
    _Rule("lookup_dcookie", "a profiler's helper (CAP_SYS_ADMIN), gone from recent kernels"),
    _Rule("syslog", "reads and clears the kernel log, which holds kernel addresses (a KASLR "
          "bypass) and other processes' messages; reading /dev/kmsg is governed by the "
          "kernel.dmesg_restrict sysctl only"),
    _Rule("vhangup", "hangs up the current terminal (CAP_SYS_TTY_CONFIG)"),
    *_rules("renames the machine (CAP_SYS_ADMIN): workers share the host's UTS namespace",
            "sethostname", "setdomainname"),
    _Rule("nfsservctl", "the kernel NFS server's control call, removed in Linux 3.1: "
          "denied on any kernel that still has it"),
)

DENIED: dict[str, str] = {
    rule.name: rule.why if rule.when == "always" else f"{rule.why} (denied when {rule.when})"
    for rule in _RULES
}

# Considered and left allowed (documentation only).
_ALLOWED_ON_PURPOSE: dict[str, str] = {
    "personality": (
        "Docker allows only a few values, but libseccomp 2.5 cannot compare one argument "
        "with several values in one rule, and the flags worth refusing (READ_IMPLIES_EXEC, "
        "ADDR_NO_RANDOMIZE) weaken only the caller's own process: with no_new_privs a "
        "setuid program gains nothing, and MMAP_PAGE_ZERO still obeys vm.mmap_min_addr"),
    "seccomp, prctl, landlock_*": (
        "a process may restrict itself further; no_new_privs and this filter cannot be "
        "undone"),
    "socket, connect, ...": "the network is the network namespace's job, not the filter's",
    "calls newer than libseccomp": (
        "a name the running libseccomp does not know cannot be denied and is allowed: "
        "Debian bookworm's 2.5.4 knows the calls up to Linux 6.7, so e.g. open_tree_attr "
        "(6.15) is allowed; what it could do that matters needs CAP_SYS_ADMIN, which no "
        "worker gets without a user namespace"),
}

# Without these the policy has a hole (clone3 would create namespaces unseen): a libseccomp
# too old to know them cannot build it. Any other name it does not know is skipped.
_REQUIRED = ("clone", "clone3", "unshare", "setns")


def markdown() -> str:
    """The policy as markdown tables, for docs/security.md."""
    lines = ["| system call | denied when | fails with | why |", "|---|---|---|---|"]
    for rule in _RULES:
        lines.append(f"| `{rule.name}` | {rule.when} | {errno.errorcode[rule.errno]} "
                     f"| {rule.why} |")
    lines += ["", "Allowed on purpose:", "", "| system call | why |", "|---|---|"]
    lines += [f"| {names} | {why} |" for names, why in _ALLOWED_ON_PURPOSE.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Building, with libseccomp
# ---------------------------------------------------------------------------------------

_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_FLTATR_ACT_BADARCH = 2
_SCMP_FLTATR_CTL_OPTIMIZE = 8
_OPTIMIZE_BINARY_TREE = 2
_NR_SCMP_ERROR = -1
# Compatibility ABIs a process of the native architecture can also use. A syscall of an
# ABI missing from the filter kills the process (the BADARCH action): safe, but a 32-bit
# program would die on its first call instead of running under the same deny-list.
_COMPAT_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",), "s390x": ("s390",)}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _load_libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(UnavailableReason.NO_LIBRARY, str(exc)) from None
    ctx, u32, c_int, name = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_char_p
    signatures = {
        "seccomp_init": (ctx, [u32]),
        "seccomp_release": (None, [ctx]),
        "seccomp_attr_set": (c_int, [ctx, c_int, u32]),
        "seccomp_arch_native": (u32, []),
        "seccomp_arch_resolve_name": (u32, [name]),
        "seccomp_arch_add": (c_int, [ctx, u32]),
        "seccomp_syscall_resolve_name": (c_int, [name]),
        "seccomp_rule_add_array": (c_int, [ctx, u32, c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]),
        "seccomp_export_bpf": (c_int, [ctx, c_int]),
    }
    for function, (restype, argtypes) in signatures.items():
        try:
            fn = getattr(lib, function)
        except AttributeError:
            raise SeccompUnavailable(UnavailableReason.LIBRARY_TOO_OLD, function) from None
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SeccompUnavailable(UnavailableReason.BUILD_FAILED,
                                 f"{what}: {os.strerror(-rc)}")


def _add_compat_arches(lib: ctypes.CDLL, ctx: int) -> None:
    native = lib.seccomp_arch_native()
    for arch, compat in _COMPAT_ARCHES.items():
        if lib.seccomp_arch_resolve_name(arch.encode()) == native:
            for name in compat:
                token = lib.seccomp_arch_resolve_name(name.encode())
                rc = lib.seccomp_arch_add(ctx, token) if token else 0
                if rc < 0 and rc != -errno.EEXIST:
                    _check(rc, f"adding architecture {name}")


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: _Rule) -> None:
    nr = lib.seccomp_syscall_resolve_name(rule.name.encode())
    if nr == _NR_SCMP_ERROR:
        if rule.name in _REQUIRED:
            raise SeccompUnavailable(UnavailableReason.LIBRARY_TOO_OLD, rule.name)
        return  # a call this libseccomp does not know
    action = _SCMP_ACT_ERRNO | rule.errno
    for alternative in rule.any_of:
        cmps = (_ArgCmp * len(alternative))(
            *((c.arg, c.op, c.datum_a, c.datum_b) for c in alternative)) if alternative else None
        # A negative nr is a call the native ABI lacks but a compat ABI has (umount on
        # i386): libseccomp adds it where it exists.
        _check(lib.seccomp_rule_add_array(ctx, action, nr, len(alternative), cmps),
               f"rule for {rule.name}")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("jobgate-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "export")
        size = os.fstat(fd).st_size
        program = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if not program or len(program) != size or size % _INSN_SIZE:
        raise SeccompUnavailable(UnavailableReason.BUILD_FAILED, "export gave no program")
    return program


@functools.cache
def build() -> bytes:
    """The filter as raw BPF (struct sock_filter[]), compiled once per process."""
    lib = _load_libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable(UnavailableReason.BUILD_FAILED, "seccomp_init")
    try:
        _check(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_ACT_BADARCH, _SCMP_ACT_KILL_PROCESS),
               "bad-architecture action")
        # A binary search on the syscall number instead of a linear list (libseccomp
        # 2.5+; an older one builds the linear list): the kernel walks the program for
        # every syscall number when it installs it (to cache the always-allowed ones),
        # which is most of install()'s cost above the kernel's fixed one.
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, _OPTIMIZE_BINARY_TREE)
        _add_compat_arches(lib, ctx)
        for rule in _RULES:
            _add_rule(lib, ctx, rule)
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


# ---------------------------------------------------------------------------------------
# Installing: no libseccomp, two prctl calls
# ---------------------------------------------------------------------------------------

_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_INSN_SIZE = 8  # sizeof(struct sock_filter)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                   ctypes.c_ulong]


def install(program: bytes) -> None:
    """Load ``program`` (from ``build()``) for the calling thread, and so for everything it
    starts from now on: no_new_privs, then the filter. Call it before starting threads:
    threads that already exist are not filtered."""
    count, partial = divmod(len(program), _INSN_SIZE)
    if partial or not 0 < count <= 0xFFFF:
        raise OSError(errno.EINVAL, f"not a BPF program ({len(program)} bytes)")
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.addressof(insns))
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    if _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


if __name__ == "__main__":
    print(markdown(), end="")
