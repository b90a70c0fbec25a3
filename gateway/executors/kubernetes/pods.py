"""A worker pod as the executor reads it: a typed view over the raw object the watch gives
(its name, labels, state, readiness, age, how it ended), and the patches that move its
state label under the resourceVersion lock."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.executors.kubernetes.reasons import (
    PodFailure,
    no_fault_of_the_code,
    start_failure,
    terminal_failure,
)
from gateway.executors.kubernetes.spec import (
    CLAIMED_BY,
    INVOCATION,
    PROFILE,
    STATE,
    TOKEN_ENV,
    WorkerState,
)
from gateway.kube.objects import Obj, created_at

JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")


@dataclass(frozen=True, eq=False)
class Pod:
    """One worker pod as last seen. ``raw`` is the object as the API gave it."""

    raw: Obj

    @property
    def name(self) -> str:
        return str(self.raw["metadata"]["name"])

    @property
    def labels(self) -> Mapping[str, str]:
        return self.raw["metadata"].get("labels") or {}

    @property
    def resource_version(self) -> str:
        return str(self.raw["metadata"]["resourceVersion"])

    @property
    def profile(self) -> str | None:
        """The profile's label value (``label_value(profile.name)``)."""
        return self.labels.get(PROFILE)

    @property
    def state(self) -> WorkerState | None:
        try:
            return WorkerState(self.labels.get(STATE, ""))
        except ValueError:
            return None  # not labelled, or by a newer gateway

    @property
    def claimed_by(self) -> str | None:
        return self.labels.get(CLAIMED_BY)

    @property
    def invocation(self) -> str | None:
        return self.labels.get(INVOCATION)

    @property
    def job(self) -> str | None:
        """The worker Job that owns the pod."""
        labels = self.labels
        return next((labels[key] for key in JOB_NAME_LABELS if labels.get(key)), None)

    @property
    def created(self) -> float:
        """Its creation time in epoch seconds (now, when not known)."""
        created = created_at(self.raw)
        return time.time() if created is None else created

    @property
    def deleting(self) -> bool:
        return bool(self.raw["metadata"].get("deletionTimestamp"))

    @property
    def phase(self) -> str | None:
        phase = self.raw.get("status", {}).get("phase")
        return None if phase is None else str(phase)

    @property
    def ip(self) -> str | None:
        ip = self.raw.get("status", {}).get("podIP")
        return str(ip) if ip else None

    @property
    def ready(self) -> bool:
        """Running, with an address, and its readiness probe passing."""
        status = self.raw.get("status", {})
        if status.get("phase") != "Running" or not status.get("podIP"):
            return False
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in status.get("conditions") or [])

    @property
    def token(self) -> str | None:
        """The runner's bearer token, from the worker's environment."""
        for env in self.raw["spec"]["containers"][0].get("env") or []:
            if env.get("name") == TOKEN_ENV:
                return str(env.get("value"))
        return None

    def ended(self) -> PodFailure | None:
        """How it ended without a report, or None while it has not."""
        return terminal_failure(self.raw)

    def never_starts(self, *, pull_grace_s: float, unschedulable_after_s: float
                     ) -> PodFailure | None:
        """Why it will never start (or has ended), or None while it still may."""
        return start_failure(self.raw, pull_grace_s=pull_grace_s,
                             unschedulable_after_s=unschedulable_after_s)

    @property
    def no_fault_of_the_code(self) -> bool:
        """Whether it was ended from outside (deleted, evicted for its node's sake)."""
        return no_fault_of_the_code(self.raw)

    def age_s(self, now: float) -> float:
        return now - self.created


def state_patch(pod: Pod, state: WorkerState, **labels: str) -> Obj:
    """A merge patch moving ``pod`` to ``state``, on the condition that it has not changed
    since it was seen (its resourceVersion): the one lock of claims and retirements."""
    return {"metadata": {"resourceVersion": pod.resource_version,
                         "labels": {STATE: state.value, **labels}}}


def claim_patch(pod: Pod, replica_label: str, invocation_label: str) -> Obj:
    return state_patch(pod, WorkerState.CLAIMED,
                       **{CLAIMED_BY: replica_label, INVOCATION: invocation_label})
