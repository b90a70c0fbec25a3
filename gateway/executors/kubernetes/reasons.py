"""Why a worker pod failed, read from its status: the reasons an invocation reports."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.kube.objects import Obj, created_at
from gateway.models import Reason

PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


@dataclass(frozen=True)
class PodFailure:
    """Why a worker pod will not start or ended without a report."""

    reason: Reason
    message: str


POD_DELETED = PodFailure(Reason.WorkerLost, "the worker pod was deleted")


def _container_status(pod: Obj) -> Obj:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


def _age_s(pod: Obj) -> float:
    created = created_at(pod)
    return 0.0 if created is None else time.time() - created


def start_failure(pod: Obj, *, pull_grace_s: float, unschedulable_after_s: float
                  ) -> PodFailure | None:
    """A pod that will not start, or None while it still may."""
    status = pod.get("status", {})
    waiting = _container_status(pod).get("state", {}).get("waiting") or {}
    if waiting.get("reason") in PULL_ERRORS and _age_s(pod) > pull_grace_s:
        image = pod["spec"]["containers"][0].get("image")
        return PodFailure(Reason.ImagePullFailed, (
            f"image {image!r} could not be pulled: {waiting.get('message') or ''}").strip())
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable" \
                and _age_s(pod) > unschedulable_after_s:
            return PodFailure(Reason.Unschedulable,
                              f"no node can run the worker: {cond.get('message', '')}")
    return terminal_failure(pod)


def terminal_failure(pod: Obj) -> PodFailure | None:
    """A pod that has ended without a report, or None if it has not."""
    status = pod.get("status", {})
    phase = status.get("phase")
    if pod.get("metadata", {}).get("deletionTimestamp") and phase != "Succeeded":
        # Deleted (by an operator, a cancel, a drain): whatever it says on its way out.
        return POD_DELETED
    if status.get("reason") == "Evicted":
        return PodFailure(Reason.Evicted, status.get("message") or "the worker pod was evicted")
    if status.get("reason") == "DeadlineExceeded":
        return PodFailure(Reason.Timeout,
                          "the worker Job passed its deadline (activeDeadlineSeconds)")
    terminated = _container_status(pod).get("state", {}).get("terminated")
    if terminated and terminated.get("reason") == "OOMKilled":
        return PodFailure(Reason.OOMKilled,
                          "the worker was killed for using more memory than its limit")
    if phase == "Failed":
        code = terminated.get("exitCode") if terminated else None
        return PodFailure(Reason.PodFailed, f"the worker pod failed (exit code {code})")
    if phase == "Succeeded":
        return PodFailure(Reason.WorkerLost, "the worker exited without reporting")
    return None


def no_fault_of_the_code(pod: Obj) -> bool:
    """Whether a pod that ended without a report was ended from outside, through no fault
    of its code: deleted (by an operator, a drain, a preemption, the loss of its node) or
    evicted for its node's sake. Not when it was evicted for exceeding its own storage
    limits, killed for its memory, failed by itself, or ran past its deadline."""
    status = pod.get("status", {})
    if pod.get("metadata", {}).get("deletionTimestamp") and status.get("phase") != "Succeeded":
        return True
    if status.get("reason") == "Evicted":
        # The kubelet says "exceeds the limit" / "exceeded its ... limit" when the pod's
        # own use (emptyDir, ephemeral storage) was the cause; "the node was low on ..."
        # when the node was.
        return "exceed" not in (status.get("message") or "").lower()
    return False
