"""One pod on the test node: prepare, run its containers, report, stop, finalize.

A PodWorker is one asyncio task. The agent feeds it the pod's latest object (update) and
its disappearance (mark_gone); everything else it decides itself, like a kubelet's pod
worker: image "pulls", volumes, init containers in order, containers with readiness
probes and restarts, activeDeadlineSeconds, graceful deletion (SIGTERM, grace, kill, then
delete with grace 0). It is the only writer of its pod's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.cluster.image_map import ImageMap, NoCommand
from tests.cluster.kube_client import JSON, MERGE_PATCH, KubeError
from tests.cluster.node_agent.container import ContainerRun, ExitRecord, LaunchSpec, now
from tests.cluster.node_agent.context import AgentContext
from tests.cluster.node_agent.environment import (
    EnvContext,
    EnvNotReady,
    MountRewriter,
    build_env,
    container_mounts,
    expand,
)
from tests.cluster.node_agent.objects import parse_quantity
from tests.cluster.node_agent.probes import probe_once
from tests.cluster.node_agent.status import Conditions, ContainerState
from tests.cluster.node_agent.volumes import VolumeBuilder, VolumeNotReady, remove_tree

DEFAULT_GRACE_S = 30
RETRY_S = 1.0
IMAGE_PULL_BACKOFF_AFTER_S = 2.0
MAX_RESTART_BACKOFF_S = 10.0
FINALIZE_POLL_S = 5.0
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


@dataclass(frozen=True)
class Prepared:
    """A container ready to launch: its resolved command line, env and directory."""

    container: JSON
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    memory_limit_bytes: int
    rewrite: MountRewriter


class PodStopped(Exception):
    """The pod must stop: deleted, gone from the API, or past its active deadline."""


class PodWorker:
    def __init__(self, ctx: AgentContext, pod: JSON, pod_ip: str) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.pod_ip = pod_ip
        self.dir = ctx.pod_dir(self.uid)
        self.start_time = now()
        self._started = time.monotonic()
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.conditions = Conditions()
        spec = pod["spec"]
        self.init_states = [
            ContainerState(c["name"], c["image"], self.uid)
            for c in spec.get("initContainers") or []
        ]
        self.states = {
            c["name"]: ContainerState(c["name"], c["image"], self.uid) for c in spec["containers"]
        }
        self.gone = False
        self.dirty = True
        self.wake = asyncio.Event()
        self._probes: dict[str, asyncio.Task[None]] = {}
        self.task: asyncio.Task[None] | None = None  # set by the agent

    # -- inputs from the agent -------------------------------------------------------------

    def update(self, pod: JSON) -> None:
        self.pod = pod
        self.wake.set()

    def mark_gone(self) -> None:
        self.gone = True
        self.wake.set()

    # -- lookups for the kubelet port -------------------------------------------------------

    def state_of(self, container: str) -> ContainerState | None:
        if container in self.states:
            return self.states[container]
        return next((s for s in self.init_states if s.name == container), None)

    def log_path(self, container: str, previous: bool = False) -> Path:
        return self.dir / "logs" / (f"{container}.previous.log" if previous else f"{container}.log")

    # -- the pod's life ----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._live()
        except asyncio.CancelledError:
            # The agent is shutting down: nothing of the pod may outlive it.
            await self._kill_all(grace=0)
            raise
        except Exception as exc:  # any bug here must fail the pod, never the whole agent
            # Failing the pod (not forgetting it) keeps the agent from starting it again.
            self.ctx.log.exception("pod %s/%s: worker failed", self.namespace, self.name)
            await self._kill_all(grace=0)
            self.phase, self.reason = "Failed", "TestNodeAgentError"
            self.message = f"test node agent: {exc!r}"
            with contextlib.suppress(Exception):
                self._refresh_ready()
                await self._finalize()
        finally:
            for task in self._probes.values():
                task.cancel()
            # Never drop a live run: asyncio would SIGKILL the shim when its transport is
            # collected, and the shim could not clean up after its processes.
            await asyncio.gather(*(s.run.kill() for s in self._all_states() if s.run),
                                 return_exceptions=True)
            remove_tree(self.dir)

    async def _live(self) -> None:
        for sub in ("logs", "volumes", "home", "tmp", "rootfs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.conditions.set("PodReadyToStartContainers", False)
        self.conditions.set("Initialized", not self.init_states,
                            "" if not self.init_states else "ContainersNotInitialized")
        self._refresh_ready()
        await self._publish()
        try:
            prepared = await self._prepare()
            if await self._run_init(prepared):
                await self._supervise(list(self.states), prepared, init=False)
        except PodStopped:
            await self._stop()
        self._settle_phase()
        await self._finalize()

    def _stop_cause(self) -> str | None:
        if self.gone:
            return "gone"
        if "deletionTimestamp" in self.pod["metadata"]:
            return "deleted"
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - self._started >= deadline:
            return "deadline"
        return None

    def _check_stop(self) -> None:
        if self._stop_cause() is not None:
            raise PodStopped

    async def _sleep(self, seconds: float) -> None:
        """Waits up to `seconds`, waking early on news; never past the active deadline."""
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - (time.monotonic() - self._started)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)
        self.wake.clear()

    # -- preparing: images, volumes, env -----------------------------------------------------

    async def _prepare(self) -> dict[str, Prepared]:
        pull_failed_since: float | None = None
        all_specs = (self.pod["spec"].get("initContainers") or []) + self.pod["spec"]["containers"]
        while True:
            self._check_stop()
            image_map = ImageMap.load(self.ctx.image_map_path)
            failing = [s for s in self._all_states() if image_map.pull_fails(s.image)]
            if failing:
                pull_failed_since = pull_failed_since or time.monotonic()
                backoff = time.monotonic() - pull_failed_since >= IMAGE_PULL_BACKOFF_AFTER_S
                for state in failing:
                    state.set_waiting(
                        "ImagePullBackOff" if backoff else "ErrImagePull",
                        f'test node agent: image "{state.image}" is marked unpullable'
                        if not backoff else f'Back-off pulling image "{state.image}"',
                    )
                await self._publish()
                await self._sleep(RETRY_S)
                continue
            try:
                volume_dirs = await VolumeBuilder(
                    self.ctx.objects, self.pod, self.pod_ip, self.ctx.host_ip, self.ctx.capacity
                ).materialize(self.dir / "volumes")
                self.conditions.set("PodReadyToStartContainers", True)
                prepared = {}
                for container in all_specs:
                    prepared[container["name"]] = await self._prepare_container(
                        container, image_map, volume_dirs
                    )
                return prepared
            except VolumeNotReady as exc:
                self._all_waiting("ContainerCreating", f"test node agent: {exc}")
            except NoCommand as exc:
                self._all_waiting("CreateContainerError", str(exc))
            except (EnvNotReady, ValueError) as exc:  # ValueError: an unsupported field
                self._all_waiting("CreateContainerConfigError", str(exc))
            except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
                self._all_waiting("ContainerCreating", f"test node agent: API error: {exc}")
            await self._publish()
            await self._sleep(RETRY_S)

    async def _prepare_container(
        self, container: JSON, image_map: ImageMap, volume_dirs: dict[str, Path]
    ) -> Prepared:
        rewrite = MountRewriter(container_mounts(container, volume_dirs))
        base = dict(self.ctx.base_env)
        base.update(HOME=str(self.dir / "home"), TMPDIR=str(self.dir / "tmp"), HOSTNAME=self.name)
        env = await build_env(
            EnvContext(self.pod, self.pod_ip, self.ctx.host_ip, self.ctx.capacity, base,
                       volume_dirs, self.ctx.objects),
            container, image_map.image_env(container["image"]), rewrite,
        )
        # Mount paths are rewritten in what the pod wrote, before $(VAR) brings in values
        # that are host paths already.
        resolved = image_map.resolve(
            container["image"], container.get("command") or [], container.get("args") or [],
            lambda word: expand(rewrite(word), env),
        )
        argv = resolved.argv
        cwd = self._working_dir(container.get("workingDir") or resolved.working_dir, rewrite)
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        memory = int(parse_quantity(limit)) if limit else 0
        return Prepared(container, argv, env, cwd, memory, rewrite)

    def _working_dir(self, workdir: str | None, rewrite: MountRewriter) -> Path:
        """The process's directory: workingDir on the host (mounts rewritten), else the same
        path under the pod's rootfs dir (it existed only inside the image), else rootfs."""
        if not workdir:
            return self.dir / "rootfs"
        local = Path(rewrite(workdir))
        cwd = local if local.is_dir() else self.dir / "rootfs" / workdir.lstrip("/")
        cwd.mkdir(parents=True, exist_ok=True)
        return cwd

    def _all_states(self) -> list[ContainerState]:
        return self.init_states + list(self.states.values())

    def _all_waiting(self, reason: str, message: str) -> None:
        for state in self._all_states():
            state.set_waiting(reason, message)

    # -- running -----------------------------------------------------------------------------

    def _rotate_log(self, state: ContainerState) -> Path:
        """A restarted container's old log becomes its `previous` log (local fs: instant)."""
        log = self.log_path(state.name)
        if state.restart_count and log.exists():
            os.replace(log, self.log_path(state.name, previous=True))
        return log

    async def _launch(self, state: ContainerState, prep: Prepared) -> ContainerRun:
        log = self._rotate_log(state)
        name = f"{state.name}-{state.restart_count}"
        run = await ContainerRun.launch(LaunchSpec(
            prep.argv, prep.env, prep.cwd, log, self.dir / f"{name}.status.json",
            prep.memory_limit_bytes,
        ))
        state.set_running(run)
        self.dirty = True
        return run

    async def _run_init(self, prepared: dict[str, Prepared]) -> bool:
        """Init containers one at a time; False when one failed for good."""
        for state in self.init_states:
            done = await self._supervise([state.name], prepared, init=True)
            if not done or (state.terminated and state.terminated.exit_code != 0):
                return False
        self.conditions.set("Initialized", True)
        return True

    def _restarts(self, code: int, init: bool = False) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if init:  # an init container must succeed once; it reruns only after a failure
            return policy != "Never" and code != 0
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    async def _supervise(self, names: list[str], prepared: dict[str, Prepared], *,
                         init: bool) -> bool:
        """Runs containers until each has ended for good (True); raises PodStopped."""
        exits: dict[str, asyncio.Task[ExitRecord]] = {}
        restart_at: dict[str, float] = {}
        probes = not init
        for name in names:
            self._check_stop()
            exits[name] = await self._start(name, prepared[name], probes)
        while exits or restart_at:
            self._check_stop()
            for name, task in list(exits.items()):
                if not task.done():
                    continue
                del exits[name]
                state = self._state(name)
                state.set_terminated(task.result())
                self.dirty = True
                code = state.terminated.exit_code if state.terminated else 1
                if self._restarts(code, init):
                    backoff = min(MAX_RESTART_BACKOFF_S, 2.0 ** state.restart_count)
                    restart_at[name] = time.monotonic() + backoff
                    state.schedule_restart(f"back-off {backoff:.0f}s restarting failed container")
            for name, when in list(restart_at.items()):
                if time.monotonic() >= when:
                    del restart_at[name]
                    exits[name] = await self._start(name, prepared[name], probes)
            self._refresh_ready()
            self._settle_phase()
            if self.dirty:
                await self._publish()
            if exits or restart_at:
                soonest = min(restart_at.values(), default=time.monotonic() + RETRY_S)
                await self._sleep(max(0.05, min(RETRY_S, soonest - time.monotonic())))
        self._refresh_ready()
        return True

    def _state(self, name: str) -> ContainerState:
        state = self.state_of(name)
        assert state is not None
        return state

    async def _start(self, name: str, prep: Prepared, probes: bool) -> asyncio.Task[ExitRecord]:
        state = self._state(name)
        run = await self._launch(state, prep)
        task = asyncio.create_task(run.wait())
        task.add_done_callback(lambda _t: self.wake.set())
        if probes:
            old = self._probes.pop(name, None)
            if old:
                old.cancel()
            self._probes[name] = asyncio.create_task(self._readiness(state, run, prep))
        return task

    async def _readiness(self, state: ContainerState, run: ContainerRun, prep: Prepared) -> None:
        """The readinessProbe loop of one container run (ready at once without a probe)."""
        probe = prep.container.get("readinessProbe")
        if not probe:
            state.ready = True
            self.dirty = True
            self.wake.set()
            return
        await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
        period = float(probe.get("periodSeconds") or 10)
        need_ok = int(probe.get("successThreshold") or 1)
        need_fail = int(probe.get("failureThreshold") or 3)
        ok_streak = fail_streak = 0
        while state.run is run and run.proc.returncode is None:
            if await probe_once(probe, prep.container, self.pod_ip, prep.env, prep.cwd,
                                prep.rewrite):
                ok_streak, fail_streak = ok_streak + 1, 0
                if ok_streak >= need_ok and not state.ready:
                    state.ready = True
                    self.dirty = True
                    self.wake.set()
            else:
                ok_streak, fail_streak = 0, fail_streak + 1
                if fail_streak >= need_fail and state.ready:
                    state.ready = False
                    self.dirty = True
                    self.wake.set()
            await asyncio.sleep(period)

    # -- stopping ----------------------------------------------------------------------------

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
        return float(grace)

    async def _kill_all(self, grace: float) -> None:
        runs = [s for s in self._all_states() if s.run is not None]
        await asyncio.gather(*(s.run.terminate(grace) for s in runs if s.run is not None))
        for state in runs:
            assert state.run is not None
            if state.run.proc.returncode is not None and state.terminated is None:
                state.set_terminated(await state.run.wait())

    async def _stop(self) -> None:
        cause = self._stop_cause()
        if cause == "gone":
            await self._kill_all(grace=0)
            return
        await self._kill_all(grace=self._grace())
        for state in self._all_states():
            if state.terminated is None and state.waiting is not None:
                # Never started: kubelet reports it terminated with ContainerStatusUnknown.
                state.set_terminated(ExitRecord(137, "ContainerStatusUnknown", now(), now(),
                                                "The container could not be located when the "
                                                "pod was terminated"))
        if cause == "deadline":
            self.phase, self.reason, self.message = "Failed", "DeadlineExceeded", DEADLINE_MESSAGE
        self.dirty = True

    def _settle_phase(self) -> None:
        """The kubelet's phase rules, for what the containers did so far."""
        if self.phase in ("Succeeded", "Failed"):
            return
        states = list(self.states.values())
        if any(s.terminated and s.terminated.exit_code != 0 for s in self.init_states):
            if self._stop_cause() or not self._restarts(1, init=True):
                self.phase = "Failed"
            return
        if states and all(s.terminated is not None for s in states):
            ok = all(s.terminated is not None and s.terminated.exit_code == 0 for s in states)
            self.phase = "Succeeded" if ok else "Failed"
        elif any(s.running_since or s.terminated or s.restart_count for s in states):
            self.phase = "Running"

    def _refresh_ready(self) -> None:
        terminal = self.phase in ("Succeeded", "Failed")
        ready = bool(self.states) and all(s.ready for s in self.states.values()) and not terminal
        reason = "" if ready else ("PodCompleted" if terminal else "ContainersNotReady")
        self.conditions.set("ContainersReady", ready, reason)
        self.conditions.set("Ready", ready, reason)

    async def _finalize(self) -> None:
        """Reports the end, then waits for the pod's deletion and completes it (grace 0)."""
        self._refresh_ready()
        if not self.gone:
            await self._publish()
        while not self.gone:
            if "deletionTimestamp" in self.pod["metadata"]:
                with contextlib.suppress(KubeError, aiohttp.ClientError, TimeoutError):
                    await self.ctx.kube.delete(
                        f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                        {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                    )
            elif self.dirty:
                await self._publish()
            # Wakes on the DELETED event; the poll bounds a missed one.
            await self._sleep(FINALIZE_POLL_S)

    # -- reporting ---------------------------------------------------------------------------

    async def _publish(self) -> None:
        """Merge-patches the pod's status (lists are replaced whole, so no stale entries)."""
        if self.gone:
            return
        status: JSON = {
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": self.conditions.merged_into(
                (self.pod.get("status") or {}).get("conditions") or []
            ),
            "containerStatuses": [s.render() for s in self.states.values()],
        }
        if self.init_states:
            status["initContainerStatuses"] = [s.render() for s in self.init_states]
        self.dirty = False
        try:
            # metadata.uid makes a same-named successor pod reject this patch.
            await self.ctx.kube.patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                {"metadata": {"uid": self.uid}, "status": status}, MERGE_PATCH,
            )
        except KubeError as exc:
            if exc.status in (404, 409, 422):
                self.ctx.log.info("pod %s/%s: status not written (%s)", self.namespace,
                                  self.name, exc)
                return
            self.dirty = True
            self.ctx.log.warning("pod %s/%s: status patch failed: %s", self.namespace,
                                 self.name, exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.dirty = True
            self.ctx.log.warning("pod %s/%s: status patch failed: %s", self.namespace,
                                 self.name, exc)
