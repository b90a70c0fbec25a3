"""Who stores an invocation's outputs: one strategy, chosen once at start.

- ``GatewayStoresOutputs`` (local storage): the gateway stores them from the worker's
  private copy of its workspace, which the worker keeps for it.
- ``WorkerUploadsOutputs`` (S3): the worker uploads them through presigned URLs (a URL for
  its report, a token to ask for artifact URLs); where the gateway can read the workspace
  too (the local executor), it stores what the worker could not upload.

Either way the artifacts are charged to the tenant's stored-bytes quota before any is
stored or any URL issued: a set that does not fit is refused whole (reason StorageQuota).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.auth.upload_tokens import UploadTokens
from gateway.config.settings import Settings
from gateway.dispatch.parts import Parts
from gateway.dispatch.plan import Plan, check_artifact_listing
from gateway.dispatch.results import fail
from gateway.errors import AlreadyFinished, InvalidInput, StorageQuotaExceeded
from gateway.models import (
    ArtifactListing,
    Assignment,
    InvocationRecord,
    Reason,
    UploadSpec,
    WorkerReport,
)
from gateway.storage.records import InvocationStore
from gateway.tenants.quota import StorageQuota

RecordLookup = Callable[[str, str], Awaitable[InvocationRecord]]


class Outputs(ABC):
    # Whether workers store their outputs themselves (through presigned URLs).
    workers_upload: bool

    def __init__(self, records: InvocationStore, settings: Settings, tokens: UploadTokens,
                 quota: StorageQuota, *, reads_workspace: bool):
        self.records = records
        self.settings = settings
        self.tokens = tokens
        self.quota = quota
        # The gateway can read a finished worker's workspace (the local executor).
        self.reads_workspace = reads_workspace

    @abstractmethod
    async def prepare(self, assignment: Assignment, record: InvocationRecord, plan: Plan
                      ) -> None:
        """Tell the worker where its outputs go (before the assignment is sent)."""

    @abstractmethod
    def lost(self, report: WorkerReport) -> bool:
        """Whether the worker could not upload its outputs and nothing takes over."""

    @abstractmethod
    async def store(self, record: InvocationRecord, report: WorkerReport) -> None:
        """Store what is still the gateway's to store after the run."""

    @abstractmethod
    async def _artifact_urls(self, tenant: str, invocation_id: str,
                             listing: ArtifactListing) -> dict[str, str]: ...

    async def presign_artifacts(self, token: str, invocation_id: str,
                                listing: ArtifactListing, current: RecordLookup
                                ) -> dict[str, str]:
        """Upload URLs for a worker's artifacts, once they pass the limits and fit the
        tenant's quota (StorageQuotaExceeded: no URL at all)."""
        tenant = self.tokens.tenant_for(token, invocation_id)
        record = await current(tenant, invocation_id)
        if record.status.terminal:
            raise AlreadyFinished(f"invocation {invocation_id} has ended")
        check_artifact_listing(listing, self.settings)
        await self.quota.reserve_artifacts(tenant, invocation_id, record.expires_at,
                                           sum(a.size for a in listing.artifacts))
        return await self._artifact_urls(tenant, invocation_id, listing)

    async def _store_from_workspace(self, record: InvocationRecord,
                                    report: WorkerReport) -> None:
        files = [(a, Path(a.path)) for a in report.artifacts if a.path]
        if not (self.reads_workspace and files):
            return
        try:
            await self.quota.reserve_artifacts(record.tenant, record.id, record.expires_at,
                                               sum(a.size for a, _ in files))
        except StorageQuotaExceeded as e:
            record.artifacts = []
            if record.reason is None:
                fail(record, Reason.StorageQuota,
                     f"the artifacts were not stored: {e.message}")
            return
        await asyncio.gather(*(
            self.records.put_artifact_file(record, a.name, path, a.sha256)
            for a, path in files))


class GatewayStoresOutputs(Outputs):
    workers_upload = False

    async def prepare(self, assignment: Assignment, record: InvocationRecord, plan: Plan
                      ) -> None:
        assignment.uploads = None
        assignment.keep_workspace = self.reads_workspace

    def lost(self, report: WorkerReport) -> bool:
        return bool(report.upload_error) and not self.reads_workspace

    async def store(self, record: InvocationRecord, report: WorkerReport) -> None:
        await self._store_from_workspace(record, report)

    async def _artifact_urls(self, tenant: str, invocation_id: str,
                             listing: ArtifactListing) -> dict[str, str]:
        raise InvalidInput("this gateway's storage takes no direct uploads")


class WorkerUploadsOutputs(Outputs):
    workers_upload = True

    async def prepare(self, assignment: Assignment, record: InvocationRecord, plan: Plan
                      ) -> None:
        assignment.keep_workspace = self.reads_workspace
        ttl = plan.timeout_s + self.settings.storage_retry_budget_s + 300
        report_url = await self.records.presign_report_put(record, expires_s=int(ttl))
        if report_url is None:
            assignment.uploads = None
            return
        base = self.settings.worker_gateway_url.rstrip("/") or \
            f"http://{_dialable(self.settings.host)}:{self.settings.port}"
        assignment.uploads = UploadSpec(
            report_url=report_url,
            artifacts_url=f"{base}/internal/v1/invocations/{record.id}/uploads",
            token=self.tokens.make(record.tenant, record.id, ttl),
            retry_budget_s=min(self.settings.storage_retry_budget_s, 600))

    def lost(self, report: WorkerReport) -> bool:
        return bool(report.upload_error) and not self.reads_workspace

    async def store(self, record: InvocationRecord, report: WorkerReport) -> None:
        if not (report.report_uploaded and not report.upload_error):
            await self._store_from_workspace(record, report)

    async def _artifact_urls(self, tenant: str, invocation_id: str,
                             listing: ArtifactListing) -> dict[str, str]:
        urls = {}
        for artifact in listing.artifacts:
            url = await self.records.presign_artifact_put(
                tenant, invocation_id, artifact.name, expires_s=self.settings.s3.presign_ttl_s,
                size=artifact.size)
            if url is None:
                raise InvalidInput("this gateway's storage takes no direct uploads")
            urls[artifact.name] = url
        return urls


def choose_outputs(parts: Parts, tokens: UploadTokens) -> Outputs:
    kind = WorkerUploadsOutputs if parts.records.presigns else GatewayStoresOutputs
    return kind(parts.records, parts.settings, tokens, parts.quota,
                reads_workspace=parts.executor.reads_workspace)


def _dialable(host: str) -> str:
    """The address a local worker dials to reach a gateway bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
