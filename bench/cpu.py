"""CPU accounting for a benchmark run.

Whole-machine and per-process figures come from /proc. The workers are harder: the
zygote's children are reaped by the kernel (SIGCHLD ignored), so their CPU time reaches
no parent's counters. Where the machine has a writable cgroup v2 hierarchy (root, or a
delegated subtree) the gateway is started inside a cgroup of its own, and the cgroup's
``cpu.stat`` then counts the gateway and everything it forks, exactly, whatever else runs
on the machine. Without one, the workers' share is what is left of the machine's total.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of one process (all its threads), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _CLK_TCK


def background_cores(seconds: float) -> float:
    """How busy the machine is before we start: anything above ~0.1 core is noise in
    every figure that follows."""
    before = machine_cpu_s()
    time.sleep(seconds)
    return round((machine_cpu_s() - before) / seconds, 2)


def _cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _own_cgroup2() -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


_PREFIX = "jobgate-bench-"


def _remove_stale(home: Path) -> None:
    """Groups left by a run that was killed: empty once its processes died, removable."""
    for group in home.glob(f"{_PREFIX}*"):
        pid = group.name[len(_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                group.rmdir()


class CpuGroup:
    """A cgroup (v2) that the gateway is started in: ``usage_s()`` is the CPU time of the
    gateway, its zygotes and every worker, as the kernel counts it."""

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.home = home  # the cgroup this process came from and returns to

    @classmethod
    def create(cls, name: str) -> CpuGroup | None:
        mount, own = _cgroup2_mount(), _own_cgroup2()
        if mount is None or own is None:
            return None
        home = mount / own.lstrip("/")
        _remove_stale(home)
        path = home / f"{_PREFIX}{os.getpid()}-{name}"
        try:
            path.mkdir()
            (path / "cpu.stat").read_text()
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return cls(path, home)

    @contextlib.contextmanager
    def joined(self) -> Iterator[None]:
        """This process is in the group while the block runs, so what it starts there
        (and their children, forever) stays in it; it leaves the group afterwards."""
        me = str(os.getpid())
        (self.path / "cgroup.procs").write_text(me)
        try:
            yield
        finally:
            (self.home / "cgroup.procs").write_text(me)

    def usage_s(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return 0.0

    def close(self, timeout_s: float = 10.0) -> None:
        """Removes the group once its processes are gone (stragglers are moved out)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except OSError:
                with contextlib.suppress(OSError):
                    for pid in (self.path / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):
                            (self.home / "cgroup.procs").write_text(pid)
                time.sleep(0.1)
