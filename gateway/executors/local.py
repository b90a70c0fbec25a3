"""The local executor (the embedded default): workers are runner processes on this machine.

Per profile, one *zygote* (``runtimes/runner.py zygote``) runs on the profile's own
interpreter for Python profiles (with the common standard library already imported) or on
the machine's python3 for the others. The warm pool asks it to fork workers ahead of
need; a worker is ready in about a millisecond and serves exactly one invocation.

Isolation, as far as one machine without a sandbox allows: rlimits (address space or data
segment, CPU seconds, open files, processes, file size), its own session and process
group, a scrubbed environment, a private workspace. Run as root, each worker also gets a
uid of its own (so its processes can all be found and killed, and it cannot read the
gateway's data) and, for profiles without network, an empty network namespace. It is not a
security boundary: docs/security.md says what is and is not isolated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from importlib import resources
from pathlib import Path

from gateway.config.profiles import Profile, ProfileCatalog, interpreter_path
from gateway.config.settings import Settings
from gateway.errors import ExecutorUnavailable, WorkerStartFailed
from gateway.executors.base import Executor, Worker
from gateway.executors.pool import WarmPool
from gateway.executors.runner_client import RunnerClient
from gateway.ids import new_token
from gateway.models import Assignment, PoolState, WorkerReport

log = logging.getLogger("jobgate.executor.local")
SPAWN_TIMEOUT_S = 15.0


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


def workspace_root(data_dir: Path, own_uids: bool) -> Path:
    """Where workers make their workspaces. A worker running as its own uid must be able
    to reach it: when the data dir sits below a private directory (say /root), use a
    directory of our own under the system temp dir instead."""
    preferred = (data_dir / "workspaces").resolve()
    if not own_uids or _traversable_by_others(preferred.parent):
        return preferred
    import hashlib
    import tempfile

    tag = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()).resolve() / f"jobgate-workspaces-{tag}"


class Zygote:
    """One pre-imported parent process that forks workers of one profile."""

    def __init__(self, profile: Profile, workspace_root: Path, isolate_net: bool,
                 idle_timeout_s: float):
        self.profile = profile
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
        if self.profile.inprocess:
            interp = interpreter_path(self.profile.command[0])
            if interp is None:
                raise WorkerStartFailed(f"{self.profile.command[0]} is not installed")
            return [interp, "-I", runner, "zygote", str(self.workspace_root), "--python"]
        interp = interpreter_path("python3") or sys.executable
        return [interp, "-I", runner, "zygote", str(self.workspace_root)]

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
                f"{self.idle_timeout_s:g}\n")
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
        self.workspace_root = workspace_root(Path(settings.data_dir), self._uids is not None)
        self._zygotes: dict[str, Zygote] = {}
        self._pools: dict[str, WarmPool] = {}
        self._client = RunnerClient()
        self._net_isolation_reported = False
        self.identity = f"local-{os.uname().nodename}-{os.getpid()}-{new_token(3)}"

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_dirs)
        for profile in self.profiles.all():
            zygote = Zygote(profile, self.workspace_root,
                            self.settings.local_isolate_network,
                            self.settings.worker_idle_timeout_s)
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
            pool.start()

    def _prepare_dirs(self) -> None:
        if self.workspace_root.exists():
            # Workspaces of a previous run belong to workers that are gone.
            shutil.rmtree(self.workspace_root, ignore_errors=True)
        self.workspace_root.mkdir(parents=True, exist_ok=True)
        # Workers switch to their own uid: they must reach their own workspace only.
        os.chmod(self.workspace_root, 0o711)

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self._pools.values()))
        await asyncio.gather(*(z.stop() for z in self._zygotes.values()))
        await self._client.close()

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
        if worker.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
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
        if report is not None and report.workspace_base:
            await asyncio.to_thread(self._remove_workspace, report.workspace_base)
        if worker.pid:
            # The runner exits after reporting; make sure of it (and of a lost one).
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        if report is None and worker.uid is not None:
            # A lost worker never cleaned up: whatever still runs as its uid goes now,
            # before the uid is handed to another worker.
            await asyncio.to_thread(kill_processes_of_uid, worker.uid)
        self._give_back_uid(worker)

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
