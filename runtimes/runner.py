"""jobgate runner: the one program every worker runs (standard library only).

A runner serves exactly ONE invocation, then exits. It starts ahead of need, prepares
its workspace and its listening socket, then waits for one assignment over HTTP:

    GET  /healthz   -> 200 "ok"                         (readiness; any number of times)
    POST /v1/run    -> 200 WorkerReport (JSON)          (exactly once; bearer token)

While the code runs, the gateway may send ``W`` (one byte, "watch") on the same
connection: from then on the runner streams the output as it grows (see OutputStreamer),
and the answer is a sequence of frames ending with the report instead of one JSON body.
Nobody watching, nothing changes: the answer is the one JSON body, as before.

Two ways to start it:

* ``runner.py serve`` - one worker, listening on ``$JOBGATE_RUNNER_BIND`` (default
  ``$POD_IP:8080``). This is what a Kubernetes worker pod runs.
* ``runner.py zygote`` - a pre-imported parent for the local executor. It reads
  ``spawn`` lines on stdin and forks a worker per line; each worker binds its own
  loopback port and announces ``ready <worker_id> <pid> <port>`` on stdout. Forking from
  a parent that has already imported everything makes a warm start cost a fork, not an
  interpreter start.

Python profiles run the user's entrypoint *inside* a forked child of the worker
(``runpy``), so a Python invocation never pays for a new interpreter either. Other
profiles exec their command. Either way the code runs in its own session (process
group), under rlimits, with a scrubbed environment, in a private workspace.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import gc
import hashlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any

# The runner protocol this runner speaks (gateway.models.RUNNER_PROTOCOL): an assignment
# of another is refused with a StartFailed report.
PROTOCOL_VERSION = 1
RUN_PATH = "/v1/run"
HEALTH_PATH = "/healthz"
MAX_ASSIGNMENT_BYTES = 64 * 1024 * 1024
HEADER_LIMIT = 64 * 1024
# Live output (a watched run): the byte that asks for it, how often the output files are
# looked at while someone watches, the most one frame carries, and how long one frame
# may take to send before streaming stops (a gateway that stopped reading must not hold
# the supervision loop, which enforces the timeout).
WATCH = b"W"
STREAM_TICK_S = 0.1
STREAM_FRAME_BYTES = 64 * 1024
STREAM_SEND_TIMEOUT_S = 5.0
FRAMES_TYPE = "application/x-jobgate-frames"
# Exit status the in-process Python child uses to say "MemoryError": distinct from any
# status a normal program picks by accident, and below 128 so it is not read as a signal.
MEMORY_ERROR_EXIT = 117
# Exit status of a child whose program could not be executed at all (reason StartFailed).
EXEC_FAILED_EXIT = 118
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Where the code finds its workspace inside a sandbox (never a host path).
CODE_WORKSPACE = "/workspace"
# Modules a Python worker imports before it forks, so user code finds them loaded.
PRELOAD_MODULES = (
    "json", "re", "math", "random", "datetime", "collections", "itertools",
    "functools", "typing", "dataclasses", "pathlib", "string", "textwrap", "statistics",
    "decimal", "fractions", "hashlib", "base64", "csv", "io", "struct", "enum",
    "heapq", "bisect", "copy", "operator", "uuid", "urllib.parse", "subprocess", "shutil",
    "tempfile", "glob", "time", "zlib", "gzip", "array", "contextlib", "abc",
)


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def _now_ms() -> float:
    return time.monotonic() * 1000.0


def _safe_relpath(name: str) -> str:
    """A workspace-relative path, or ValueError. The gateway checks too: defence in depth."""
    if not name or "\x00" in name or name.startswith("/") or "\\" in name:
        raise ValueError(f"invalid file name {name!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid file name {name!r}")
    return name


def _read_capped(path: str, cap: int) -> tuple[bytes, int]:
    """First ``cap`` bytes of a file and its full size."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return f.read(cap), size
    except FileNotFoundError:
        return b"", 0


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------
# Running one assignment
# ---------------------------------------------------------------------------------------


class Limits:
    """Resource limits of one run, from the assignment."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.memory_bytes = int(spec.get("memory_bytes") or 0)
        self.memory_mode = str(spec.get("memory_mode") or "as")  # "as" | "data" | "none"
        self.cpu_seconds = int(spec.get("cpu_seconds") or 0)
        self.nofile = int(spec.get("nofile") or 256)
        self.nproc = int(spec.get("nproc") or 64)
        self.fsize_bytes = int(spec.get("fsize_bytes") or 0)

    def apply(self, uid: int | None) -> None:
        """Set the rlimits in the child, after fork and before the code runs."""
        setrl = resource.setrlimit
        setrl(resource.RLIMIT_CORE, (0, 0))
        setrl(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        if self.cpu_seconds:
            # Soft limit sends SIGXCPU, the hard limit one second later SIGKILL.
            setrl(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 1))
        if self.fsize_bytes:
            setrl(resource.RLIMIT_FSIZE, (self.fsize_bytes, self.fsize_bytes))
        if self.memory_bytes and self.memory_mode == "as":
            setrl(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))
        elif self.memory_bytes and self.memory_mode == "data":
            setrl(resource.RLIMIT_DATA, (self.memory_bytes, self.memory_bytes))
        nproc = self.nproc
        if uid is None and os.geteuid() != 0:
            if not _sees_every_process():
                # A container (a worker pod): RLIMIT_NPROC counts every task of the uid on
                # the whole node, every other worker pod's included, and none of them can
                # be seen from here to budget for. The pod's pids cgroup (the kubelet's
                # podPidsLimit) bounds the code instead.
                return
            # RLIMIT_NPROC counts every process of the real uid: without a uid of its own,
            # the worker's budget is added to what this user already runs.
            nproc += _count_processes_of(os.getuid())
        setrl(resource.RLIMIT_NPROC, (nproc, nproc))


def _has_children() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def _children_of(ppid: int) -> list[int]:
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == ppid:
                children.append(int(entry.name))
    return children


def _kill_all_of_uid(uid: int) -> None:
    """kill(-1) from a helper running as ``uid`` reaches exactly that uid's processes."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _reap_orphans() -> None:
    """The runner is a child subreaper: collect the code's orphans so none stay zombies."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


_LIBC: Any = None


def _libc() -> Any:
    """libc through ctypes, loaded once (the zygote loads it before it forks)."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """When the parent dies, the kernel sends us ``sig`` (PR_SET_PDEATHSIG; 0 clears it)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(pr_set_pdeathsig, sig, 0, 0, 0)


def _become_subreaper() -> None:
    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _sees_every_process() -> bool:
    """Whether this process is in the host's pid namespace: there, pid 2 is the kernel's
    kthreadd; a container's own pid namespace does not show it."""
    try:
        with open("/proc/2/comm") as f:
            return f.read().strip() == "kthreadd"
    except OSError:
        return False


def _count_processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += 1
    return count


class CodeSpec:
    """What the code's own process needs to start: it crosses from the runner to a
    sandbox's init as JSON, so it holds plain values only."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, limits: dict[str, Any],
                 inprocess: bool, stdin: bool) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.limits = limits
        self.inprocess = inprocess
        self.stdin = stdin

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CodeSpec:
        return cls(**json.loads(data))


class ChildIO:
    """The descriptors the code's process starts from: its output files, the directory
    its stdin file is in (the runner's private one), and an empty network namespace."""

    def __init__(self, stdout_fd: int, stderr_fd: int, private_dir_fd: int,
                 netns_fd: int | None) -> None:
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.private_dir_fd = private_dir_fd
        self.netns_fd = netns_fd

    def fds(self) -> list[int]:
        return [fd for fd in (self.stdout_fd, self.stderr_fd, self.private_dir_fd,
                              self.netns_fd) if fd is not None]


def run_code(spec: CodeSpec, io: ChildIO, uid: int | None, preloaded_python: bool,
             seccomp_program: bytes | None) -> None:
    """The code's process, after its fork: drop everything, then become the code.
    Never returns."""
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU, signal.SIGTERM,
                    signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        if spec.stdin:
            stdin_fd = os.open("stdin", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=io.private_dir_fd)
        else:
            stdin_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin_fd, 0)
        os.dup2(io.stdout_fd, 1)
        os.dup2(io.stderr_fd, 2)
        if io.netns_fd is not None:
            _enter_network_namespace(io.netns_fd)
        os.closerange(3, 65536)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        # After setuid: a credential change clears the parent-death signal.
        _die_with_parent()
        Limits(spec.limits).apply(uid)
        os.chdir(spec.cwd)
        if seccomp_program is not None:
            # Last: the filter (and no_new_privs) must not stop the steps above.
            _SECCOMP_INSTALL(seccomp_program)
        argv = [str(x) for x in spec.argv]
        if spec.inprocess and preloaded_python:
            code = _run_python_inprocess(argv, spec.env, spec.cwd)
        else:
            try:
                os.execvpe(argv[0], argv, spec.env)
            except OSError as e:
                os.write(2, f"jobgate: cannot start {argv[0]}: {e.strerror}\n".encode())
                code = EXEC_FAILED_EXIT
    except MemoryError:
        code = MEMORY_ERROR_EXIT
    except BaseException:  # noqa: BLE001 - report anything, the child must not return
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode())
        code = 127
    os._exit(code)


# Installs a seccomp program in the calling process (set by the zygote when it has one).
_SECCOMP_INSTALL: Any = None


class DirectLauncher:
    """The code's process forked straight from the runner: no sandbox (not root, or
    turned off). Its leftovers are found through the runner being their subreaper."""

    def __init__(self, uid: int | None, preloaded_python: bool,
                 seccomp_program: bytes | None) -> None:
        self.uid = uid
        self.preloaded_python = preloaded_python
        self.seccomp_program = seccomp_program
        self.pid = 0
        self.pidfd = -1
        self.oom_kills_before: int | None = None

    def start(self, spec: CodeSpec, io: ChildIO) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.oom_kills_before = own_cgroup_oom_kills()
        pid = os.fork()
        if pid == 0:
            run_code(spec, io, self.uid, self.preloaded_python, self.seccomp_program)
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)

    def done_fd(self) -> int:
        return self.pidfd

    def kill(self) -> None:
        _killpg(self.pid)

    def finish(self, killed: bool) -> int:
        """The code's wait status, once nothing it started is left."""
        _, status = os.waitpid(self.pid, 0)
        os.close(self.pidfd)
        self._kill_leftovers()
        return status

    def _kill_leftovers(self) -> None:
        """Nothing the code started may outlive the run. The runner is a child subreaper,
        so every descendant still alive (even one that left the group with setsid) is
        reparented to it: no children left means nothing survived, with no /proc scan."""
        _killpg(self.pid)
        for _ in range(100):
            _reap_orphans()
            if not _has_children():
                return
            if self.uid is not None:
                _kill_all_of_uid(self.uid)
            else:
                for child in _children_of(os.getpid()):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(child, signal.SIGKILL)
            time.sleep(0.002)

    def scratch_full(self) -> bool:
        return False

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process for the memory limit of the cgroup the
        runner lives in (a worker pod's container) while the code ran."""
        before = self.oom_kills_before
        after = own_cgroup_oom_kills() if before is not None else None
        return before is not None and after is not None and after > before


def own_cgroup_oom_kills() -> int | None:
    """The OOM-kill count of this process's memory cgroup, when it has a limit of its
    own; None when there is none to read (the root cgroup, no memory controller)."""
    try:
        lines = open("/proc/self/cgroup").read().splitlines()  # noqa: SIM115
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            # A container sees its own cgroup at the mount's root; a host process at path.
            for directory in (f"/sys/fs/cgroup/memory{path}", "/sys/fs/cgroup/memory"):
                limit = _read_int(f"{directory}/memory.limit_in_bytes")
                if limit is not None and limit < 1 << 62:
                    return _keyed_int(f"{directory}/memory.oom_control", "oom_kill")
                if limit is not None:
                    return None
        if controllers == "" and line.startswith("0::"):  # cgroup v2
            for directory in (f"/sys/fs/cgroup{path}", "/sys/fs/cgroup"):
                if os.path.exists(f"{directory}/memory.max"):
                    return _keyed_int(f"{directory}/memory.events", "oom_kill")
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _keyed_int(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        return None
    return None


def _killpg(pgid: int) -> None:
    # The child itself too: killed within its first moments, it may not have called
    # setsid yet, and then there is no group of that id to kill.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pgid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def new_report(invocation_id: Any, workspace: str, workspace_base: str,
               **fields: Any) -> dict[str, Any]:
    """A report with every field of the protocol (the gateway's WorkerReport), whatever
    happened: the gateway validates it, and the local executor removes ``workspace_base``
    (this worker's directory) once it has stored the outputs."""
    report: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "invocation_id": invocation_id,
        "exit_code": None,
        "signal": None,
        "reason": None,
        "error": None,
        "stdout": "",
        "stderr": "",
        "stdout_bytes": 0,
        "stderr_bytes": 0,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "result": None,
        "result_error": None,
        "artifacts": [],
        "artifact_error": None,
        "workspace": workspace,
        "workspace_base": workspace_base,
        "timings": {},
    }
    report.update(fields)
    return report


class AssignmentRefused(Exception):
    """An assignment this runner will not run (its message is the report's error)."""


class Run:
    """One assignment: prepare files, run the code, collect what it produced."""

    def __init__(self, assignment: dict[str, Any], workspace: str, code_workspace: str,
                 outdir: str, io: ChildIO, launcher: Any, uid: int | None) -> None:
        self.a = assignment
        self.workspace = workspace  # as this runner sees it
        self.code_workspace = code_workspace  # as the code sees it
        self.outdir = outdir
        self.io = io
        self.launcher = launcher
        self.uid = uid
        self.limits = Limits(assignment.get("limits") or {})
        self.timeout_s = float(assignment.get("timeout_s") or 30.0)
        self.output_cap = int(assignment.get("output_cap_bytes") or 1024 * 1024)
        self.result_cap = int(assignment.get("result_cap_bytes") or 1024 * 1024)
        self.cancelled = False
        self.artifact_fds: list[int] = []

    # -- preparation ---------------------------------------------------------------------

    def write_files(self) -> None:
        """Into a workspace no code has run in yet (fresh for every worker)."""
        files: dict[str, str] = self.a.get("files") or {}
        for name, content in files.items():
            path = os.path.join(self.workspace, _safe_relpath(name))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(content)
        with open(os.path.join(self.workspace, "input.json"), "wb") as f:
            f.write(json.dumps(self.a.get("input")).encode())
        os.makedirs(os.path.join(self.workspace, "artifacts"), exist_ok=True)
        if self.uid is not None:
            for root, dirs, names in os.walk(self.workspace):
                for n in dirs + names:
                    os.lchown(os.path.join(root, n), self.uid, self.uid)

    def child_env(self) -> dict[str, str]:
        ws = self.code_workspace
        env = {
            "PATH": SAFE_PATH,
            "HOME": ws,
            "TMPDIR": "/tmp" if ws == "/workspace" else ws,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update({str(k): str(v) for k, v in (self.a.get("env") or {}).items()})
        inp = json.dumps(self.a.get("input"))
        # Reserved names are set last so user env cannot override them.
        env["JOBGATE_INVOCATION_ID"] = str(self.a.get("invocation_id", ""))
        env["JOBGATE_ATTEMPT"] = str(self.a.get("attempt", 1))
        env["JOBGATE_WORKSPACE"] = ws
        env["JOBGATE_INPUT_FILE"] = os.path.join(ws, "input.json")
        env["JOBGATE_ARTIFACTS_DIR"] = os.path.join(ws, "artifacts")
        if len(inp) <= 32 * 1024:
            env["JOBGATE_INPUT"] = inp
        return env

    # -- supervision ---------------------------------------------------------------------

    def execute(self, wakeup_fd: int, streamer: OutputStreamer | None = None
                ) -> dict[str, Any]:
        t_assigned = _now_ms()
        self.write_files()
        has_stdin = self.a.get("stdin") is not None
        if has_stdin:
            with open(os.path.join(self.outdir, "stdin"), "w", encoding="utf-8") as f:
                f.write(self.a["stdin"])
        spec = CodeSpec(argv=[str(x) for x in self.a["argv"]], env=self.child_env(),
                        cwd=self.code_workspace, limits=self.a.get("limits") or {},
                        inprocess=bool(self.a.get("inprocess")), stdin=has_stdin)
        t_start = _now_ms()
        self.launcher.start(spec, self.io)
        status, timed_out = self._wait(wakeup_fd, streamer)
        t_end = _now_ms()
        report = self._collect(status, timed_out)
        report["timings"] = {
            "prepare_ms": round(t_start - t_assigned, 3),
            "run_ms": round(t_end - t_start, 3),
        }
        return report

    def _wait(self, wakeup_fd: int, streamer: OutputStreamer | None = None
              ) -> tuple[int, bool]:
        """Wait for the code, its timeout, or a cancel (SIGTERM via the wakeup fd); with a
        ``streamer``, also for the gateway asking to watch, and stream while it does."""
        deadline = time.monotonic() + self.timeout_s
        done_fd = self.launcher.done_fd()
        poller = select.poll()
        poller.register(done_fd, select.POLLIN)
        poller.register(wakeup_fd, select.POLLIN)
        control = streamer.control_fd() if streamer is not None else None
        if control is not None:
            poller.register(control, select.POLLIN)
        timed_out = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                wait_s = remaining
                if streamer is not None and streamer.active:
                    wait_s = min(remaining, STREAM_TICK_S)
                events = poller.poll(wait_s * 1000.0)
                if any(fd == done_fd for fd, _ in events):
                    break
                if any(fd == wakeup_fd for fd, _ in events):
                    with contextlib.suppress(BlockingIOError):
                        os.read(wakeup_fd, 512)
                    if _TERMINATING:
                        self.cancelled = True
                        break
                if streamer is not None:
                    if control is not None and any(fd == control for fd, _ in events) \
                            and not streamer.read_control():
                        poller.unregister(control)  # the gateway hung up: stop asking
                        control = None
                    streamer.pump()
        finally:
            killed = timed_out or self.cancelled
            if killed:
                self.launcher.kill()
            status = self.launcher.finish(killed)
        return status, timed_out

    # -- results -------------------------------------------------------------------------

    def _collect(self, status: int, timed_out: bool) -> dict[str, Any]:
        out, out_size = _read_capped(os.path.join(self.outdir, "stdout"), self.output_cap)
        err, err_size = _read_capped(os.path.join(self.outdir, "stderr"), self.output_cap)
        exit_code: int | None = None
        signal_num: int | None = None
        if os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            signal_num = os.WTERMSIG(status)
            exit_code = 128 + signal_num
        reason = self._reason(exit_code, signal_num, timed_out, out_size, err_size, err)
        report = new_report(
            self.a.get("invocation_id"), self.code_workspace, os.path.dirname(self.outdir),
            exit_code=exit_code, signal=signal_num, reason=reason,
            stdout=_text(out), stderr=_text(err), stdout_bytes=out_size,
            stderr_bytes=err_size, stdout_truncated=out_size > len(out),
            stderr_truncated=err_size > len(err))
        if reason == "StartFailed":
            report["error"] = _text(err).strip()
        try:
            ws_fd = os.open(self.workspace, _DIR_FLAGS)
        except OSError:
            return report
        try:
            self._collect_result(report, ws_fd)
            self._collect_artifacts(report, ws_fd)
        finally:
            os.close(ws_fd)
        return report

    def _reason(self, exit_code: int | None, signal_num: int | None, timed_out: bool,
                out_size: int, err_size: int, err: bytes) -> str | None:
        if self.cancelled:
            return "Cancelled"
        if exit_code == EXEC_FAILED_EXIT and err.startswith(b"jobgate: cannot start"):
            return "StartFailed"
        if timed_out or signal_num in (signal.SIGXCPU,):
            return "Timeout"
        if self.launcher.oom_killed():
            # Any process of the invocation killed for its memory fails it all, whatever
            # the main process made of that (cgroup v2's memory.oom.group, for v1 too).
            return "MemoryLimit"
        if signal_num == signal.SIGKILL and self.limits.cpu_seconds:
            # The hard CPU rlimit kills with SIGKILL one second after SIGXCPU.
            return "Timeout"
        hard = self.limits.fsize_bytes
        if signal_num == signal.SIGXFSZ or (
            exit_code and hard and max(out_size, err_size) >= hard
        ):
            return "OutputLimit"
        if exit_code == MEMORY_ERROR_EXIT or (exit_code and _looks_out_of_memory(err)):
            return "MemoryLimit"
        if exit_code and self.launcher.scratch_full():
            return "DiskLimit"
        if exit_code == 0:
            return None
        return "NonZeroExit"

    def _collect_result(self, report: dict[str, Any], ws_fd: int) -> None:
        """result.json, opened relative to the workspace without following a link and
        without blocking (a FIFO there must not hold the runner)."""
        try:
            fd = os.open("result.json", _FILE_FLAGS, dir_fd=ws_fd)
        except FileNotFoundError:
            return
        except OSError as e:
            report["result_error"] = f"result.json could not be read: {e.strerror}"
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not _stat_is_file(st):
                report["result_error"] = "result.json is not a regular file"
                return
            if not self._codes_own(st):
                report["result_error"] = "result.json is not the code's own file"
                return
            if st.st_size > self.result_cap:
                report["result_error"] = (
                    f"result.json is {st.st_size} bytes, over the limit of {self.result_cap}"
                )
                return
            raw = f.read(self.result_cap + 1)
        try:
            report["result"] = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            report["result_error"] = f"result.json is not valid JSON: {e}"

    def _collect_artifacts(self, report: dict[str, Any], ws_fd: int) -> None:
        """Every regular file under artifacts/, walked by descriptor: no link is followed
        (not even artifacts/ itself), FIFOs, sockets and devices are skipped unopened or
        without blocking. Each one kept is copied into the runner's private directory,
        so nothing the code controls is read again after this."""
        spec = self.a.get("artifacts") or {}
        max_count = int(spec.get("max_count") or 100)
        max_file = int(spec.get("max_file_bytes") or 100 * 1024 * 1024)
        max_total = int(spec.get("max_total_bytes") or 500 * 1024 * 1024)
        try:
            art_fd = os.open("artifacts", _DIR_FLAGS, dir_fd=ws_fd)
        except OSError:
            return  # missing, a link, or not a directory: no artifacts
        found: list[dict[str, Any]] = []
        total = 0
        store = os.path.join(self.outdir, "artifacts")
        try:
            for dirpath, dirnames, filenames, dir_fd in os.fwalk(
                    ".", dir_fd=art_fd, follow_symlinks=False):
                dirnames.sort()
                for fname in sorted(filenames):
                    rel = os.path.normpath(os.path.join(dirpath, fname))
                    if not _printable_name(rel):
                        continue
                    try:
                        fd = os.open(fname, _FILE_FLAGS, dir_fd=dir_fd)
                    except OSError:
                        continue  # links and vanished files are not artifacts
                    with os.fdopen(fd, "rb") as f:
                        st = os.fstat(f.fileno())
                        if not _stat_is_file(st) or not self._codes_own(st):
                            continue
                        if len(found) >= max_count:
                            report["artifact_error"] = (
                                f"more than {max_count} artifacts; the rest were not kept"
                            )
                            report["artifacts"] = found
                            return
                        if st.st_size > max_file:
                            report["artifact_error"] = (
                                f"artifact {rel!r} is {st.st_size} bytes, over the "
                                f"per-artifact limit of {max_file}"
                            )
                            continue
                        if total + st.st_size > max_total:
                            report["artifact_error"] = (
                                f"artifacts exceed the total limit of {max_total} bytes"
                            )
                            continue
                        size, digest, path = self._keep(f, store, len(found), max_file)
                        total += size
                        found.append({"name": rel, "size": size, "sha256": digest,
                                      "path": path})
        finally:
            os.close(art_fd)
        report["artifacts"] = found

    def _codes_own(self, st: os.stat_result) -> bool:
        """Only a file of the code's own uid: a hard link to a file the code could not
        read (possible where the workspace shares a filesystem with the host and
        fs.protected_hardlinks is off) is not read for it by the runner, which is root."""
        return self.uid is None or st.st_uid == self.uid

    def _keep(self, f: Any, store: str, index: int, cap: int) -> tuple[int, str, str]:
        """Where an artifact is read from later. The gateway reads the local executor's
        (a copy in the runner's private directory); a worker uploading itself reads the
        descriptor it already holds, so a pod's size-limited disk holds no second copy."""
        if self.a.get("keep_workspace"):
            if index == 0:
                os.mkdir(store, 0o700)
            path = os.path.join(store, str(index))
            size, digest = _copy_out(f, path, cap)
            return size, digest, path
        digest = hashlib.sha256()
        size = 0
        while size <= cap and (chunk := f.read(1024 * 1024)):
            digest.update(chunk)
            size += len(chunk)
        fd = os.dup(f.fileno())
        self.artifact_fds.append(fd)
        return size, digest.hexdigest(), f"/proc/self/fd/{fd}"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _printable_name(name: str) -> bool:
    """Artifact names become storage keys and URLs: UTF-8 without control characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(ord(c) < 32 or ord(c) == 127 for c in name)


def _copy_out(src: Any, dest: str, cap: int) -> tuple[int, str]:
    """Copy an open file (at most ``cap`` bytes: it cannot grow, the code is gone, but a
    size is only trusted once read) and hash it on the way."""
    digest = hashlib.sha256()
    size = 0
    with open(dest, "xb") as out:
        while size <= cap and (chunk := src.read(1024 * 1024)):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Uploads: outputs go straight to storage through presigned URLs, so a result survives the
# gateway (and its replica) going away while the code runs. The worker holds no credentials.
# ---------------------------------------------------------------------------------------


class UploadError(Exception):
    pass


def _request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
             timeout: float = 30.0) -> tuple[int, bytes]:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target or "/", body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _with_retries(what: str, budget_s: float, attempt: Any) -> Any:
    """Retry ``attempt`` with exponential backoff and jitter within ``budget_s``."""
    import random

    deadline = time.monotonic() + budget_s
    delay = 0.2
    while True:
        try:
            return attempt()
        except (OSError, UploadError) as e:
            if time.monotonic() + delay > deadline:
                raise UploadError(f"{what}: {e}") from e
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)


def _put_file(url: str, path: str, size: int) -> None:
    with open(path, "rb") as f:
        status, body = _request("PUT", url, body=f, headers={
            "Content-Length": str(size), "Content-Type": "application/octet-stream"},
            timeout=300)
    if not 200 <= status < 300:
        raise UploadError(f"PUT answered {status}: {body[:200]!r}")


def _put_bytes(url: str, data: bytes, content_type: str) -> None:
    status, body = _request("PUT", url, body=data, headers={
        "Content-Length": str(len(data)), "Content-Type": content_type})
    if not 200 <= status < 300:
        raise UploadError(f"PUT answered {status}: {body[:200]!r}")


def upload_outputs(report: dict[str, Any], uploads: dict[str, Any]) -> None:
    """Artifacts first (their URLs come from the gateway, which checks the limits), the
    report last: once report.json is stored, the invocation's outcome is known."""
    budget = float(uploads.get("retry_budget_s") or 60)
    artifacts = report.get("artifacts") or []
    if artifacts:
        listing = json.dumps({"artifacts": [
            {k: a[k] for k in ("name", "size", "sha256")} for a in artifacts]}).encode()

        def ask() -> dict[str, Any]:
            status, body = _request("POST", uploads["artifacts_url"], body=listing, headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {uploads['token']}"})
            if status >= 500:
                raise UploadError(f"the gateway answered {status}")
            answer: dict[str, Any] = json.loads(body or b"{}")
            if status != 200:
                # The gateway's one error shape: its message, and its code for the report
                # (StorageQuotaExceeded becomes the invocation's reason StorageQuota).
                error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
                answer.setdefault("refused", error.get("message")
                                  or f"the gateway answered {status}: {body[:300]!r}")
                answer.setdefault("refused_code", error.get("code"))
            return answer

        try:
            answer = _with_retries("asking for artifact upload URLs", budget, ask)
        except UploadError as e:
            answer = {"refused": str(e)}
        if answer.get("refused"):
            report["artifact_error"] = report.get("artifact_error") or answer["refused"]
            report["artifact_refusal"] = answer.get("refused_code")
            report["artifacts"] = []
        else:
            urls = answer.get("urls", {})
            kept = []
            for a in artifacts:
                url = urls.get(a["name"])
                if not url:
                    continue
                try:
                    _with_retries(f"uploading {a['name']}", budget,
                                  lambda a=a, url=url: _put_file(url, a["path"], a["size"]))
                    kept.append(a)
                except UploadError as e:
                    report["upload_error"] = str(e)
            report["artifacts"] = kept
    for a in report.get("artifacts") or []:
        a.pop("path", None)
    data = json.dumps(report).encode()
    try:
        _with_retries("uploading the report", budget,
                      lambda: _put_bytes(uploads["report_url"], data, "application/json"))
        report["report_uploaded"] = True
    except UploadError as e:
        report["upload_error"] = str(e)


def _stat_is_file(st: os.stat_result) -> bool:
    import stat as _stat

    return _stat.S_ISREG(st.st_mode)


def _looks_out_of_memory(stderr: bytes) -> bool:
    tail = stderr[-4096:]
    return any(m in tail for m in (
        b"MemoryError", b"Cannot allocate memory", b"out of memory",
        b"JavaScript heap out of memory", b"Fatal process OOM", b"std::bad_alloc",
        b"xmalloc",
    ))


def _is_runner_frame(filename: str) -> bool:
    return filename == __file__


def _exec_as_main(script: str) -> None:
    """What ``python3 script`` does, without runpy's import machinery (2 ms saved)."""
    import types

    with open(script, "rb") as f:
        source = f.read()
    code = compile(source, script, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _run_python_inprocess(argv: list[str], env: dict[str, str], workspace: str) -> int:
    """Run ``python3 FILE ARGS`` inside this (forked, pre-imported) process."""
    script_idx = 1
    while script_idx < len(argv) and argv[script_idx].startswith("-"):
        script_idx += 1  # interpreter flags such as -u are accepted and ignored
    if script_idx >= len(argv):
        os.write(2, b"jobgate: python entrypoint needs a script file\n")
        return 2
    script = argv[script_idx]
    os.environ.clear()
    os.environ.update(env)
    sys.argv = argv[script_idx:]
    # As `python3 script` does: the script's own directory comes first on sys.path.
    sys.path[0:0] = [os.path.dirname(os.path.join(workspace, script))]
    # Fresh text streams on the redirected descriptors; line-buffered like a terminal
    # would not be, but nothing is lost if the code crashes hard.
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    # What the runner holds (its preloaded modules, what it made for this run) is kept
    # for good in this process, never walked by the collector: without this, every process
    # the code forks walked and so copied it all, page by page, at its first collection
    # (2.4 MB a fork in a worker pod: a fork bomb filled 2 GiB before the pod's
    # 1024-process limit could stop it). Children of the code share those pages instead.
    gc.freeze()
    code = 0
    try:
        _exec_as_main(script)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except MemoryError:
        with contextlib.suppress(BaseException):
            sys.stderr.write("MemoryError: the invocation exceeded its memory limit\n")
        code = MEMORY_ERROR_EXIT
    except BaseException:  # noqa: BLE001 - like the interpreter: print and exit 1
        # Drop this runner's and runpy's frames so the traceback starts at the user's code.
        etype, value, tb = sys.exc_info()
        while tb is not None and _is_runner_frame(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        traceback.print_exception(etype, value, tb)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code


# ---------------------------------------------------------------------------------------
# The one-shot HTTP server
# ---------------------------------------------------------------------------------------

_TERMINATING = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _TERMINATING
    _TERMINATING = True


def _recv_request(conn: socket.socket) -> tuple[str, str, dict[str, str], bytes, bytes]:
    """The request, and what came after its body (the gateway's watch byte, sent early)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("client closed")
        buf += chunk
        if len(buf) > HEADER_LIMIT:
            raise ValueError("headers too large")
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length") or 0)
    if length > MAX_ASSIGNMENT_BYTES:
        raise ValueError("assignment too large")
    while len(body) < length:
        chunk = conn.recv(min(1024 * 1024, length - len(body)))
        if not chunk:
            raise ConnectionError("client closed")
        body += chunk
    return method, path, headers, body[:length], body[length:]


def _send(conn: socket.socket, status: int, body: bytes,
          content_type: str = "application/json") -> None:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              409: "Conflict", 500: "Internal Server Error"}.get(status, "OK")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(OSError):
        conn.sendall(head + body)


class OutputStreamer:
    """The output of a watched run, sent to the gateway as it grows, on the connection
    the assignment came on. Nothing happens until the gateway sends WATCH; then the
    answer becomes frames (FRAMES_TYPE):

        out <stdout|stderr> <offset> <length>\n<bytes>   (as many as the output needs)
        report <length>\n<report JSON>                   (last)

    At most ``cap`` bytes of each stream are ever sent: what the report would hold."""

    def __init__(self, conn: socket.socket, outdir: str, cap: int, watched: bool) -> None:
        self.conn = conn
        self.outdir = outdir
        self.cap = cap
        self.active = False
        self.head_sent = False
        self.broken = False
        self._fds: dict[str, int] = {}
        self._sent = {"stdout": 0, "stderr": 0}
        if watched:
            self._start()

    def control_fd(self) -> int | None:
        return None if self.active else self.conn.fileno()

    def read_control(self) -> bool:
        """What the gateway sent while the code runs; False once it hung up."""
        try:
            data = self.conn.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if WATCH in data:
            self._start()
        return bool(data)

    def _start(self) -> None:
        if self.active or self.broken:
            return
        try:
            for name in ("stdout", "stderr"):
                self._fds[name] = os.open(os.path.join(self.outdir, name), _FILE_FLAGS)
        except OSError:
            self.close()  # no live output; the run and its report are not affected
            return
        self.active = True

    def pump(self) -> None:
        """Send what the code wrote since the last look (up to the cap)."""
        if not self.active:
            return
        for name, fd in self._fds.items():
            limit = min(os.fstat(fd).st_size, self.cap)
            while self._sent[name] < limit and self.active:
                data = os.pread(fd, min(STREAM_FRAME_BYTES, limit - self._sent[name]),
                                self._sent[name])
                if not data:
                    break
                self._frame(b"out %s %d %d\n" % (name.encode(), self._sent[name], len(data))
                            + data)
                self._sent[name] += len(data)

    def answer(self, body: bytes) -> bool:
        """Send the report as the last frame; False when the stream never began (the
        report is then answered as one JSON body)."""
        self.close()
        if not self.head_sent:
            return False
        if not self.broken:
            self._frame(b"report %d\n" % len(body) + body)
        return True

    def close(self) -> None:
        self.active = False
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _frame(self, data: bytes) -> None:
        if not self.head_sent:
            data = (f"HTTP/1.1 200 OK\r\nContent-Type: {FRAMES_TYPE}\r\n"
                    f"Connection: close\r\n\r\n").encode() + data
            self.head_sent = True
        try:
            self.conn.settimeout(STREAM_SEND_TIMEOUT_S)
            self.conn.sendall(data)
        except OSError:
            # The frames can no longer be trusted to arrive whole: no more of them (the
            # gateway sees the connection end; with S3 the report is stored all the same).
            self.broken = True
            self.close()
        finally:
            with contextlib.suppress(OSError):
                self.conn.settimeout(None)


class RunnerServer:
    """The runner's HTTP server for one worker: its workspace, its listening socket, its
    one assignment.

    With a ``sandbox`` (a factory from the zygote) the workspace lives in the worker's own
    scratch filesystem and the code runs under the sandbox's init; without one, in a
    directory of the host and forked straight from here."""

    def __init__(self, listener: socket.socket, token: str, workspace_root: str,
                 uid: int | None, preloaded_python: bool, netns_fd: int | None = None,
                 sandbox: Any = None, seccomp_program: bytes | None = None,
                 unshare_net: bool = False) -> None:
        self.listener = listener
        self.token = token
        self.uid = uid
        os.makedirs(workspace_root, exist_ok=True)
        self.base = _mkdtemp(workspace_root)
        self.outdir = os.path.join(self.base, "out")
        os.mkdir(self.outdir, 0o700)
        # Opened now, ahead of need: the sandbox's init holds them from its fork on.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        self.io = ChildIO(
            stdout_fd=os.open(os.path.join(self.outdir, "stdout"), flags, 0o600),
            stderr_fd=os.open(os.path.join(self.outdir, "stderr"), flags, 0o600),
            private_dir_fd=os.open(self.outdir, _DIR_FLAGS),
            netns_fd=netns_fd)
        signal.signal(signal.SIGTERM, _on_sigterm)
        _become_subreaper()
        self.keep_workspace = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        if sandbox is not None:
            # The init enters the network namespace and installs the filter once, ahead
            # of need; the code's process inherits both (setns is among the calls the
            # filter refuses, so it could not come later anyway).
            def lockdown() -> None:
                if netns_fd is not None:
                    _enter_network_namespace(netns_fd)
                elif unshare_net:
                    # A new, empty one of its own, made by the init itself: no helper
                    # process to fork (and exit) per worker.
                    _unshare_network_namespace()
                if seccomp_program is not None:
                    _SECCOMP_INSTALL(seccomp_program)

            code_io = ChildIO(self.io.stdout_fd, self.io.stderr_fd, self.io.private_dir_fd,
                              netns_fd=None)

            def child(data: bytes) -> None:
                run_code(CodeSpec.from_json(data), code_io, uid, preloaded_python, None)

            self.launcher: Any = sandbox(self.base, uid, self.io.fds(), child, lockdown)
            self.workspace = self.launcher.workspace
            self.code_workspace = CODE_WORKSPACE
        else:
            self.workspace = os.path.join(self.base, "ws")
            # The base is traversable so a worker uid reaches its workspace; the output
            # directory stays private to the runner.
            os.chmod(self.base, 0o711)
            os.mkdir(self.workspace, 0o700)
            if uid is not None:
                os.chown(self.workspace, uid, uid)
            self.launcher = DirectLauncher(uid, preloaded_python, seccomp_program)
            self.code_workspace = self.workspace

    def serve(self, idle_timeout_s: float | None = None) -> int:
        """Answer health checks until the one assignment arrives; run it; exit."""
        deadline = None if not idle_timeout_s else time.monotonic() + idle_timeout_s
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        try:
            while True:
                if _TERMINATING:
                    return 0
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                if timeout is not None and timeout <= 0:
                    return 0  # idle too long: the pool replaces us
                events = poller.poll(None if timeout is None else timeout * 1000.0)
                if not any(fd == self.listener.fileno() for fd, _ in events):
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                    continue
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                if self._handle(conn):
                    return 0
        finally:
            self.cleanup()

    def _handle(self, conn: socket.socket) -> bool:
        """Serve one connection; True once the assignment has been run."""
        conn.settimeout(30)
        with conn:
            try:
                method, path, headers, body, early = _recv_request(conn)
            except (OSError, ValueError, ConnectionError):
                return False
            if method == "GET" and path == HEALTH_PATH:
                _send(conn, 200, b"ok", "text/plain")
                return False
            if method != "POST" or path != RUN_PATH:
                _send(conn, 404, b'{"error":"not found"}')
                return False
            auth = headers.get("authorization", "")
            if not _constant_time_eq(auth, f"Bearer {self.token}"):
                _send(conn, 401, b'{"error":"bad token"}')
                return False
            self.listener.close()  # one invocation per worker: nobody else gets in
            # From here the run finishes even if the zygote and gateway go away: with S3
            # storage its report outlives them.
            _die_with_parent(0)
            assignment: Any = None
            streamer: OutputStreamer | None = None
            try:
                assignment = json.loads(body)
                check_assignment(assignment)
                # The local executor stores artifacts straight from the workspace and
                # removes it itself; everywhere else the worker cleans up after reporting.
                self.keep_workspace = bool(assignment.get("keep_workspace"))
                run = Run(assignment, self.workspace, self.code_workspace, self.outdir,
                          self.io, self.launcher, self.uid)
                conn.settimeout(None)
                streamer = OutputStreamer(conn, self.outdir, run.output_cap, WATCH in early)
                report = run.execute(self.wake_r, streamer)
                if assignment.get("uploads"):
                    upload_outputs(report, assignment["uploads"])
                status = 200
            except Exception as e:  # noqa: BLE001 - the gateway gets a StartFailed report
                error = str(e) if isinstance(e, AssignmentRefused) else \
                    f"{type(e).__name__}: {e}"
                invocation_id = assignment.get("invocation_id") \
                    if isinstance(assignment, dict) else None
                report = new_report(invocation_id, self.code_workspace, self.base,
                                    reason="StartFailed", error=error)
                status = 200
            answer = json.dumps(report).encode()
            if streamer is None or not streamer.answer(answer):
                _send(conn, status, answer)
        # After the answer: the sandbox's teardown (its init's exit, the cgroup) is not the
        # caller's wait. The gateway lets this process finish it before ending it.
        self._close_launcher()
        return True

    def _close_launcher(self) -> None:
        close = getattr(self.launcher, "close", None)
        if close is not None:
            close()

    def cleanup(self) -> None:
        self._close_launcher()
        if not self.keep_workspace:
            shutil.rmtree(self.base, ignore_errors=True)


def check_assignment(assignment: Any) -> None:
    """AssignmentRefused unless this runner can run it: a JSON object of our protocol."""
    if not isinstance(assignment, dict):
        raise AssignmentRefused("the assignment is not a JSON object")
    protocol = assignment.get("protocol")
    if protocol != PROTOCOL_VERSION:
        raise AssignmentRefused(
            f"this runner speaks runner protocol {PROTOCOL_VERSION}, not the assignment's "
            f"{protocol!r}: the gateway and the runtime are of different versions")


def _constant_time_eq(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _mkdtemp(root: str) -> str:
    for _ in range(100):
        name = os.path.join(root, "w-" + base64.b32encode(os.urandom(10)).decode().lower())
        try:
            os.mkdir(name, 0o700)
            return name
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "could not create a workspace")


CLONE_NEWNET = 0x40000000


def _empty_network_namespace() -> int | None:
    """An fd of a fresh, empty network namespace (root only), made ahead of need: a helper
    process unshares, we hold its namespace open, the helper exits. The code's process
    enters it with setns; the runner itself stays on the host network (it uploads)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(done_w)
        ok = b"0"
        with contextlib.suppress(BaseException):
            ok = b"1" if _libc().unshare(CLONE_NEWNET) == 0 else b"0"
        os.write(ready_w, ok)
        os.read(done_r, 1)  # stay alive until the parent holds the namespace
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    ok = os.read(ready_r, 1) == b"1"
    fd = None
    if ok:
        with contextlib.suppress(OSError):
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    os.close(done_w)
    os.close(ready_r)
    os.waitpid(pid, 0)
    return fd


def _unshare_network_namespace() -> None:
    if _libc().unshare(CLONE_NEWNET) != 0:
        raise OSError("could not make the worker's network namespace")


def _enter_network_namespace(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        raise OSError("could not enter the worker's network namespace")


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def _preload() -> None:
    import importlib

    for name in PRELOAD_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _sibling(name: str) -> Any:
    """A module beside this file, under a private name: the runner runs with -I (no
    script directory on sys.path), and user code must not shadow it or be shadowed."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_jobgate_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Protections:
    """What the zygote could set up for its workers, each with the reason it could not."""

    def __init__(self) -> None:
        self.missing: dict[str, str] = {}
        self.sandbox: Any = None  # a factory of WorkerSandbox, or None
        self.seccomp_program: bytes | None = None
        self.cgroup_version = ""
        self.tree: Any = None
        self.zygote_pid = os.getpid()
        self.can_unshare_net = False

    def setup(self, workspace_root: str, readonly: list[str], cgroup_name: str,
              scratch_default: int) -> None:
        sandbox = _sibling("sandbox")
        reason = sandbox.available()
        if reason:
            for what in ("filesystem", "pid", "scratch", "cgroups"):
                self.missing[what] = reason
            return
        tree = self.tree = self._cgroups(cgroup_name)
        template = os.path.join(workspace_root, f".root-{os.getpid()}")
        try:
            os.mkdir(template, 0o700)
            sandbox.enter_private_mounts()
            sandbox.RootTemplate(template).build(
                [*readonly, sys.prefix, sys.base_prefix, sys.exec_prefix,
                 sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))])
        except OSError as e:
            for what in ("filesystem", "pid", "scratch"):
                self.missing[what] = f"the sandbox could not be built: {e}"
            return

        def make(base: str, uid: int | None, keep_fds: list[int], child: Any, lockdown: Any,
                 scratch_bytes: int = scratch_default) -> Any:
            group = tree.group(os.path.basename(base)) if tree is not None else None
            return sandbox.WorkerSandbox(template, base, uid, scratch_bytes, group,
                                         keep_fds, child, lockdown,
                                         orphaned_cleanup=self._remove_tree_if_orphaned)

        self.sandbox = make
        # Tried once here: whether a worker's init may make its own network namespace.
        probe = _empty_network_namespace()
        if probe is not None:
            os.close(probe)
            self.can_unshare_net = True

    def seccomp(self) -> None:
        global _SECCOMP_INSTALL
        try:
            seccomp = _sibling("seccomp_filter")
            self.seccomp_program = seccomp.build()
            _SECCOMP_INSTALL = seccomp.install
        except Exception as e:  # noqa: BLE001 - SeccompUnavailable, or a broken library
            self.missing["seccomp"] = str(e) or type(e).__name__

    def _cgroups(self, name: str) -> Any:
        try:
            cgroups = _sibling("cgroups")
            support = cgroups.detect()
            if support.version is None:
                self.missing["cgroups"] = support.reason
                return None
            tree = cgroups.CgroupTree.create(name, support)
            tree.remove_stale()
            self.cgroup_version = f"v{support.version}"
            return tree
        except Exception as e:  # noqa: BLE001 - CgroupUnavailable or OSError: say so
            self.missing["cgroups"] = str(e) or type(e).__name__
            return None

    def _remove_tree_if_orphaned(self) -> None:
        """In a worker that outlived its zygote (it was running an invocation when the
        gateway stopped): the last one out removes the zygote's cgroup tree."""
        if self.tree is not None and os.getppid() != self.zygote_pid:
            self.tree.remove()

    def close(self) -> None:
        """The cgroup tree goes once its workers' groups have (they remove their own as
        they exit, which takes a moment after ours)."""
        if self.tree is None:
            return
        for _ in range(40):
            if self.tree.remove():
                return
            time.sleep(0.05)

    def hello(self) -> bytes:
        return json.dumps({"missing": self.missing, "cgroups": self.cgroup_version},
                          separators=(",", ":")).encode()


def zygote_main(workspace_root: str, preload_python: bool, sandboxed: bool = False,
                readonly: tuple[str, ...] = (), cgroup_name: str = "jobgate",
                seccomp: bool = False) -> int:
    """Fork workers on request. Protocol on stdin/stdout, one line each:

        out: zygote <pid> <protections JSON: what could not be set up, and why>
        in:  spawn <worker_id> <token> <uid|-> <isolate_net 0|1> <idle_timeout_s> <scratch_mb>
        out: ready <worker_id> <pid> <port> <net_isolated 0|1>
             failed <worker_id> <message>
    """
    if preload_python:
        _preload()
    _libc()
    protections = Protections()
    if seccomp:
        protections.seccomp()
    if sandboxed:
        protections.setup(workspace_root, list(readonly), cgroup_name, 512 * 1024 * 1024)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when we stop
    out = sys.stdout.buffer
    zygote_pid = os.getpid()
    # The zygote ends with the gateway that started it, even one killed outright.
    _die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Everything made so far is kept for good: the collector of a forked worker then
    # never walks (and so never copies, page by page) the zygote's objects.
    gc.collect()
    gc.freeze()
    out.write(b"zygote %d %s\n" % (os.getpid(), protections.hello()))
    out.flush()
    try:
        _serve_spawns(out, zygote_pid, workspace_root, preload_python, protections)
    finally:
        protections.close()
    return 0


def _serve_spawns(out: Any, zygote_pid: int, workspace_root: str, preload_python: bool,
                  protections: Protections) -> None:
    for line in sys.stdin.buffer:
        parts = line.decode().split()
        if not parts or parts[0] != "spawn" or len(parts) != 7:
            continue
        worker_id, token, uid_s, net_s, idle_s, scratch_s = parts[1:]
        uid = None if uid_s == "-" else int(uid_s)
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
        except OSError as e:
            out.write(f"failed {worker_id} {e}\n".encode())
            out.flush()
            continue
        port = listener.getsockname()[1]
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setsid()  # our own group: a signal to the zygote's group misses us
                # An idle worker ends with its zygote (SIGTERM: an idle runner just exits).
                _die_with_parent(signal.SIGTERM)
                if os.getppid() != zygote_pid:
                    os._exit(0)  # the zygote died before we could ask
                # Sandboxed, the init makes the namespace itself (it runs as root until
                # the code's fork); unsandboxed, a helper makes it for the code to enter.
                init_net = net_s == "1" and protections.sandbox is not None \
                    and protections.can_unshare_net
                netns = _empty_network_namespace() if net_s == "1" and not init_net \
                    else None
                isolated = init_net or netns is not None
                sandbox = None
                if protections.sandbox is not None:
                    sandbox = functools.partial(protections.sandbox,
                                                scratch_bytes=int(scratch_s) * 1024 * 1024)
                server = RunnerServer(listener, token, workspace_root, uid, preload_python,
                                      netns, sandbox, protections.seccomp_program,
                                      unshare_net=init_net)
                out.write(f"ready {worker_id} {os.getpid()} {port} {int(isolated)}\n".encode())
                out.flush()
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                code = server.serve(float(idle_s) or None)
            except BaseException as e:  # noqa: BLE001
                with contextlib.suppress(BaseException):
                    out.write(f"failed {worker_id} {type(e).__name__}: {e}\n".encode())
                    out.flush()
                code = 1
            os._exit(code)
        listener.close()


def serve_main() -> int:
    """One worker in a pod: bind, announce readiness through /healthz, run once, exit."""
    bind = os.environ.get("JOBGATE_RUNNER_BIND") or f"{os.environ.get('POD_IP', '0.0.0.0')}:8080"
    host, _, port = bind.rpartition(":")
    token = os.environ.get("JOBGATE_RUNNER_TOKEN", "")
    if not token:
        print("jobgate runner: JOBGATE_RUNNER_TOKEN is required", file=sys.stderr)
        return 2
    root = os.environ.get("JOBGATE_WORKSPACE_ROOT", "/workspace")
    preload = os.environ.get("JOBGATE_RUNNER_PRELOAD", "1") == "1"
    if preload:
        _preload()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(16)
    idle = float(os.environ.get("JOBGATE_RUNNER_IDLE_TIMEOUT_S", "0") or 0)
    server = RunnerServer(listener, token, root, None, preload)
    return server.serve(idle or None)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "zygote":
        args = argv[2:]
        root = args.pop(0) if args and not args[0].startswith("--") else \
            os.path.join(os.getcwd(), "workspaces")
        readonly: list[str] = []
        cgroup_name = "jobgate"
        flags = set()
        while args:
            arg = args.pop(0)
            if arg in ("--ro", "--cgroup") and args:
                value = args.pop(0)
                if arg == "--ro":
                    readonly.append(value)
                else:
                    cgroup_name = value
            else:
                flags.add(arg)
        return zygote_main(root, "--python" in flags, "--sandbox" in flags,
                           tuple(readonly), cgroup_name, "--seccomp" in flags)
    if len(argv) >= 2 and argv[1] == "serve":
        return serve_main()
    print("usage: runner.py zygote WORKSPACE_ROOT [--python] [--sandbox] [--seccomp] "
          "[--ro PATH]... "
          "[--cgroup NAME] | runner.py serve", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
