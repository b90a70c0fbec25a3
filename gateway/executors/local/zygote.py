"""One pre-imported parent process per profile that forks the local workers, and what it
says it could set up for them (the sandbox's protections)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from importlib import resources
from pathlib import Path

import orjson

from gateway.config.profiles import Profile, interpreter_path
from gateway.errors import WorkerStartFailed
from gateway.ids import new_token

SPAWN_TIMEOUT_S = 15.0


def safe_name(name: str) -> str:
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
