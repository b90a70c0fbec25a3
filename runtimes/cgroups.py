"""Limits for a whole invocation - all its processes together - through cgroups.

Standard library only: ``runtimes/runner.py`` imports it, and the runner runs with
``python -I`` on whatever CPython 3.11+ a profile uses.

    support = detect()                         # v2, else v1, else why neither
    tree = CgroupTree.create("jobgate-ab12")   # once per gateway, nested in our cgroup
    tree.remove_stale()                        # empty leftovers of an earlier run
    group = tree.group("w-17")                 # one per worker, ahead of need
    join = group.join_fds()                    # at worker spawn ...
    join.join()                                # ... the worker joins before any code runs
    group.set_limits(memory_bytes=..., pids=..., cpu_millis=...)   # hot path: plain writes
    ...                                        # the code runs; its children inherit the group
    group.usage()                              # peak memory, CPU time, OOM kills
    group.remove()                             # kill what is left, rmdir

Joining is the slow part (a migration takes the cgroup threadgroup rwsem for writing, once
per v1 hierarchy), so it happens when a worker starts; ``set_limits`` only writes limit
files of a group whose members are already in place.

Two ways to join. ``attach(pid)`` moves a process from outside; it moves that process only,
not children it has already forked. ``join_fds()`` opens every ``cgroup.procs`` now and
``JoinFds.join()`` writes "0" (the writer itself) later: a process joins itself before it
forks anything, so there is no window, and it can do so after it has lost its view of /sys
(chroot, pivot_root) or dropped its uid, because a held descriptor needs no path lookup and
the kernel checks the opener's credentials and cgroup namespace, not the writer's (Linux
5.16+). The runner should use ``join_fds``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

# The controllers an invocation is limited by; cpuacct (v1 only) adds CPU time accounting.
NEEDED = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel's floor for cfs quota
REMOVE_TIMEOUT_S = 2.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class CgroupUnavailable(Exception):
    """cgroups cannot do what was asked here: not usable on this machine, or the kernel
    refused a create, a join or a limit (the message names the file and the error)."""


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupDir:
    """One cgroup directory and the controllers it carries (v1: its hierarchy's; v2: all)."""

    controllers: frozenset[str]
    path: str


@dataclass(frozen=True)
class CgroupSupport:
    """What ``detect`` found. ``version`` is 2, 1, or None (not usable: see ``reason``).
    ``dirs`` are where a tree is created: this process's cgroup in each hierarchy needed
    (v2: one directory)."""

    version: int | None
    reason: str
    dirs: tuple[CgroupDir, ...] = ()


@dataclass(frozen=True)
class Usage:
    """What one invocation used, read after it ran (before ``remove``)."""

    memory_peak_bytes: int | None  # None on v2 kernels without memory.peak (< 5.19)
    cpu_seconds: float | None  # None on v1 without a cpuacct hierarchy
    # Kills by the group's memory limit. v1 kernels without "oom_kill" in
    # memory.oom_control (< 4.13) give memory.failcnt instead: times the limit was hit,
    # which over-counts (reclaim often succeeds after a hit).
    oom_kills: int
    pids_peak: int | None  # None where the kernel has no pids.peak
    pids_refused: int  # forks refused by the pids limit (pids.events "max")


@dataclass(frozen=True)
class StaleGroups:
    removed: tuple[str, ...]
    busy: tuple[str, ...]  # still has processes: left alone


# ---------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    fstype: str  # "cgroup" (v1) or "cgroup2"
    root: str  # the hierarchy path mounted here
    point: str
    options: frozenset[str]  # super options: v1 names its controllers here


@dataclass(frozen=True)
class _Membership:
    """One line of /proc/<pid>/cgroup."""

    hierarchy_id: str
    controllers: frozenset[str]  # empty for v2 ("0::/path")
    path: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[_Mount]:
    """The cgroup mounts of a /proc/<pid>/mountinfo."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or fields[sep + 1] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(_Mount(fields[sep + 1], _unescape(fields[3]), _unescape(fields[4]),
                             frozenset(fields[sep + 3].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> list[_Membership]:
    out = []
    for line in text.splitlines():
        hid, sep, rest = line.partition(":")
        ctrls, sep2, path = rest.partition(":")
        if sep and sep2:
            out.append(_Membership(hid, frozenset(c for c in ctrls.split(",") if c), path))
    return out


def _dir_of(membership: _Membership, mounts: list[_Mount]) -> str | None:
    """Where this process's cgroup of one hierarchy appears in the file system."""
    v2 = not membership.controllers
    for m in mounts:
        if v2 != (m.fstype == "cgroup2") or not (v2 or membership.controllers <= m.options):
            continue
        root = m.root.rstrip("/")
        path = membership.path
        if path == root or path.startswith(root + "/"):
            return os.path.normpath(m.point + "/" + path[len(root):])
    return None


def detect(proc: str = "/proc/self") -> CgroupSupport:
    """cgroup v2 when memory, pids and cpu are usable there, else v1 when all three are
    mounted, else neither and why. ``proc`` is the process directory to read (tests point
    it at a fake tree)."""
    try:
        mounts = parse_mountinfo(_read(f"{proc}/mountinfo"))
        own = parse_proc_cgroup(_read(f"{proc}/cgroup"))
    except OSError as e:
        return CgroupSupport(None, f"cannot read {proc}: {e.strerror}")
    v2 = _detect_v2(mounts, own)
    if v2.version:
        return v2
    v1 = _detect_v1(mounts, own)
    if v1.version:
        return CgroupSupport(1, f"cgroup v1 (not v2: {v2.reason})", v1.dirs)
    return CgroupSupport(None, f"{v2.reason}; {v1.reason}")


def _detect_v2(mounts: list[_Mount], own: list[_Membership]) -> CgroupSupport:
    unified = next((m for m in own if m.hierarchy_id == "0" and not m.controllers), None)
    mine = _dir_of(unified, mounts) if unified else None
    if unified is None or mine is None or not os.path.isdir(mine):
        return CgroupSupport(None, "no cgroup v2 hierarchy holds this process")
    wanted = ", ".join(NEEDED)
    available = set(_read_words(f"{mine}/cgroup.controllers"))
    missing = [c for c in NEEDED if c not in available]
    if missing:
        return CgroupSupport(None, (
            f"cgroup v2 at {mine}: {', '.join(missing)} not available to this process's "
            "cgroup (bound to cgroup v1 hierarchies, or not enabled in the parent's "
            "cgroup.subtree_control)"))
    parent = os.path.dirname(mine)
    if not os.path.exists(f"{mine}/cgroup.type"):
        # The root cgroup (only it has no cgroup.type) is exempt from the no-internal-
        # processes rule: controllers can be enabled for children beside our processes.
        base = mine
    elif (_delegated(parent) and not _read_words(f"{parent}/cgroup.procs")
          and set(NEEDED) <= set(_read_words(f"{parent}/cgroup.subtree_control"))):
        # systemd Delegate=yes with DelegateSubgroup=: we run in a leaf of a delegated
        # cgroup that already hands the controllers to its children; the tree goes beside us.
        base = parent
    else:
        return CgroupSupport(None, (
            f"cgroup v2: this process's cgroup {unified.path} has "
            f"processes of its own (this one), and the no-internal-processes rule forbids "
            f"enabling {wanted} for its children there. Run the gateway in a leaf of a "
            "delegated cgroup: a systemd unit with Delegate=yes and DelegateSubgroup=gateway "
            "(systemd 254+) puts it in <unit>/gateway and the tree goes beside it; in a "
            "container, move its processes into a child cgroup before starting the gateway"))
    if not os.access(base, os.W_OK):
        return CgroupSupport(None, f"cgroup v2: {base} is not writable by this process")
    return CgroupSupport(2, f"cgroup v2 at {base}", (CgroupDir(frozenset(NEEDED), base),))


def _delegated(path: str) -> bool:
    """systemd marks a cgroup it delegates with the xattr trusted.delegate (user.delegate
    for user managers) = 1."""
    for attr in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, attr).strip() == b"1":
                return True
    return False


def _detect_v1(mounts: list[_Mount], own: list[_Membership]) -> CgroupSupport:
    dirs: dict[str, CgroupDir] = {}
    for controller in (*NEEDED, "cpuacct"):
        membership = next((m for m in own if controller in m.controllers), None)
        path = _dir_of(membership, mounts) if membership else None
        if membership and path is not None and os.path.isdir(path):
            dirs.setdefault(path, CgroupDir(membership.controllers, path))
    have = {c for d in dirs.values() for c in d.controllers}
    missing = [c for c in NEEDED if c not in have]
    if missing:
        return CgroupSupport(None, f"cgroup v1: {', '.join(missing)} not mounted")
    readonly = [d.path for d in dirs.values() if not os.access(d.path, os.W_OK)]
    if readonly:
        return CgroupSupport(None, f"cgroup v1: not writable by this process: {readonly}")
    return CgroupSupport(1, "cgroup v1", tuple(dirs.values()))


# ---------------------------------------------------------------------------------------
# The tree: one per gateway
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupTree:
    """The parent group of one gateway, in each hierarchy: under this process's cgroup
    (v2 in a delegated systemd unit: beside it, see ``detect``)."""

    name: str
    version: int
    dirs: tuple[CgroupDir, ...]

    @classmethod
    def create(cls, name: str, support: CgroupSupport | None = None) -> CgroupTree:
        """Create the tree (or take the existing one of that name). Raises
        CgroupUnavailable when cgroups are not usable here."""
        _check_name(name)
        support = support or detect()
        if support.version is None:
            raise CgroupUnavailable(support.reason)
        dirs = tuple(CgroupDir(d.controllers, os.path.join(d.path, name)) for d in support.dirs)
        with _errors("creating the cgroup tree"):
            if support.version == 2:
                base = support.dirs[0].path
                enable = " ".join(f"+{c}" for c in NEEDED)
                if not set(NEEDED) <= set(_read_words(f"{base}/cgroup.subtree_control")):
                    _write(f"{base}/cgroup.subtree_control", enable)  # the root only
                os.makedirs(dirs[0].path, exist_ok=True)
                _write(f"{dirs[0].path}/cgroup.subtree_control", enable)
            else:
                for d in dirs:
                    os.makedirs(d.path, exist_ok=True)
                    hierarchy = f"{d.path}/memory.use_hierarchy"
                    # Always 1 since Linux 5.x; older kernels may still start at 0.
                    if "memory" in d.controllers and _read_words(hierarchy) == ["0"]:
                        with contextlib.suppress(OSError):
                            _write(hierarchy, "1")
        return cls(name, support.version, dirs)

    def group(self, name: str) -> InvocationGroup:
        """A child group for one worker (created, or taken if it exists)."""
        _check_name(name)
        dirs = tuple(CgroupDir(d.controllers, os.path.join(d.path, name)) for d in self.dirs)
        try:
            with _errors(f"creating cgroup {name}"):
                for d in dirs:
                    os.makedirs(d.path, exist_ok=True)
                if self.version == 2:
                    swap = os.path.exists(f"{dirs[0].path}/memory.swap.max")
                    return _V2Group(name, dirs, swap)
                memory = _dir(dirs, "memory")
                swap = os.path.exists(f"{memory}/memory.memsw.limit_in_bytes")
                # Inherited from the parent: we want the kill, not a group that hangs.
                if _keyed(_read(f"{memory}/memory.oom_control")).get("oom_kill_disable"):
                    _write(f"{memory}/memory.oom_control", "0")
                _write(f"{_dir(dirs, 'cpu')}/cpu.cfs_period_us", str(CPU_PERIOD_US))
                return _V1Group(name, dirs, swap)
        except CgroupUnavailable:
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(d.path)
            raise

    def remove_stale(self) -> StaleGroups:
        """Remove the empty child groups an earlier run left behind; a group with processes
        is kept (nothing is killed). Call at start-up, before creating this run's groups:
        a group made ahead of need is empty too."""
        removed: set[str] = set()
        busy: set[str] = set()
        for d in self.dirs:
            for name in _subdirs(d.path):
                (removed if _rmdir_tree(os.path.join(d.path, name)) else busy).add(name)
        return StaleGroups(tuple(sorted(removed - busy)), tuple(sorted(busy)))

    def remove(self) -> bool:
        """At shutdown: ``remove_stale`` and then the tree itself. Kills nothing; False when
        something is still there."""
        self.remove_stale()
        return all(_rmdir_tree(d.path) for d in self.dirs)


# ---------------------------------------------------------------------------------------
# One group per invocation
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinFds:
    """The ``cgroup.procs`` of each hierarchy of one group, open for writing."""

    fds: tuple[int, ...]

    def join(self) -> None:
        """Move the calling process (all its threads) into the group, then close."""
        try:
            with _errors("joining the cgroup"):
                for fd in self.fds:
                    os.write(fd, b"0")
        finally:
            self.close()

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> JoinFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class InvocationGroup:
    """The group one invocation's processes run in. v1 has one directory per hierarchy,
    v2 one directory."""

    name: str
    dirs: tuple[CgroupDir, ...]
    swap: bool  # swap accounting exists (v1 memory.memsw.*, v2 memory.swap.max)

    def attach(self, pid: int) -> None:
        """Move process ``pid`` (not its existing children) into the group. Slow-ish: do it
        when the worker starts, not on the request path."""
        with _errors(f"moving {pid} into cgroup {self.name}"):
            for d in self.dirs:
                _write(f"{d.path}/cgroup.procs", str(pid))

    def join_fds(self) -> JoinFds:
        """Open the group's ``cgroup.procs`` files now; ``join()`` on the result moves the
        process that calls it, later, even without /sys or root by then."""
        fds: list[int] = []
        try:
            with _errors(f"opening cgroup {self.name}"):
                for d in self.dirs:
                    fds.append(os.open(f"{d.path}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except CgroupUnavailable:
            JoinFds(tuple(fds)).close()
            raise
        return JoinFds(tuple(fds))

    def join_self(self) -> None:
        """Move the calling process into the group now (``join_fds().join()``)."""
        self.join_fds().join()

    def set_limits(self, memory_bytes: int | None = None, pids: int | None = None,
                   cpu_millis: int | None = None) -> None:
        """Limits for everything in the group together; None means no limit. Cheap: plain
        writes. ``memory_bytes`` cannot go below what the group already uses (v1 refuses,
        v2 kills), so set it while only the worker's small init process is inside.
        ``cpu_millis`` is thousandths of a CPU (500 = half a CPU); below 10 it counts as 10,
        the kernel's floor of a 1 ms quota per 100 ms period."""
        raise NotImplementedError

    def usage(self) -> Usage:
        raise NotImplementedError

    def remove(self, timeout_s: float = REMOVE_TIMEOUT_S) -> bool:
        """Kill whatever is left in the group, wait for it to exit, remove the group.
        Retries until ``timeout_s``; True when the group is gone (also when it was gone
        already), False when it is still there (a process that will not die); never
        raises."""
        deadline = time.monotonic() + timeout_s
        while True:
            dying: list[int] = []
            for d in self.dirs:
                with contextlib.suppress(OSError):
                    dying += self._kill(d.path)
            _wait_for_exit(dying, deadline)  # closes the pidfds
            remaining = [d for d in self.dirs if not _rmdir_tree(d.path)]
            if not remaining or time.monotonic() >= deadline:
                return not remaining
            if not dying:
                time.sleep(0.001)

    def _kill(self, path: str) -> list[int]:
        """SIGKILL everything in the group directory ``path`` and below it; pidfds of the
        processes signalled."""
        dying = []
        for sub in _subdirs(path):
            dying += self._kill(os.path.join(path, sub))
        return dying + _kill_members(path)

    def _dir(self, controller: str) -> str:
        return _dir(self.dirs, controller)

    def _cpuacct(self) -> str | None:
        return next((d.path for d in self.dirs if "cpuacct" in d.controllers), None)


def _positive(name: str, value: int) -> int:
    if int(value) <= 0:
        raise ValueError(f"{name} must be positive or None, not {value}")
    return int(value)


def _cpu_quota_us(cpu_millis: int) -> int:
    return max(MIN_CPU_QUOTA_US, _positive("cpu_millis", cpu_millis) * CPU_PERIOD_US // 1000)


@dataclass(frozen=True)
class _V1Group(InvocationGroup):
    def set_limits(self, memory_bytes: int | None = None, pids: int | None = None,
                   cpu_millis: int | None = None) -> None:
        memory = self._dir("memory")
        mem = "-1" if memory_bytes is None else str(_positive("memory_bytes", memory_bytes))
        limit = f"{memory}/memory.limit_in_bytes"
        memsw = f"{memory}/memory.memsw.limit_in_bytes"
        with _errors(f"setting the limits of cgroup {self.name}"):
            if not self.swap:
                _write(limit, mem)
            else:
                # memsw (memory + swap) must stay >= memory: lowering goes memory first,
                # raising memsw first. Raising past the old memsw makes the first write
                # fail with EINVAL, and then the other order is the right one.
                try:
                    _write(limit, mem)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    _write(memsw, mem)
                    _write(limit, mem)
                else:
                    _write(memsw, mem)
            _write(f"{self._dir('pids')}/pids.max", "max" if pids is None
                   else str(_positive("pids", pids)))
            _write(f"{self._dir('cpu')}/cpu.cfs_quota_us", "-1" if cpu_millis is None
                   else str(_cpu_quota_us(cpu_millis)))

    def usage(self) -> Usage:
        memory = self._dir("memory")
        pids = self._dir("pids")
        cpuacct = self._cpuacct()
        with _errors(f"reading the usage of cgroup {self.name}"):
            oom = _keyed(_read(f"{memory}/memory.oom_control")).get("oom_kill")
            if oom is None:
                oom = int(_read(f"{memory}/memory.failcnt"))
            return Usage(
                memory_peak_bytes=int(_read(f"{memory}/memory.max_usage_in_bytes")),
                cpu_seconds=int(_read(f"{cpuacct}/cpuacct.usage")) / 1e9 if cpuacct else None,
                oom_kills=oom,
                pids_peak=_read_int_or_none(f"{pids}/pids.peak"),
                pids_refused=_keyed(_read(f"{pids}/pids.events")).get("max", 0),
            )


@dataclass(frozen=True)
class _V2Group(InvocationGroup):
    def set_limits(self, memory_bytes: int | None = None, pids: int | None = None,
                   cpu_millis: int | None = None) -> None:
        path = self.dirs[0].path
        with _errors(f"setting the limits of cgroup {self.name}"):
            if memory_bytes is None:
                _write(f"{path}/memory.max", "max")
            else:
                _write(f"{path}/memory.max", str(_positive("memory_bytes", memory_bytes)))
            if self.swap:  # swapped-out pages would not count against memory.max
                _write(f"{path}/memory.swap.max", "max" if memory_bytes is None else "0")
            _write(f"{path}/pids.max", "max" if pids is None else str(_positive("pids", pids)))
            quota = "max" if cpu_millis is None else str(_cpu_quota_us(cpu_millis))
            _write(f"{path}/cpu.max", f"{quota} {CPU_PERIOD_US}")

    def usage(self) -> Usage:
        path = self.dirs[0].path
        with _errors(f"reading the usage of cgroup {self.name}"):
            cpu = _keyed(_read(f"{path}/cpu.stat"))
            return Usage(
                memory_peak_bytes=_read_int_or_none(f"{path}/memory.peak"),
                cpu_seconds=cpu["usage_usec"] / 1e6 if "usage_usec" in cpu else None,
                oom_kills=_keyed(_read(f"{path}/memory.events")).get("oom_kill", 0),
                pids_peak=_read_int_or_none(f"{path}/pids.peak"),
                pids_refused=_keyed(_read(f"{path}/pids.events")).get("max", 0),
            )

    def _kill(self, path: str) -> list[int]:
        try:
            _write(f"{path}/cgroup.kill", "1")  # the whole subtree, race-free (Linux 5.14+)
        except FileNotFoundError:
            return super()._kill(path)
        # What is still listed is dying: wait for those (the subtree's are waited for by
        # the retries of remove, which find its directories busy until they have gone).
        return list(_pin(f"{path}/cgroup.procs").values())


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    # No dots: every control file has one, so a group name never collides with them.
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid cgroup name {name!r}")


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """The one boundary where the kernel's errors become CgroupUnavailable."""
    try:
        yield
    except OSError as e:
        code = errno.errorcode.get(e.errno or 0, str(e.errno))
        where = f" ({e.filename})" if e.filename else ""
        raise CgroupUnavailable(f"{what}: {e.strerror} [{code}]{where}") from e


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    except OSError as e:
        e.filename = path
        raise
    finally:
        os.close(fd)


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _read_words(path: str) -> list[str]:
    try:
        return _read(path).split()
    except OSError:
        return []


def _read_int_or_none(path: str) -> int | None:
    try:
        return int(_read(path))
    except FileNotFoundError:
        return None


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.oom_control, memory.events, cpu.stat, pids.events)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _subdirs(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _dir(dirs: tuple[CgroupDir, ...], controller: str) -> str:
    return next(d.path for d in dirs if controller in d.controllers)


def _rmdir_tree(path: str) -> bool:
    """Remove a cgroup and its descendants, deepest first; one with processes stays.
    True when it is gone."""
    for name in _subdirs(path):
        _rmdir_tree(os.path.join(path, name))
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _kill_members(path: str) -> list[int]:
    """SIGKILL every process in one cgroup directory; pidfds of those signalled. A pid read
    from cgroup.procs may be gone and reused by the time we signal it, so each is pinned by
    a pidfd first and only signalled if the pid is still listed after that: then the pidfd
    is the member, or a process that has already died (the signal is lost, harmlessly)."""
    procs = f"{path}/cgroup.procs"
    pinned = _pin(procs)
    if not pinned:
        return []
    dying = []
    still = set(_pids(procs))
    for pid, fd in pinned.items():
        if pid in still:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                dying.append(fd)
                continue
        os.close(fd)
    return dying


def _pin(procs: str) -> dict[int, int]:
    """A pidfd for each pid listed in a cgroup.procs."""
    pinned = {}
    for pid in _pids(procs):
        try:
            pinned[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except OSError:
            for fd in pinned.values():
                os.close(fd)
            raise
    return pinned


def _wait_for_exit(pidfds: list[int], deadline: float) -> None:
    """Until every pidfd's process has exited (the fd turns readable) or the deadline;
    closes the fds. An exited process has left its cgroups."""
    try:
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        pending = set(pidfds)
        while pending and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(remaining * 1000):
                pending.discard(fd)
                poller.unregister(fd)
    finally:
        for fd in pidfds:
            os.close(fd)


def _pids(procs: str) -> list[int]:
    try:
        # 0 stands for a process outside our pid namespace: not ours to signal.
        return [p for p in map(int, _read(procs).split()) if p > 0]
    except FileNotFoundError:
        return []
