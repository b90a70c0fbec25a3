"""Pod status as the kubelet reports it: container states, conditions, phase."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.cluster.node_agent.container import ContainerRun, ExitRecord, now

# Conditions this agent owns; others (PodScheduled, DisruptionTarget, ...) are kept as found.
OWNED_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


@dataclass
class ContainerState:
    """What the agent knows of one container, rendered into a containerStatuses entry."""

    name: str
    image: str
    pod_uid: str
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    running_since: str | None = None
    terminated: ExitRecord | None = None
    last_terminated: ExitRecord | None = None
    restart_count: int = 0
    ready: bool = False
    run: ContainerRun | None = None

    @property
    def container_id(self) -> str:
        return f"jobgate-test://{self.pod_uid}/{self.name}/{self.restart_count}"

    def set_waiting(self, reason: str, message: str = "") -> None:
        self.waiting = (reason, message)
        self.running_since = None
        self.ready = False

    def set_running(self, run: ContainerRun) -> None:
        self.run = run
        self.waiting = None
        self.terminated = None
        self.running_since = run.started_at
        self.ready = False

    def schedule_restart(self, message: str) -> None:
        """The ended run moves to lastState; the next one counts as a restart."""
        self.last_terminated = self.terminated
        self.terminated = None
        self.restart_count += 1
        self.set_waiting("CrashLoopBackOff", message)

    def set_terminated(self, record: ExitRecord) -> None:
        self.terminated = record
        self.waiting = None
        self.running_since = None
        self.ready = False

    def render(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.terminated is not None:
            state = {"terminated": self.terminated.as_terminated(self.container_id)}
        elif self.running_since is not None:
            state = {"running": {"startedAt": self.running_since}}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"jobgate-test://{self.image}",
            "ready": self.ready,
            "started": self.running_since is not None,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": (
                {"terminated": self.last_terminated.as_terminated(self.container_id)}
                if self.last_terminated else {}
            ),
        }
        if self.running_since is not None or self.terminated is not None:
            status["containerID"] = self.container_id
        return status


@dataclass
class Conditions:
    """Owned conditions with their last transition times."""

    values: dict[str, tuple[bool, str, str]] = field(default_factory=dict)

    def set(self, kind: str, value: bool, reason: str = "") -> None:
        old = self.values.get(kind)
        if old is None or old[0] != value or old[2] != reason:
            since = now() if old is None or old[0] != value else old[1]
            self.values[kind] = (value, since, reason)

    def merged_into(self, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [c for c in found if c.get("type") not in self.values]
        ours = [
            {"type": kind, "status": "True" if value else "False", "lastProbeTime": None,
             "lastTransitionTime": since, **({"reason": reason} if reason else {})}
            for kind, (value, since, reason) in self.values.items()
        ]
        return kept + ours
