"""Prometheus metrics, one registry per app (tests run several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                 30, 60, 120, 300, 900)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.invocations = Counter(
            "jobgate_invocations", "Finished invocations", ["profile", "status", "mode"],
            registry=r)
        self.accepted = Counter(
            "jobgate_invocations_accepted", "Accepted invocations", ["profile", "mode"],
            registry=r)
        self.rejected = Counter(
            "jobgate_invocations_rejected", "Invocations refused at admission", ["reason"],
            registry=r)
        # Per tenant: the label is a configured tenant (API keys, tenant limits) or
        # "other", never a name from a request (gateway/tenants/directory.py).
        self.tenant_admitted = Counter(
            "jobgate_tenant_admitted", "Invocations admitted, by tenant", ["tenant"],
            registry=r)
        self.tenant_refused = Counter(
            "jobgate_tenant_refused", "Invocations refused at admission by a limit, by "
            "tenant and reason (TenantQueueFull, RateLimited, QueueFull, TtlTooLong)",
            ["tenant", "reason"], registry=r)
        self.tenant_running = Gauge(
            "jobgate_tenant_running", "Invocations holding a worker slot (claiming or "
            "running a worker) in this replica, by tenant", ["tenant"], registry=r)
        self.tenant_queued = Gauge(
            "jobgate_tenant_queued", "Invocations waiting for a worker slot in this "
            "replica, by tenant", ["tenant"], registry=r)
        self.phase = Histogram(
            "jobgate_invocation_phase_seconds",
            "Time per phase: queue (wait for a worker), start (assignment to code start), "
            "run (the code), total (accepted to recorded)",
            ["profile", "phase"], buckets=PHASE_BUCKETS, registry=r)
        self.starts = Counter(
            "jobgate_worker_starts", "Workers claimed, warm (idle in the pool) or cold",
            ["profile", "kind"], registry=r)
        self.pool_workers = Gauge(
            "jobgate_pool_workers", "Pool workers by state", ["profile", "state"], registry=r)
        self.callbacks = Counter(
            "jobgate_callback_deliveries", "Callback delivery attempts by outcome",
            ["outcome"], registry=r)
        self.http_requests = Counter(
            "jobgate_http_requests", "HTTP requests", ["method", "route", "status"],
            registry=r)
        self.http_duration = Histogram(
            "jobgate_http_request_duration_seconds", "HTTP request duration",
            ["method", "route"], buckets=PHASE_BUCKETS, registry=r)
        self.k8s_api_calls = Gauge(
            "jobgate_kubernetes_api_calls", "Kubernetes API calls made by this replica, by "
            "verb and resource (writes per invocation = create+patch+delete per invocation)",
            ["verb"], registry=r)
        self.storage_requests = Gauge(
            "jobgate_storage_requests", "Requests this replica made to the object store (S3) "
            "since it started, by operation, retries included", ["operation"], registry=r)
        self.tenant_stored_bytes = Gauge(
            "jobgate_tenant_stored_bytes", "Bytes a tenant keeps in storage (artifacts, "
            "logs, results, requests), as this replica last listed them; tenants neither "
            "configured nor holding an API key are summed as 'other'", ["tenant"],
            registry=r)
        self.janitor_deleted = Counter(
            "jobgate_janitor_deleted_objects", "Objects deleted by the janitor", registry=r)
