"""The local executor (the embedded default): workers are runner processes on this machine.

Per profile, one *zygote* (``runtimes/runner.py zygote``) runs on the profile's own
interpreter for Python profiles (with the common standard library already imported) or on
the machine's python3 for the others. The warm pool asks it to fork workers ahead of
need; a worker serves exactly one invocation.

Each worker is a sandbox (``runtimes/sandbox.py``): a read-only root of bind mounts with
no host paths, a size-limited scratch tmpfs for /workspace, /tmp, /var/tmp and /dev/shm,
pid/mount/ipc/uts/cgroup namespaces, a cgroup per invocation (memory, pids, CPU), a
seccomp filter, a uid of its own, an empty network namespace for profiles without
network, rlimits and a scrubbed environment. Whatever of that the machine cannot give
(not root, no cgroup controllers) is named in one warning at start; docs/security.md says
what the boundary holds.

A runner that took an assignment outlives its zygote and its gateway (so a report stored
by the worker itself is not lost with them). Every runner is listed in the data dir
(``runners/{pid}``) while it lives, and a gateway that starts again on that data dir first
ends whatever its previous run left running: only then may those invocations run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import select
import shutil
import signal
import stat
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import orjson

from gateway.config.profiles import Profile, ProfileCatalog, interpreter_path
from gateway.config.settings import Settings
from gateway.errors import ConfigError, ExecutorUnavailable, WorkerStartFailed
from gateway.executors.base import Executor, Worker
from gateway.executors.pool import WarmPool
from gateway.executors.runner_client import RunnerClient
from gateway.ids import new_token
from gateway.models import Assignment, PoolState, WorkerReport

log = logging.getLogger("jobgate.executor.local")
SPAWN_TIMEOUT_S = 15.0
TEMPORARY_ROOT_PREFIX = "jobgate-workspaces-"
# How long a runner that has answered may take to tear its sandbox down and exit.
RUNNER_EXIT_GRACE_S = 5.0


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


def _end_process(pidfd: int) -> None:
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


class UidAllocator:
    """Hands out uids from a range, one per live worker (root only)."""

    def __init__(self, first: int, last: int):
        self._free = list(range(last, first - 1, -1))
        self._used: set[int] = set()

    def take(self) -> int:
        if not self._free:
            raise WorkerStartFailed("no free worker uid: raise JOBGATE_LOCAL_UID_RANGE")
        uid = self._free.pop()
        self._used.add(uid)
        return uid

    def give_back(self, uid: int) -> None:
        if uid in self._used:
            self._used.remove(uid)
            self._free.insert(0, uid)  # reuse last: stray processes get time to die


def parse_uid_range(value: str) -> tuple[int, int] | None:
    if value == "off" or (value == "auto" and os.geteuid() != 0):
        return None
    if value == "auto":
        return 200000, 265535
    first, _, last = value.partition("-")
    lo, hi = int(first), int(last)
    if not 0 < lo <= hi:
        raise ValueError(f"invalid JOBGATE_LOCAL_UID_RANGE {value!r}")
    return lo, hi


def _traversable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents] if p.exists())


_SAFE_DATA_DIR = ("Set JOBGATE_DATA_DIR to a directory whose parents only this user (or "
                  "root) can change, such as /var/lib/jobgate.")


def check_safe_ancestors(path: Path) -> None:
    """Refuse a directory another user could swap out from under us: every directory
    leading to it must be ours (or root's), and not writable by others unless sticky
    (like /tmp, where nobody can rename what is not theirs)."""
    me = os.geteuid()
    for parent in [path, *path.parents]:
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(f"{parent} is a symbolic link: give the real path")
        if st.st_uid not in (0, me):
            raise ConfigError(f"{parent} belongs to uid {st.st_uid}: another user could "
                              f"replace the directories below it. {_SAFE_DATA_DIR}")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise ConfigError(f"{parent} is writable by others: another user could "
                              f"replace the directories below it. {_SAFE_DATA_DIR}")


def workspace_root(data_dir: Path, own_uids: bool, sandboxed: bool) -> Path:
    """Where workers make their workspaces. With the sandbox, the code never walks the
    host path (its workspace is bound at /workspace), so it stays inside the data dir,
    private. Without it, a worker running as its own uid must reach its directory: when
    the data dir sits below a private directory (say /root), a directory of our own
    with a random name is made under the system temp dir (mkdtemp: never an existing
    path someone planted)."""
    preferred = data_dir.resolve() / "workspaces"
    if sandboxed or not own_uids or _traversable_by_others(preferred.parent):
        return preferred
    return Path(tempfile.mkdtemp(prefix=TEMPORARY_ROOT_PREFIX))


def prepare_workspace_root(root: Path, mode: int) -> None:
    """An empty directory of ours at ``root``, made without following a planted link.
    What is there from an earlier run belongs to workers that are gone."""
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_safe_ancestors(root.parent)
    try:
        st: os.stat_result | None = os.lstat(root)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        root.unlink()  # a link or a file where our directory belongs
    elif st is not None:
        shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(root, 0o700)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ConfigError(f"{root} is not a directory of ours")
    os.chmod(root, mode)


def _safe_name(name: str) -> str:
    return "".join(c if (c.isascii() and c.isalnum()) or c == "-" else "_" for c in name)[:64]


def sandbox_protections(hello: object) -> dict[str, str]:
    missing = hello.get("missing") if isinstance(hello, dict) else None
    return {str(k): str(v) for k, v in missing.items()} if isinstance(missing, dict) else {}


PROTECTION_NAMES = {
    "filesystem": "a private filesystem view (read-only root, no host paths)",
    "pid": "a private pid namespace (other processes invisible)",
    "scratch": "a size-limited private workspace, /tmp and /dev/shm",
    "cgroups": "per-invocation memory, pids and CPU limits (cgroups)",
    "seccomp": "the seccomp filter",
    "uids": "a uid of its own for every worker",
    "network": "an empty network namespace for profiles without network",
}


class Zygote:
    """One pre-imported parent process that forks workers of one profile."""

    def __init__(self, profile: Profile, workspace_root: Path, isolate_net: bool,
                 idle_timeout_s: float, sandboxed: bool = False, cgroup_name: str = "",
                 seccomp: bool = False):
        self.profile = profile
        self.sandboxed = sandboxed
        self.seccomp = seccomp
        self.cgroup_name = cgroup_name
        # What the zygote said it could not set up for its workers, and why.
        self.missing: dict[str, str] = {}
        self.workspace_root = workspace_root
        self.isolate_net = isolate_net
        self.idle_timeout_s = idle_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self._pending: dict[str, asyncio.Future[tuple[int, int, bool]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._seq = 0

    def _command(self) -> list[str]:
        runner = str(resources.files("runtimes").joinpath("runner.py"))
        options = ["--seccomp"] if self.seccomp else []
        if self.sandboxed:
            options += ["--sandbox", "--cgroup", self.cgroup_name]
        if self.profile.inprocess:
            interp = interpreter_path(self.profile.command[0])
            if interp is None:
                raise WorkerStartFailed(f"{self.profile.command[0]} is not installed")
            return [interp, "-I", runner, "zygote", str(self.workspace_root), "--python",
                    *options]
        interp = interpreter_path("python3") or sys.executable
        if self.sandboxed:
            # The program the profile runs must be visible in the sandbox: where it is
            # installed, when that is outside the system directories.
            program = interpreter_path(self.profile.command[0])
            if program is not None:
                options += ["--ro", str(Path(os.path.realpath(program)).parent.parent)]
        return [interp, "-I", runner, "zygote", str(self.workspace_root), *options]

    async def start(self) -> None:
        await self._ensure()

    async def _ensure(self) -> asyncio.subprocess.Process:
        async with self._lock:
            if self.proc is not None and self.proc.returncode is None:
                return self.proc
            self.proc = await asyncio.create_subprocess_exec(
                *self._command(), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, env=_zygote_env(),
                start_new_session=True,
            )
            assert self.proc.stdout is not None
            hello = await asyncio.wait_for(self.proc.stdout.readline(), SPAWN_TIMEOUT_S)
            if not hello.startswith(b"zygote "):
                raise WorkerStartFailed(f"zygote of {self.profile.name} did not start")
            parts = hello.split(maxsplit=2)
            try:
                self.missing = sandbox_protections(orjson.loads(parts[2]))
            except (IndexError, orjson.JSONDecodeError):
                self.missing = {"filesystem": "the zygote did not say what it set up"}
            self._reader = asyncio.create_task(self._read(self.proc),
                                               name=f"zygote:{self.profile.name}")
            return self.proc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            parts = line.decode(errors="replace").split(maxsplit=2)
            if len(parts) < 2:
                continue
            fut = self._pending.pop(parts[1], None)
            if fut is None or fut.done():
                if parts[0] == "ready":
                    # Ready after its spawn timed out: nobody will claim it, so it goes.
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(parts[2].split()[0]), signal.SIGTERM)
                continue
            if parts[0] == "ready":
                pid, port, isolated = parts[2].split()
                fut.set_result((int(pid), int(port), isolated == "1"))
            else:
                fut.set_exception(WorkerStartFailed(parts[2].strip() if len(parts) > 2
                                                    else "worker failed to start"))
        # The zygote is gone: fail what waits on it; the next spawn starts a new one.
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerStartFailed("the zygote exited"))
        self._pending.clear()

    async def spawn(self, uid: int | None) -> tuple[str, str, int, int, bool]:
        proc = await self._ensure()
        assert proc.stdin is not None
        self._seq += 1
        worker_id = f"{self.profile.name}-{os.getpid()}-{self._seq}"
        token = new_token()
        fut: asyncio.Future[tuple[int, int, bool]] = asyncio.get_running_loop().create_future()
        self._pending[worker_id] = fut
        net = "1" if self.isolate_net and not self.profile.network else "0"
        line = (f"spawn {worker_id} {token} {'-' if uid is None else uid} {net} "
                f"{self.idle_timeout_s:g} {self.profile.workspace_mb}\n")
        proc.stdin.write(line.encode())
        try:
            await proc.stdin.drain()
            pid, port, isolated = await asyncio.wait_for(fut, SPAWN_TIMEOUT_S)
        except (TimeoutError, ConnectionError) as e:
            self._pending.pop(worker_id, None)
            raise WorkerStartFailed(f"worker of {self.profile.name} did not start: {e!r}") \
                from e
        return worker_id, token, pid, port, isolated

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._reader:
            await asyncio.gather(self._reader, return_exceptions=True)


def _zygote_env() -> dict[str, str]:
    """The zygote (and so every worker) starts from a clean environment: nothing of the
    gateway's own (keys, cloud credentials) reaches user code."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


class LocalExecutor(Executor):
    name = "local"
    reads_workspace = True

    def __init__(self, settings: Settings, profiles: ProfileCatalog):
        self.settings = settings
        self.profiles = profiles
        uid_range = parse_uid_range(settings.local_uid_range)
        self._uids = UidAllocator(*uid_range) if uid_range else None
        self.missing = self._missing_before_start()
        self.sandboxed = settings.local_sandbox != "off" and "filesystem" not in self.missing
        self.workspace_root = workspace_root(Path(settings.data_dir), self._uids is not None,
                                             self.sandboxed)
        check_safe_ancestors(self.workspace_root.parent)
        self._zygotes: dict[str, Zygote] = {}
        self._pools: dict[str, WarmPool] = {}
        self._client = RunnerClient()
        self._pidfds: dict[str, int] = {}
        self._net_isolation_reported = False
        self.runners = RunnerLedger(Path(settings.data_dir).resolve() / "runners")

    def _missing_before_start(self) -> dict[str, str]:
        """The protections ruled out before any zygote starts, with the reason."""
        missing: dict[str, str] = {}
        if self.settings.local_sandbox == "off":
            missing = {name: "JOBGATE_LOCAL_SANDBOX=off" for name in
                       ("filesystem", "pid", "scratch", "cgroups", "seccomp")}
        if self._uids is None:
            why = ("not running as root" if os.geteuid() != 0
                   else "JOBGATE_LOCAL_UID_RANGE=off")
            missing["uids"] = why
            # The sandbox runs the code as a uid of its own: without one, no sandbox.
            for name in ("filesystem", "pid", "scratch", "cgroups"):
                missing.setdefault(name, why)
        if not self.settings.local_isolate_network:
            missing["network"] = "JOBGATE_LOCAL_ISOLATE_NETWORK=false"
        elif os.geteuid() != 0:
            missing["network"] = "not running as root"
        return missing

    async def start(self) -> None:
        await asyncio.to_thread(self._end_leftovers)
        await asyncio.to_thread(self._prepare_dirs)
        tag = hashlib.sha256(str(self.workspace_root).encode()).hexdigest()[:12]
        for profile in self.profiles.all():
            zygote = Zygote(profile, self.workspace_root,
                            self.settings.local_isolate_network,
                            self.settings.worker_idle_timeout_s,
                            sandboxed=self.sandboxed,
                            seccomp=self.settings.local_sandbox != "off",
                            cgroup_name=f"jobgate-{tag}-{_safe_name(profile.name)}")
            self._zygotes[profile.name] = zygote
            pool = WarmPool(
                profile.name, executor=self.name,
                spawn=lambda p=profile: self._spawn(p),  # type: ignore[misc]
                discard=self._discard, alive=self._alive,
                min_idle=profile.pool.min, max_idle=profile.pool.max,
                max_concurrency=self.settings.max_concurrency,
                queue_size=self.settings.queue_size,
                spawn_rate=200.0, spawn_parallelism=4,
            )
            self._pools[profile.name] = pool
        await self._report_protections()
        for pool in self._pools.values():
            pool.start()

    async def _report_protections(self) -> None:
        """Start every zygote now, so the log says at start exactly which protections the
        workers lack, and why (and "required" refuses to start without them)."""
        results = await asyncio.gather(*(z.start() for z in self._zygotes.values()),
                                       return_exceptions=True)
        missing = dict(self.missing)
        for zygote, result in zip(self._zygotes.values(), results, strict=True):
            if isinstance(result, BaseException):
                log.warning("profile %s: its zygote did not start: %s", zygote.profile.name,
                            result)
                continue
            for name, why in zygote.missing.items():
                missing.setdefault(name, f"{why} (profile {zygote.profile.name})")
        self.missing = missing
        if not missing:
            log.info("local executor: every worker is sandboxed (namespaces, read-only "
                     "root, scratch filesystem, cgroups, seccomp, own uid, no network)")
            return
        lines = "; ".join(f"{PROTECTION_NAMES.get(k, k)}: {v}" for k, v in missing.items())
        if self.settings.local_sandbox == "required":
            raise ConfigError(f"JOBGATE_LOCAL_SANDBOX=required, but workers would lack "
                              f"{lines}")
        log.warning("local executor: workers run WITHOUT %s", lines)

    def _end_leftovers(self) -> None:
        """Runners the previous run of this gateway left running (it crashed: they took
        an assignment and outlived it) are ended before anything else, and so before any
        of their invocations can run again."""
        self.runners.prepare()
        ended = self.runners.end_leftovers()
        if ended:
            log.warning("ended %d worker(s) left running by this gateway's previous run",
                        ended)

    def _prepare_dirs(self) -> None:
        # Sandboxed, workers never walk this path; otherwise a worker's own uid must pass
        # through it (and reaches only its own directory, 0700, inside).
        prepare_workspace_root(self.workspace_root, 0o700 if self.sandboxed else 0o711)

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self._pools.values()))
        await asyncio.gather(*(z.stop() for z in self._zygotes.values()))
        await self._client.close()
        if self.workspace_root.name.startswith(TEMPORARY_ROOT_PREFIX):
            # A root of our own under the temp dir (no sandbox, private data dir): ours
            # alone, and gone with us.
            await asyncio.to_thread(shutil.rmtree, self.workspace_root, True)

    async def _spawn(self, profile: Profile) -> Worker:
        t0 = time.monotonic()
        uid = self._uids.take() if self._uids else None
        try:
            worker_id, token, pid, port, isolated = await self._zygotes[profile.name].spawn(uid)
        except BaseException:
            if uid is not None and self._uids:
                self._uids.give_back(uid)
            raise
        if not profile.network and self.settings.local_isolate_network and not isolated \
                and not self._net_isolation_reported:
            self._net_isolation_reported = True
            log.warning("network isolation is not available here (needs root and "
                        "unshare): profiles without network can still reach the network")
        with contextlib.suppress(OSError):
            self._pidfds[worker_id] = os.pidfd_open(pid)
        self.runners.add(pid)
        now = time.monotonic()
        return Worker(id=worker_id, profile=profile.name, address=f"http://127.0.0.1:{port}",
                      token=token, ready_at=now, start_latency_s=now - t0, pid=pid, uid=uid,
                      meta={"network_isolated": str(isolated).lower()})

    def _alive(self, worker: Worker) -> bool:
        try:
            os.kill(worker.pid or 0, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def _discard(self, worker: Worker) -> None:
        self.runners.remove(worker.pid)
        pidfd = self._pidfds.pop(worker.id, None)
        if pidfd is not None:
            # SIGTERM: an idle runner tears its sandbox down and exits.
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            os.close(pidfd)
        self._give_back_uid(worker)

    def _give_back_uid(self, worker: Worker) -> None:
        if worker.uid is not None and self._uids:
            self._uids.give_back(worker.uid)
            worker.uid = None

    # -- the executor interface -----------------------------------------------------------

    def check_room(self, profile: Profile) -> None:
        self._pools[profile.name].check_room()

    async def acquire(self, profile: Profile, invocation_id: str) -> Worker:
        return await self._pools[profile.name].acquire()

    async def run(self, worker: Worker, assignment: Assignment) -> WorkerReport:
        assignment.keep_workspace = True
        return await self._client.run(worker, assignment)

    async def cancel(self, worker: Worker) -> None:
        # The runner kills the code's process group on SIGTERM and reports Cancelled.
        if worker.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)

    async def release(self, worker: Worker, report: WorkerReport | None) -> None:
        pool = self._pools[worker.profile]
        pool.release(worker)
        self.runners.remove(worker.pid)
        if report is not None and report.workspace_base:
            await asyncio.to_thread(self._remove_workspace, report.workspace_base)
        pidfd = self._pidfds.pop(worker.id, None)
        if pidfd is not None and report is not None:
            # The runner exits by itself once its sandbox is torn down, after it answered;
            # it is ended only if it has not within the grace. (A pidfd: a pid reused
            # in between is never hit.)
            asyncio.get_running_loop().call_later(RUNNER_EXIT_GRACE_S, _end_process, pidfd)
        elif pidfd is not None:
            _end_process(pidfd)  # a lost worker: at once
        if report is None and worker.uid is not None:
            # A lost worker never cleaned up: whatever still runs as its uid goes now,
            # before the uid is handed to another worker.
            await asyncio.to_thread(kill_processes_of_uid, worker.uid)
        self._give_back_uid(worker)

    async def end_attempt(self, invocation_id: str) -> bool:
        # A lost runner is ended at once (release), and those of a crashed predecessor at
        # start, before recovery: nothing of an earlier attempt can still run.
        return True

    def _remove_workspace(self, reported: str) -> None:
        # Only ever a directory under our workspace root, whatever the report says.
        base = Path(os.path.normpath(reported))
        if self.workspace_root in base.parents:
            shutil.rmtree(base, ignore_errors=True)

    def pools(self) -> list[PoolState]:
        return [p.state() for p in self._pools.values()]

    async def check(self) -> None:
        failing = [name for name, p in self._pools.items() if p.failing]
        if failing and len(failing) == len(self._pools):
            raise ExecutorUnavailable(
                "no worker can be started: "
                + "; ".join(f"{n}: {self._pools[n].last_error}" for n in failing),
                retry_after=5,
            )
