"""Processes of the local executor's workers, found and ended for good: by pidfd, by
start time beside the pid (pids wrap), and the ledger of runners that may outlive us."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from pathlib import Path

log = logging.getLogger("jobgate.executor.local")


def kill_processes_of_uid(uid: int, rounds: int = 20) -> None:
    """SIGKILL every process running as ``uid`` (root only), until none is left."""
    for _ in range(rounds):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                os.kill(int(entry.name), signal.SIGKILL)
                found = True
            except (FileNotFoundError, ProcessLookupError):
                continue
        if not found:
            return
        time.sleep(0.01)


def end_process(pidfd: int) -> None:
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    os.close(pidfd)


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/PID/stat from the field after the command name (the state) on."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with its pid, it names one
    process for good (a pid is reused, never together with its start time)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _live_descendants(pid: int) -> list[int]:
    """Every process below ``pid`` that has not exited (zombies left out)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        fields = _stat_fields(entry.name) if entry.name.isdigit() else None
        if fields is not None and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _kill_and_wait(pidfds: list[int], timeout_s: float) -> bool:
    """SIGKILL each process, then wait until all have exited. True when they have."""
    poller = select.poll()
    for fd in pidfds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    pending = set(pidfds)
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for fd, _ in poller.poll(remaining * 1000):
            pending.discard(fd)
            poller.unregister(fd)
    return True


def end_process_tree(pidfd: int, pid: int, timeout_s: float = 10.0) -> bool:
    """End a runner and everything below it (its code; the sandbox's init, whose exit
    takes its whole pid namespace along), and wait until they are gone. The runner goes
    first, so it cannot report an ending it did not cause. Never by uid: another gateway
    on this machine may hand out the same uids."""
    below = []
    for child in _live_descendants(pid):
        with contextlib.suppress(OSError):
            below.append(os.pidfd_open(child))
    try:
        return _kill_and_wait([pidfd, *below], timeout_s)
    finally:
        for fd in below:
            os.close(fd)


class RunnerLedger:
    """The runners this gateway started, one file each (``{pid}``: its start time), kept
    in the data dir from its spawn until it is released, so a gateway that starts again
    can end the runners its crashed predecessor left running."""

    def __init__(self, directory: Path):
        self.directory = directory

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def add(self, pid: int) -> None:
        started = process_start_time(pid)
        if started is None:
            return  # already gone
        with contextlib.suppress(OSError):
            (self.directory / str(pid)).write_text(str(started))

    def remove(self, pid: int | None) -> None:
        if pid:
            with contextlib.suppress(OSError):
                (self.directory / str(pid)).unlink()

    def end_leftovers(self) -> int:
        """End every listed runner that still runs, with all that runs below it, wait
        until each is gone, and empty the ledger. Returns how many were running."""
        ended = 0
        for entry in list(os.scandir(self.directory)):
            try:
                pid = int(entry.name)
                started = int(Path(entry.path).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = -1
            # Opened first, checked second: the pidfd then names the process checked.
            if pidfd >= 0 and process_start_time(pid) == started:
                ended += 1
                if not end_process_tree(pidfd, pid):
                    log.error("runner %d left by the previous run did not end", pid)
            if pidfd >= 0:
                os.close(pidfd)
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        return ended
