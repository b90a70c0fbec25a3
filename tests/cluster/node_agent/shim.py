"""Per-container supervisor of the test node agent (test infrastructure; stdlib only).

What a container runtime's shim does for a real kubelet, for one local process tree:

* it is a child subreaper, so every descendant stays in its subtree even when it starts
  its own session (jobgate's runner puts user code in one) or is orphaned;
* when the main process exits, or on SIGUSR1 (the agent's "kill now"), or when the agent
  dies, it SIGKILLs the whole subtree, so nothing outlives the container;
* it enforces the memory limit (sum of RSS over the subtree; OOMKilled when over);
* it writes the exit record (exit code, reason, times) to a JSON file the agent reads.

SIGTERM (sent by the agent to the container's process group on pod deletion) reaches the
main process directly; the shim ignores it and keeps supervising.

Usage: python -I shim.py SPEC.json   (spec: argv, env, cwd, status_path,
memory_limit_bytes, agent_pid)
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
WAKE_INTERVAL_S = 0.5
REAP_LIMIT_S = 5.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _children(pid: int) -> list[int] | None:
    """Direct children from /proc/PID/task/*/children (None when the kernel lacks it)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return found


def _children_by_scan() -> dict[int, list[int]]:
    """Parent links of every process, from /proc/*/stat (the slow, always-there way)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesized command name: state, ppid, ...
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """Every process below `root` (a subreaper: orphans of the subtree stay below it)."""
    scanned: dict[int, list[int]] | None = None
    found: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        kids = _children(pid) if scanned is None else scanned.get(pid, [])
        if kids is None:
            scanned = _children_by_scan()
            kids = scanned.get(pid, [])
        found.extend(kids)
        stack.extend(kids)
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def kill_subtree() -> None:
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def reap_all(deadline: float) -> None:
    """Waits for every child (orphans re-parented to us included), within a time bound."""
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            kill_subtree()
            time.sleep(0.05)


def write_status(path: str, record: dict[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def exit_code_of(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def child_setup(libc: ctypes.CDLL) -> None:
    """In the main process before exec: an empty signal mask (ours blocks the ones we
    wait for), and SIGKILL should this shim ever be SIGKILLed itself."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    status_path: str = spec["status_path"]
    agent_pid: int = spec["agent_pid"]
    memory_limit: int = spec.get("memory_limit_bytes") or 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    # Signals are taken synchronously with sigtimedwait, so none interrupts bookkeeping.
    watched = {signal.SIGCHLD, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    started_at = now()
    try:
        child = subprocess.Popen(
            spec["argv"], env=spec["env"], cwd=spec["cwd"], stdin=subprocess.DEVNULL,
            preexec_fn=lambda: child_setup(libc),
        )
    except OSError as exc:
        print(f"test node agent: cannot start {spec['argv'][0]!r}: {exc}", flush=True)
        write_status(status_path, {
            "exitCode": 128, "reason": "StartError", "message": str(exc),
            "startedAt": started_at, "finishedAt": now(),
        })
        return 128

    reason: str | None = None
    main_status: int | None = None
    while main_status is None:
        info = signal.sigtimedwait(watched, WAKE_INTERVAL_S)
        if info is not None and info.si_signo == signal.SIGUSR1:
            kill_subtree()
        if os.getppid() != agent_pid:  # the agent is gone: the container goes with it
            kill_subtree()
        if memory_limit:
            tree = descendants(os.getpid())
            if rss_bytes(tree) > memory_limit:
                reason = "OOMKilled"
                kill_subtree()
        # Reap whatever exited: the main process, or orphans handed to us.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == child.pid:
                main_status = status
                child.returncode = exit_code_of(status)  # Popen must not wait for it again

    # A container ends when its main process does: nothing else of it may survive.
    kill_subtree()
    reap_all(time.monotonic() + REAP_LIMIT_S)
    code = exit_code_of(main_status)
    if reason is None:
        reason = "Completed" if code == 0 else "Error"
    write_status(status_path, {
        "exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": now(),
    })
    return code


if __name__ == "__main__":
    sys.exit(main())
