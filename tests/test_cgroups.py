"""runtimes/cgroups.py: limits for a whole invocation.

The real-cgroup tests run on this machine's hierarchies with real processes (root only;
skipped where cgroups are not usable). Every group lives in a tree named
``jobgate-test-<pid>-<random>`` that its fixture removes, leftovers killed first; every
process a test forks is killed and reaped at teardown, and every wait is bounded.
The v2 layout is tested against fake directory trees (parsing, detection, the files
written and read), since a v1 machine cannot run v2 limits for real; a v2 group's joining
and removal (cgroup.kill) do run for real on the controller-less cgroup2 mount of a hybrid
machine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import select
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtimes.cgroups import (
    CgroupDir,
    CgroupTree,
    CgroupUnavailable,
    InvocationGroup,
    detect,
    parse_mountinfo,
    parse_proc_cgroup,
)

MiB = 1024 * 1024
SUPPORT = detect()
real = pytest.mark.skipif(SUPPORT.version is None or os.geteuid() != 0,
                          reason=f"cgroups not usable here: {SUPPORT.reason}")


# ---------------------------------------------------------------------------------------
# Fixtures: a tree per test, forked processes that never outlive it
# ---------------------------------------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[CgroupTree]:
    t = CgroupTree.create(f"jobgate-test-{os.getpid()}-{secrets.token_hex(3)}", SUPPORT)
    try:
        yield t
    finally:
        # Kill what a failed test left (only processes it forked are in there), then rmdir.
        names = {e.name for d in t.dirs if os.path.isdir(d.path)
                 for e in os.scandir(d.path) if e.is_dir()}
        for name in names:
            t.group(name).remove()
        assert t.remove(), f"cgroup tree {t.name} left behind"


class Forker:
    """Forks functions into child processes; at teardown kills and reaps every one."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def fork(self, fn: Callable[[], object]) -> int:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                fn()
            except BaseException:  # noqa: BLE001 - a forked child must never return to pytest
                with contextlib.suppress(BaseException):
                    os.write(2, traceback.format_exc().encode())  # in the test's captured stderr
                code = 70
            os._exit(code)
        self.pids.append(pid)
        return pid

    def wait(self, pid: int, timeout_s: float = 15.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.pids.remove(pid)
                return status
            time.sleep(0.01)
        raise TimeoutError(f"process {pid} did not end within {timeout_s}s")

    def cleanup(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


@pytest.fixture
def forker() -> Iterator[Forker]:
    f = Forker()
    try:
        yield f
    finally:
        f.cleanup()


class Channel:
    """One JSON message from a forked child to the test, read with a deadline."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def send(self, value: object) -> None:
        os.write(self.w, json.dumps(value).encode() + b"\n")

    def receive(self, timeout_s: float = 15.0) -> object:
        buf = b""
        deadline = time.monotonic() + timeout_s
        while not buf.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.r], [], [], remaining)[0]:
                raise TimeoutError("no message from the child")
            chunk = os.read(self.r, 65536)
            if not chunk:
                raise EOFError("the child ended without a message")
            buf += chunk
        return json.loads(buf)

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def channel() -> Iterator[Channel]:
    c = Channel()
    try:
        yield c
    finally:
        c.close()


def _members(group: InvocationGroup) -> list[set[int]]:
    """The pids in each hierarchy's directory of the group."""
    return [{int(p) for p in Path(d.path, "cgroup.procs").read_text().split()}
            for d in group.dirs]


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def _set_oom_score_adj(value: int) -> None:
    Path("/proc/self/oom_score_adj").write_text(str(value))


# ---------------------------------------------------------------------------------------
# Real cgroups
# ---------------------------------------------------------------------------------------


@real
def test_this_machine_is_detected() -> None:
    assert SUPPORT.version in (1, 2)
    controllers = {c for d in SUPPORT.dirs for c in d.controllers}
    assert {"memory", "pids", "cpu"} <= controllers
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    if SUPPORT.version == 1:
        memory = next(m for m in own if "memory" in m.controllers)
        assert any(d.path.endswith(memory.path.rstrip("/")) for d in SUPPORT.dirs
                   if "memory" in d.controllers)


@real
@pytest.mark.timeout(60)
def test_memory_limit_is_for_the_group_total_and_oom_kills(
        tree: CgroupTree, forker: Forker, channel: Channel) -> None:
    # 3 children of 100 MiB each: every one alone is under the 256 MiB limit, the three
    # together (300 MiB) are over it.
    group = tree.group("oom")
    group.set_limits(memory_bytes=256 * MiB)

    def allocate() -> None:
        # The OOM killer's victim is an allocator, never the supervisor in the group (as
        # the runner's should not be); raising one's own score needs no privilege.
        _set_oom_score_adj(500)
        block = b"\x01" * (100 * MiB)  # written, so every page is charged
        time.sleep(3)
        os._exit(0 if block else 1)

    def init() -> None:
        group.join_self()
        kids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                try:
                    allocate()
                finally:
                    os._exit(2)
            kids.append(pid)
        statuses = [os.waitpid(k, 0)[1] for k in kids]
        channel.send([os.WTERMSIG(s) if os.WIFSIGNALED(s) else -os.WEXITSTATUS(s)
                      for s in statuses])

    pid = forker.fork(init)
    outcomes = channel.receive(timeout_s=30)
    assert forker.wait(pid) == 0
    usage = group.usage()
    assert isinstance(outcomes, list)
    assert signal.SIGKILL in outcomes, outcomes
    assert usage.oom_kills >= 1, usage
    assert usage.memory_peak_bytes is not None
    assert 150 * MiB < usage.memory_peak_bytes <= 256 * MiB + 4 * MiB, usage
    assert group.remove()


@real
@pytest.mark.timeout(60)
def test_pids_limit_refuses_the_eleventh_process(
        tree: CgroupTree, forker: Forker, channel: Channel) -> None:
    group = tree.group("pids")
    group.set_limits(pids=10)

    def init() -> None:
        group.join_self()
        forked, refused = 0, None
        for _ in range(12):
            try:
                pid = os.fork()
            except OSError as e:
                refused = e.errno
                break
            if pid == 0:
                time.sleep(20)  # killed by remove()
                os._exit(0)
            forked += 1
        channel.send({"forked": forked, "errno": refused})
        time.sleep(20)

    pid = forker.fork(init)
    result = channel.receive()
    # The init process itself is the first of the ten.
    assert result == {"forked": 9, "errno": errno.EAGAIN}
    usage = group.usage()
    assert usage.pids_refused >= 1
    if usage.pids_peak is not None:
        assert usage.pids_peak == 10
    assert group.remove()
    assert os.WTERMSIG(forker.wait(pid)) == signal.SIGKILL


@real
@pytest.mark.timeout(60)
def test_cpu_quota_holds_two_spinners_to_half_a_cpu(
        tree: CgroupTree, forker: Forker, channel: Channel) -> None:
    group = tree.group("cpu")
    group.set_limits(cpu_millis=500)

    def spin(until: float) -> None:
        while time.monotonic() < until:
            pass
        os._exit(0)

    def init() -> None:
        group.join_self()
        start = time.monotonic()
        kids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                spin(start + 2.0)
            kids.append(pid)
        for k in kids:
            os.waitpid(k, 0)
        channel.send(time.monotonic() - start)

    pid = forker.fork(init)
    wall = channel.receive(timeout_s=20)
    assert forker.wait(pid) == 0
    cpu = group.usage().cpu_seconds
    assert cpu is not None
    print(f"cpu quota 0.5: {cpu:.2f} CPU-s in {wall:.2f} s wall, 2 spinners")
    assert 0.3 < cpu < 1.5
    assert group.remove()


@real
@pytest.mark.timeout(60)
def test_remove_kills_leftovers_and_the_group_is_gone(
        tree: CgroupTree, forker: Forker) -> None:
    group = tree.group("leftovers")

    def sleeper_with_grandchild() -> None:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        time.sleep(30)
        os._exit(0)

    def init() -> None:
        group.join_self()
        for _ in range(3):
            if os.fork() == 0:
                sleeper_with_grandchild()
        time.sleep(30)

    pid = forker.fork(init)
    _wait_for(lambda: all(len(m) == 7 for m in _members(group)))
    members = _members(group)[0]
    pidfds = [os.pidfd_open(p) for p in members]
    try:
        assert group.remove()
        assert not any(os.path.exists(d.path) for d in group.dirs)
        # Every one of them has ended (a pidfd turns readable when its process exits).
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        _wait_for(lambda: len(poller.poll(0)) == len(pidfds), timeout_s=5)
    finally:
        for fd in pidfds:
            os.close(fd)
    assert os.WTERMSIG(forker.wait(pid)) == signal.SIGKILL
    assert group.remove()  # already gone: still fine, no error


@real
@pytest.mark.timeout(60)
def test_remove_stale_keeps_a_busy_group_and_kills_nothing(
        tree: CgroupTree, forker: Forker) -> None:
    tree.group("empty")
    nested = tree.group("nested")
    inner = Path(nested.dirs[0].path, "inner")
    inner.mkdir()  # a group the code made inside its own: removed too, deepest first
    busy = tree.group("busy")
    pid = forker.fork(lambda: time.sleep(30))
    busy.attach(pid)

    stale = tree.remove_stale()

    assert stale.removed == ("empty", "nested")
    assert stale.busy == ("busy",)
    assert all(os.path.isdir(d.path) for d in busy.dirs)
    assert not inner.exists()
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still running
    assert busy.remove()


@real
@pytest.mark.timeout(30)
def test_limits_can_be_lowered_and_raised_in_either_order(tree: CgroupTree) -> None:
    group = tree.group("limits")
    for memory, pids, cpu in [(64 * MiB, 10, 500), (1024 * MiB, 100, 2000),
                              (32 * MiB, 5, 5), (None, None, None)]:
        group.set_limits(memory_bytes=memory, pids=pids, cpu_millis=cpu)
        if tree.version == 1:
            mem_dir = next(d.path for d in group.dirs if "memory" in d.controllers)
            pids_dir = next(d.path for d in group.dirs if "pids" in d.controllers)
            cpu_dir = next(d.path for d in group.dirs if "cpu" in d.controllers)
            limit = int(Path(mem_dir, "memory.limit_in_bytes").read_text())
            assert limit == memory if memory else limit > 2**62
            memsw = Path(mem_dir, "memory.memsw.limit_in_bytes")
            if memsw.exists():
                assert int(memsw.read_text()) == limit
            assert Path(pids_dir, "pids.max").read_text().strip() == str(pids or "max")
            quota = int(Path(cpu_dir, "cpu.cfs_quota_us").read_text())
            assert quota == (max(1000, cpu * 100) if cpu else -1)
        else:
            path = Path(group.dirs[0].path)
            assert path.joinpath("memory.max").read_text().strip() == str(memory or "max")
    with pytest.raises(ValueError):
        group.set_limits(memory_bytes=0)
    assert group.remove()


@real
@pytest.mark.timeout(60)
@pytest.mark.skipif(SUPPORT.version != 1, reason="v1 refuses; v2 kills instead")
def test_v1_refuses_a_memory_limit_below_current_usage(
        tree: CgroupTree, forker: Forker, channel: Channel) -> None:
    group = tree.group("busy")

    def hog() -> None:
        group.join_self()
        block = b"\x01" * (64 * MiB)
        channel.send(len(block))
        time.sleep(20)

    forker.fork(hog)
    channel.receive()
    with pytest.raises(CgroupUnavailable, match="EBUSY"):
        group.set_limits(memory_bytes=16 * MiB)
    group.set_limits(memory_bytes=128 * MiB)  # above the usage: fine
    assert group.remove()


@real
@pytest.mark.timeout(60)
def test_join_fds_work_after_chroot_and_setuid(
        tree: CgroupTree, forker: Forker, channel: Channel, tmp_path: Path) -> None:
    group = tree.group("join")
    jail = tmp_path / "jail"
    jail.mkdir()

    def child() -> None:
        join = group.join_fds()  # while /sys is visible and we are root
        os.chroot(jail)
        os.chdir("/")
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        assert not os.path.exists("/sys/fs/cgroup")
        join.join()
        channel.send("joined")
        time.sleep(20)

    pid = forker.fork(child)
    assert channel.receive() == "joined"
    assert all(pid in m for m in _members(group))
    assert group.remove()


@real
@pytest.mark.timeout(120)
def test_costs_are_reported(tree: CgroupTree, forker: Forker, channel: Channel,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted: p50 over 100 runs. Each migration (attach, join) comes
    30 ms after the previous cgroup operation, as worker spawns are spaced: the kernel's
    rwsem then needs an RCU grace period to be taken for writing. Back to back (the last
    line) that is skipped, which is what a burst of spawns sees."""
    spacing = 0.03
    costs: dict[str, list[float]] = {k: [] for k in (
        "create", "attach", "set_limits", "usage", "join_fds (open)", "join (write 0)",
        "remove (2 procs)", "remove (empty)", "attach back to back")}
    for i in range(100):
        t0 = time.perf_counter()
        group = tree.group(f"c{i}")
        costs["create"].append(time.perf_counter() - t0)
        pid = forker.fork(lambda: time.sleep(30))
        time.sleep(spacing)
        t0 = time.perf_counter()
        group.attach(pid)
        costs["attach"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        group.set_limits(memory_bytes=256 * MiB, pids=64, cpu_millis=1000)
        costs["set_limits"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        group.usage()
        costs["usage"].append(time.perf_counter() - t0)

        def join(g: InvocationGroup = group) -> None:
            time.sleep(spacing)
            t0 = time.perf_counter()
            fds = g.join_fds()
            t1 = time.perf_counter()
            fds.join()
            channel.send([t1 - t0, time.perf_counter() - t1])
            time.sleep(30)

        forker.fork(join)
        opened, joined = channel.receive()  # type: ignore[misc]
        costs["join_fds (open)"].append(opened)
        costs["join (write 0)"].append(joined)
        t0 = time.perf_counter()
        assert group.remove()  # kills both, waits for them to exit, rmdirs
        costs["remove (2 procs)"].append(time.perf_counter() - t0)
        for p in list(forker.pids):
            forker.wait(p)
        empty = tree.group(f"e{i}")
        t0 = time.perf_counter()
        assert empty.remove()
        costs["remove (empty)"].append(time.perf_counter() - t0)

    a, b = tree.group("a"), tree.group("b")
    pid = forker.fork(lambda: time.sleep(30))
    for i in range(100):
        t0 = time.perf_counter()
        (a if i % 2 else b).attach(pid)
        costs["attach back to back"].append(time.perf_counter() - t0)
    assert a.remove() and b.remove()
    with capsys.disabled():
        print(f"\ncgroup v{tree.version}, {len(tree.dirs)} hierarchies: costs over 100 runs "
              "(ms, p50 / max)")
        for name, samples in costs.items():
            print(f"  {name:20} {statistics.median(samples) * 1000:8.3f} / "
                  f"{max(samples) * 1000:8.3f}")


def _unified_dir() -> str | None:
    """This process's cgroup on a cgroup2 mount (on a hybrid machine: the controller-less
    one), or None."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    own = next((m for m in parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
                if m.hierarchy_id == "0"), None)
    mount = next((m for m in mounts if m.fstype == "cgroup2" and m.root == "/"), None)
    if own is None or mount is None:
        return None
    path = os.path.normpath(mount.point + "/" + own.path)
    return path if os.access(path, os.W_OK) else None


@pytest.mark.skipif(os.geteuid() != 0 or _unified_dir() is None, reason="no writable cgroup2")
@pytest.mark.timeout(60)
def test_v2_join_attach_and_remove_on_a_real_cgroup2(forker: Forker, channel: Channel) -> None:
    """The v2 group's membership and removal (cgroup.kill, wait, rmdir) for real, on this
    machine's cgroup2 mount. Without controllers there, limits and usage cannot run."""
    base = _unified_dir()
    assert base is not None
    name = f"jobgate-test-{os.getpid()}-{secrets.token_hex(3)}"
    tree = CgroupTree(name, 2, (CgroupDir(frozenset({"memory", "pids", "cpu"}),
                                          os.path.join(base, name)),))
    os.mkdir(tree.dirs[0].path)
    try:
        group = tree.group("w1")
        assert type(group).__name__ == "_V2Group"
        sleeper = forker.fork(lambda: time.sleep(30))
        group.attach(sleeper)

        def init() -> None:
            group.join_fds().join()
            for _ in range(3):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
            channel.send("forked")
            time.sleep(30)

        pid = forker.fork(init)
        assert channel.receive() == "forked"
        _wait_for(lambda: len(_members(group)[0]) == 5)
        assert group.remove()
        assert not os.path.exists(group.dirs[0].path)
        assert os.WTERMSIG(forker.wait(pid)) == signal.SIGKILL
        assert os.WTERMSIG(forker.wait(sleeper)) == signal.SIGKILL
    finally:
        if os.path.isdir(os.path.join(tree.dirs[0].path, "w1")):
            tree.group("w1").remove()  # a failed test's leftovers (processes it forked)
        assert tree.remove()


# ---------------------------------------------------------------------------------------
# Fakes: parsing and the v2 layout
# ---------------------------------------------------------------------------------------


def test_mountinfo_and_proc_cgroup_are_parsed() -> None:
    mounts = parse_mountinfo(
        "30 24 0:26 / /sys/fs/cgroup ro,nosuid shared:4 - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw shared:5 - cgroup cgroup rw,cpu,cpuacct\n"
        "32 30 0:28 /docker/abc /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n"
        "33 30 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert [(m.fstype, m.root, m.point) for m in mounts] == [
        ("cgroup", "/", "/sys/fs/cgroup/cpu,cpuacct"),
        ("cgroup", "/docker/abc", "/sys/fs/cgroup/my mem"),
        ("cgroup2", "/", "/sys/fs/cgroup/unified")]
    assert {"cpu", "cpuacct"} <= mounts[0].options
    own = parse_proc_cgroup("12:cpu,cpuacct:/a\n4:memory:/docker/abc/x\n0::/u\n")
    assert [(m.hierarchy_id, sorted(m.controllers), m.path) for m in own] == [
        ("12", ["cpu", "cpuacct"], "/a"), ("4", ["memory"], "/docker/abc/x"), ("0", [], "/u")]


class FakeHost:
    """/proc/self and a cgroup2 mount in tmp_path."""

    def __init__(self, root: Path, own: str, controllers: str = "cpu memory pids io") -> None:
        self.proc = root / "proc" / "self"
        self.mount = root / "sys" / "fs" / "cgroup"
        self.proc.mkdir(parents=True)
        self.proc.joinpath("mountinfo").write_text(
            f"33 30 0:29 / {self.mount} rw - cgroup2 cgroup2 rw,nsdelegate\n")
        self.proc.joinpath("cgroup").write_text(f"0::{own}\n")
        self.cgroup("/", controllers, root_group=True)

    def cgroup(self, path: str, controllers: str = "cpu memory pids io",
               subtree: str = "", procs: str = "", root_group: bool = False) -> Path:
        d = self.mount / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        d.joinpath("cgroup.controllers").write_text(controllers + "\n")
        d.joinpath("cgroup.subtree_control").write_text(subtree + "\n")
        d.joinpath("cgroup.procs").write_text(procs)
        if not root_group:
            d.joinpath("cgroup.type").write_text("domain\n")
        return d


def _can_xattr(path: Path) -> bool:
    try:
        os.setxattr(path, "user.delegate", b"1")
    except OSError:
        return False
    return True


def test_v2_in_a_systemd_delegated_unit_puts_the_tree_beside_us(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "/system.slice/jobgate.service/gateway")
    host.cgroup("/system.slice", subtree="cpu memory pids")
    unit = host.cgroup("/system.slice/jobgate.service", subtree="cpu memory pids")
    host.cgroup("/system.slice/jobgate.service/gateway", procs="4242\n")
    if not _can_xattr(unit):
        pytest.skip("no user xattrs on this file system")

    support = detect(str(host.proc))

    assert support.version == 2, support.reason
    assert [d.path for d in support.dirs] == [str(unit)]

    # The tree enables the controllers for its children; a group is plain files.
    (unit / "jobgate-x").mkdir()
    (unit / "jobgate-x" / "cgroup.subtree_control").write_text("")
    tree = CgroupTree.create("jobgate-x", support)
    assert (unit / "jobgate-x" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (unit / "cgroup.subtree_control").read_text() == "cpu memory pids\n"  # untouched
    g = unit / "jobgate-x" / "w1"
    g.mkdir()
    # (Control files to be written start empty: a regular file would be overwritten in
    # place, a real control file is replaced.)
    files = {"memory.max": "", "memory.swap.max": "", "pids.max": "", "cpu.max": "",
             "memory.peak": "73400320\n",
             "cpu.stat": "usage_usec 1250000\nuser_usec 1000000\nsystem_usec 250000\n",
             "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
             "pids.peak": "7\n", "pids.events": "max 2\n", "cgroup.procs": ""}
    for name, text in files.items():
        g.joinpath(name).write_text(text)
    group = tree.group("w1")

    group.set_limits(memory_bytes=64 * MiB, pids=10, cpu_millis=500)
    assert [g.joinpath(n).read_text() for n in
            ("memory.max", "memory.swap.max", "pids.max", "cpu.max")] == [
        str(64 * MiB), "0", "10", "50000 100000"]
    for name in ("memory.max", "memory.swap.max", "pids.max", "cpu.max"):
        g.joinpath(name).write_text("")
    group.set_limits()
    assert [g.joinpath(n).read_text() for n in
            ("memory.max", "memory.swap.max", "pids.max", "cpu.max")] == [
        "max", "max", "max", "max 100000"]
    usage = group.usage()
    assert (usage.memory_peak_bytes, usage.cpu_seconds, usage.oom_kills, usage.pids_peak,
            usage.pids_refused) == (73400320, 1.25, 1, 7, 2)


def test_v2_with_processes_in_our_cgroup_says_what_to_do(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "/user.slice/session-1.scope")
    host.cgroup("/user.slice", subtree="cpu memory pids")
    host.cgroup("/user.slice/session-1.scope", procs="4242\n4243\n")
    support = detect(str(host.proc))
    assert support.version is None
    assert "no-internal-processes" in support.reason
    assert "Delegate=yes" in support.reason
    with pytest.raises(CgroupUnavailable, match="no-internal-processes"):
        CgroupTree.create("jobgate-x", support)


def test_v2_at_the_root_cgroup_is_usable(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "/")
    support = detect(str(host.proc))
    assert support.version == 2, support.reason
    assert [d.path for d in support.dirs] == [str(host.mount)]


def test_v2_without_the_controllers_falls_back_to_v1(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "/", controllers="hugetlb")
    lines = []
    for i, controller in enumerate(("memory", "pids", "cpu", "cpuacct"), start=40):
        point = tmp_path / "sys" / "fs" / "cgroup" / controller
        (point / "gw").mkdir(parents=True)
        lines.append(f"{i} 30 0:{i} / {point} rw - cgroup cgroup rw,{controller}\n")
    with host.proc.joinpath("mountinfo").open("a") as f:
        f.writelines(lines)
    host.proc.joinpath("cgroup").write_text(
        "4:memory:/gw\n8:pids:/gw\n1:cpu:/gw\n2:cpuacct:/gw\n0::/\n")
    support = detect(str(host.proc))
    assert support.version == 1, support.reason
    assert "not v2" in support.reason and "memory, pids, cpu not available" in support.reason
    assert sorted(d.path for d in support.dirs) == sorted(
        str(tmp_path / "sys" / "fs" / "cgroup" / c / "gw")
        for c in ("cpu", "cpuacct", "memory", "pids"))


def test_no_cgroups_at_all_gives_a_reason(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text("")
    (proc / "cgroup").write_text("0::/\n")
    support = detect(str(proc))
    assert support.version is None
    assert "v2" in support.reason and "v1: memory, pids, cpu not mounted" in support.reason
