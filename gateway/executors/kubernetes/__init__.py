"""The Kubernetes executor (worker Jobs, warm-pooled, single use)."""

from gateway.executors.kubernetes.executor import KubernetesExecutor

__all__ = ["KubernetesExecutor"]
