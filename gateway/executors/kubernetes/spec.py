"""The objects jobgate creates on Kubernetes, as manifests: the worker Job (hardened pod,
single use) and the NetworkPolicies that fence workers in. Pure functions of the profile and
the settings: per-call settings never appear here (they travel in the assignment), so any
warm worker of a profile can take any call of that profile."""

from __future__ import annotations

from enum import StrEnum

from gateway.config.profiles import Profile
from gateway.config.settings import KubernetesSettings
from gateway.kube.names import COMPONENT, MANAGED_BY, label_value
from gateway.kube.objects import Obj

PROFILE = "jobgate.io/profile"
STATE = "jobgate.io/state"
INVOCATION = "jobgate.io/invocation"
CLAIMED_BY = "jobgate.io/claimed-by"
NETWORK = "jobgate.io/network"
TOKEN_ENV = "JOBGATE_RUNNER_TOKEN"
WORKER_UID = 1000
WORKERS_SELECTOR = f"{MANAGED_BY}=jobgate,{COMPONENT}=worker"
# How long a worker may exist past its longest possible run: the Job's deadline is only
# a backstop behind the runner's own timeout and the pool's idle-age limit.
DEADLINE_SLACK_S = 120


class WorkerState(StrEnum):
    """A worker pod's ``jobgate.io/state`` label: the lock a claim takes."""

    IDLE = "idle"  # in the pool (ready or still starting)
    CLAIMED = "claimed"  # taken by one call (``claimed-by`` names the replica)
    RETIRING = "retiring"  # taken by the pool controller, to be deleted


def worker_labels(profile: Profile) -> dict[str, str]:
    labels = {MANAGED_BY: "jobgate", COMPONENT: "worker", PROFILE: label_value(profile.name),
              STATE: WorkerState.IDLE.value}
    if profile.network:
        labels[NETWORK] = "allowed"
    return labels


def worker_job(profile: Profile, settings: KubernetesSettings, *, name: str, token: str,
               created_by: str) -> Obj:
    labels = worker_labels(profile)
    deadline = int(profile.pool.max_idle_age_s + profile.max_timeout_s + DEADLINE_SLACK_S)
    port = settings.runner_port
    cpu_request = profile.request_cpu or profile.default_cpu
    memory_request = profile.request_memory_mb or profile.default_memory_mb
    container: Obj = {
        "name": "runner",
        "image": profile.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["serve"],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "JOBGATE_RUNNER_BIND", "value": f"$(POD_IP):{port}"},
            {"name": TOKEN_ENV, "value": token},
            {"name": "JOBGATE_RUNNER_IDLE_TIMEOUT_S", "value": str(profile.pool.max_idle_age_s)},
            {"name": "JOBGATE_RUNNER_PRELOAD", "value": "1" if profile.inprocess else "0"},
        ],
        "ports": [{"name": "runner", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port},
                           "periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 1},
        "resources": {
            "requests": {"cpu": f"{max(1, round(cpu_request * 1000))}m",
                         "memory": f"{memory_request}Mi"},
            "limits": {"cpu": f"{int(profile.max_cpu * 1000)}m",
                       "memory": f"{profile.max_memory_mb}Mi"},
        },
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": dict(labels),
                     "annotations": {"jobgate.io/created-by": created_by}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": settings.job_ttl_s,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # ClusterFirst, or the node's resolver on a cluster without DNS
                    # (which would warn MissingClusterDNS on every pod).
                    "dnsPolicy": settings.worker_dns_policy,
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {
                        "runAsNonRoot": True, "runAsUser": WORKER_UID,
                        "runAsGroup": WORKER_UID, "fsGroup": WORKER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "workspace",
                         "emptyDir": {"sizeLimit": f"{profile.workspace_mb}Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def _selector(entries: list[str]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in entries)


def network_policies(settings: KubernetesSettings) -> list[Obj]:
    """Default deny for every worker: in only from gateway pods (to the runner port), out
    only to gateway pods and, when configured, the object store (and DNS to find it).
    Workers of profiles with network get a second, additive policy opening egress."""
    gateway = {"podSelector": {"matchLabels": _selector(settings.gateway_selector)}}
    workers = {"matchLabels": {MANAGED_BY: "jobgate", COMPONENT: "worker"}}
    egress: list[Obj] = [{"to": [gateway]}]
    if settings.egress_cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": c}} for c in settings.egress_cidrs]})
        egress.append({"to": [{"namespaceSelector": {}}],
                       "ports": [{"protocol": "UDP", "port": 53},
                                 {"protocol": "TCP", "port": 53}]})
    labels = {MANAGED_BY: "jobgate"}
    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "jobgate-workers-default-deny", "labels": labels},
         "spec": {"podSelector": workers, "policyTypes": ["Ingress", "Egress"],
                  "ingress": [{"from": [gateway],
                               "ports": [{"protocol": "TCP",
                                          "port": settings.runner_port}]}],
                  "egress": egress}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "jobgate-workers-network-allowed", "labels": labels},
         "spec": {"podSelector": {"matchLabels": {**workers["matchLabels"],
                                                  NETWORK: "allowed"}},
                  "policyTypes": ["Egress"], "egress": [{}]}},
    ]
