"""Who stores an invocation's outputs: one strategy, chosen once at start.

- ``GatewayStoresOutputs`` (local storage): the gateway stores them from the worker's
  private copy of its workspace, which the worker keeps for it.
- ``WorkerUploadsOutputs`` (S3): the worker uploads them through presigned URLs (a URL for
  its report, a token to ask for artifact URLs); where the gateway can read the workspace
  too (the local executor), it stores what the worker could not upload.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.auth.upload_tokens import UploadTokens
from gateway.config.settings import Settings
from gateway.dispatch.plan import Plan, check_artifact_listing
from gateway.errors import AlreadyFinished, InvalidInput
from gateway.executors.base import Executor
from gateway.models import ArtifactListing, Assignment, InvocationRecord, UploadSpec, WorkerReport
from gateway.storage.records import InvocationStore

RecordLookup = Callable[[str, str], Awaitable[InvocationRecord]]


class Outputs(ABC):
    def __init__(self, records: InvocationStore, settings: Settings, tokens: UploadTokens, *,
                 reads_workspace: bool):
        self.records = records
        self.settings = settings
        self.tokens = tokens
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
        """Upload URLs for a worker's artifacts, once they pass the limits."""
        tenant = self.tokens.tenant_for(token, invocation_id)
        record = await current(tenant, invocation_id)
        if record.status.terminal:
            raise AlreadyFinished(f"invocation {invocation_id} has ended")
        check_artifact_listing(listing, self.settings)
        return await self._artifact_urls(tenant, invocation_id, listing)

    async def _store_from_workspace(self, record: InvocationRecord,
                                    report: WorkerReport) -> None:
        if not (self.reads_workspace and report.artifacts):
            return
        await asyncio.gather(*(
            self.records.put_artifact_file(record, a.name, Path(a.path), a.sha256)
            for a in report.artifacts if a.path))


class GatewayStoresOutputs(Outputs):
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
                tenant, invocation_id, artifact.name, expires_s=self.settings.s3.presign_ttl_s)
            if url is None:
                raise InvalidInput("this gateway's storage takes no direct uploads")
            urls[artifact.name] = url
        return urls


def choose_outputs(executor: Executor, records: InvocationStore, settings: Settings,
                   tokens: UploadTokens) -> Outputs:
    kind = WorkerUploadsOutputs if records.presigns else GatewayStoresOutputs
    return kind(records, settings, tokens, reads_workspace=executor.reads_workspace)


def _dialable(host: str) -> str:
    """The address a local worker dials to reach a gateway bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
