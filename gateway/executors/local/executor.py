"""The local executor's leasing interface: warm pools of sandboxed runner processes, one
zygote per profile (see gateway/executors/local/__init__.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from gateway.config.profiles import Profile, ProfileCatalog
from gateway.config.settings import Settings
from gateway.errors import ConfigError, ExecutorUnavailable
from gateway.executors.base import Executor, WorkerHandle
from gateway.executors.live_output import LiveOutput
from gateway.executors.local.processes import (
    RunnerLedger,
    end_process,
    kill_processes_of_uid,
)
from gateway.executors.local.uids import UidAllocator, parse_uid_range
from gateway.executors.local.workspace import (
    TEMPORARY_ROOT_PREFIX,
    check_safe_ancestors,
    prepare_workspace_root,
    workspace_root,
)
from gateway.executors.local.zygote import PROTECTION_NAMES, Zygote, safe_name
from gateway.executors.pool import WarmPool
from gateway.executors.runner_client import RunnerClient
from gateway.membership.base import Membership
from gateway.models import Assignment, PoolState, WorkerReport

log = logging.getLogger("jobgate.executor.local")
# How long a runner that has answered may take to tear its sandbox down and exit.
RUNNER_EXIT_GRACE_S = 5.0


class LocalExecutor(Executor):
    name = "local"
    reads_workspace = True

    def __init__(self, settings: Settings, profiles: ProfileCatalog,
                 membership: Membership | None = None):
        # Membership is not the local executor's concern: its workers die with the machine.
        self.settings = settings
        self.profiles = profiles
        uid_range = parse_uid_range(settings.local.uid_range)
        self._uids = UidAllocator(*uid_range) if uid_range else None
        self.missing = self._missing_before_start()
        self.sandboxed = settings.local.sandbox != "off" and "filesystem" not in self.missing
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
        if self.settings.local.sandbox == "off":
            missing = {name: "JOBGATE_LOCAL_SANDBOX=off" for name in
                       ("filesystem", "pid", "scratch", "cgroups", "seccomp")}
        if self._uids is None:
            why = ("not running as root" if os.geteuid() != 0
                   else "JOBGATE_LOCAL_UID_RANGE=off")
            missing["uids"] = why
            # The sandbox runs the code as a uid of its own: without one, no sandbox.
            for name in ("filesystem", "pid", "scratch", "cgroups"):
                missing.setdefault(name, why)
        if not self.settings.local.isolate_network:
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
                            self.settings.local.isolate_network,
                            self.settings.worker_idle_timeout_s,
                            sandboxed=self.sandboxed,
                            seccomp=self.settings.local.sandbox != "off",
                            cgroup_name=f"jobgate-{tag}-{safe_name(profile.name)}")
            self._zygotes[profile.name] = zygote
            pool = WarmPool(
                profile.name, executor=self.name,
                spawn=lambda p=profile: self._start_worker(p),  # type: ignore[misc]
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
        if self.settings.local.sandbox == "required":
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

    async def _start_worker(self, profile: Profile) -> WorkerHandle:
        t0 = time.monotonic()
        uid = self._uids.take() if self._uids else None
        try:
            worker_id, token, pid, port, isolated = await self._zygotes[profile.name].spawn(uid)
        except BaseException:
            if uid is not None and self._uids:
                self._uids.give_back(uid)
            raise
        if not profile.network and self.settings.local.isolate_network and not isolated \
                and not self._net_isolation_reported:
            self._net_isolation_reported = True
            log.warning("network isolation is not available here (needs root and "
                        "unshare): profiles without network can still reach the network")
        with contextlib.suppress(OSError):
            self._pidfds[worker_id] = os.pidfd_open(pid)
        self.runners.add(pid)
        now = time.monotonic()
        return WorkerHandle(id=worker_id, profile=profile.name,
                            address=f"http://127.0.0.1:{port}", token=token, ready_at=now,
                            start_latency_s=now - t0, pid=pid, uid=uid,
                            meta={"network_isolated": str(isolated).lower()})

    def _alive(self, worker: WorkerHandle) -> bool:
        try:
            os.kill(worker.pid or 0, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def _discard(self, worker: WorkerHandle) -> None:
        self.runners.remove(worker.pid)
        pidfd = self._pidfds.pop(worker.id, None)
        if pidfd is not None:
            # SIGTERM: an idle runner tears its sandbox down and exits.
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            os.close(pidfd)
        self._give_back_uid(worker)

    def _give_back_uid(self, worker: WorkerHandle) -> None:
        if worker.uid is not None and self._uids:
            self._uids.give_back(worker.uid)
            worker.uid = None

    # -- the executor interface -----------------------------------------------------------

    def check_room(self, profile: Profile) -> None:
        self._pools[profile.name].check_room()

    async def acquire(self, profile: Profile, invocation_id: str) -> WorkerHandle:
        return await self._pools[profile.name].acquire()

    async def run(self, worker: WorkerHandle, assignment: Assignment,
                  output: LiveOutput | None = None) -> WorkerReport:
        # The worker keeps its workspace when the gateway stores outputs from it
        # (assignment.keep_workspace, set by gateway.dispatch.outputs).
        return await self._client.run(worker, assignment, output)

    async def cancel(self, worker: WorkerHandle) -> None:
        # The runner kills the code's process group on SIGTERM and reports Cancelled.
        if worker.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)

    async def release(self, worker: WorkerHandle, report: WorkerReport | None) -> None:
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
            asyncio.get_running_loop().call_later(RUNNER_EXIT_GRACE_S, end_process, pidfd)
        elif pidfd is not None:
            end_process(pidfd)  # a lost worker: at once
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
